"""Dataset paths: inside the data roots only; '..' and symlink escapes are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.errors import SpecError
from services.selector_api.data_roots import check_path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "ctr" / "day=1").mkdir(parents=True)
    (root / "ctr" / "day=1" / "a.parquet").write_bytes(b"x")
    outside.mkdir()
    (outside / "b.parquet").write_bytes(b"y")
    return root, outside


def _refused(path: str, roots: list[Path], words: str) -> None:
    with pytest.raises(SpecError) as err:
        check_path(path, roots, "dataset.path")
    assert err.value.field == "dataset.path" and words in err.value.message, err.value.message


def test_relative_and_absolute_paths_inside_a_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    real = os.path.realpath(root / "ctr")
    assert check_path("ctr", [root], "dataset.path") == real
    assert check_path(str(root / "ctr"), [root], "dataset.path") == real
    assert check_path("ctr/day=1/a.parquet", [root], "dataset.path").endswith("a.parquet")


def test_dotdot_absolute_outside_and_missing(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    _refused("../outside", [root], "'..'")
    _refused("ctr/../../outside", [root], "'..'")
    _refused(str(outside), [root], "outside the data roots")
    _refused("nope", [root], "not found")
    _refused("a\x00b", [root], "NUL")


def test_symlink_escapes(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    os.symlink(outside, root / "link")
    _refused("link", [root], "through a symlink")
    os.symlink(outside / "b.parquet", root / "ctr" / "day=1" / "b.parquet")
    _refused("ctr", [root], "a symlink to a place outside")


def test_symlink_within_roots_is_fine(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    os.symlink(root / "ctr", root / "alias")
    assert check_path("alias", [root], "dataset.path") == os.path.realpath(root / "ctr")
    # A second root makes the outside folder legitimate.
    assert check_path(str(outside), [root, outside], "dataset.path") == os.path.realpath(outside)
