"""The ``shared_data`` fixture of tests/conftest.py: a sample file that is there is returned; one that
is missing skips the test, or fails it under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.datasets import DEFAULT_SAMPLE_DATA, SAMPLE_DATA_ENV


@pytest.fixture
def sample_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(SAMPLE_DATA_ENV, str(tmp_path))
    (tmp_path / "frappe").mkdir()
    (tmp_path / "frappe" / "frappe.parquet").write_bytes(b"PAR1")
    return tmp_path


def test_a_sample_file_that_is_there_is_returned(shared_data, sample_dir, monkeypatch) -> None:
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        assert shared_data("frappe/frappe.parquet") == sample_dir / "frappe" / "frappe.parquet"


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_missing_sample_file_skips_outside_ci_naming_the_file(shared_data, sample_dir, monkeypatch, ci) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as info:
        shared_data("criteo/criteo_20k_train.parquet")
    assert str(info.value) == f"needs {sample_dir}/criteo/criteo_20k_train.parquet (the sample data; CI has it)"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_sample_file_fails_under_ci(shared_data, sample_dir, monkeypatch, ci) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as info:
        shared_data("criteo/criteo_20k_train.parquet")
    assert f"needs {sample_dir}/criteo/criteo_20k_train.parquet" in str(info.value)
    assert "CI=true" in str(info.value)


def test_the_default_location_is_named_from_the_repository_root(shared_data, monkeypatch, tmp_path) -> None:
    # Without SEQATTN_SAMPLE_DATA: ../shared/data beside the repository, named that way in the reason.
    monkeypatch.delenv(SAMPLE_DATA_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert DEFAULT_SAMPLE_DATA == Path(__file__).resolve().parents[2] / "shared" / "data"
    with pytest.raises(pytest.skip.Exception) as info:
        shared_data("no/such-file.parquet")
    assert str(info.value) == "needs ../shared/data/no/such-file.parquet (the sample data; CI has it)"
