"""Data roots hold at the moment a file is opened: a symlink swapped in after the check is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import load_dataset
from pipelines.errors import SpecError
from pipelines.ray_data import check_parquet
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec

TABLE = pa.table({"y": [0, 1] * 20, "c": list(range(40))})


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    inside, outside = tmp_path / "root", tmp_path / "elsewhere"
    (inside / "d").mkdir(parents=True)
    outside.mkdir()
    pq.write_table(TABLE, inside / "d" / "a.parquet")
    pq.write_table(TABLE, outside / "secret.parquet")
    return inside, outside


def _swap_for_symlink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def test_check_gives_the_real_path_and_refuses_escapes(dirs: tuple[Path, Path]) -> None:
    inside, outside = dirs
    roots = DataRoots.of([inside])
    assert roots.check("d") == os.path.realpath(inside / "d")
    for path, words in (("../elsewhere", "contains '..'"), (str(outside), "outside the data roots"),
                        ("nothing", "not found")):
        with pytest.raises(SpecError) as info:
            roots.check(path)
        assert info.value.field == "dataset.path" and words in info.value.message
    (inside / "d" / "b.parquet").symlink_to(outside / "secret.parquet")
    with pytest.raises(SpecError, match="'b.parquet', a symlink to a place outside"):
        roots.check("d")


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_read(dirs: tuple[Path, Path]) -> None:
    inside, outside = dirs
    roots = DataRoots.of([inside])
    spec = DatasetSpec(path=roots.check("d"), label="y")
    assert len(load_dataset(spec, roots=roots).train) > 0
    _swap_for_symlink(inside / "d" / "a.parquet", outside / "secret.parquet")
    with pytest.raises(SpecError) as info:
        load_dataset(spec, roots=roots)
    assert info.value.field == "dataset.path" and "outside the data roots" in info.value.message
    assert len(load_dataset(spec).train) > 0  # without roots (the CLI) the user's own links are followed


def test_the_footer_checks_go_through_the_roots_too(dirs: tuple[Path, Path]) -> None:
    inside, outside = dirs
    (inside / "d" / "day=2").mkdir()
    (inside / "d" / "day=2" / "p.parquet").symlink_to(outside / "secret.parquet")
    with pytest.raises(SpecError) as info:
        check_parquet(DatasetSpec(path=str(inside / "d"), label="y"), DataRoots.of([inside]))
    assert info.value.field == "dataset.path" and "outside the data roots" in info.value.message


def test_the_filesystem_is_read_only_and_survives_pickling(dirs: tuple[Path, Path]) -> None:
    inside, outside = dirs
    fs = pickle.loads(pickle.dumps(DataRoots.of([inside]).filesystem()))
    assert pq.read_table(str(inside / "d" / "a.parquet"), filesystem=fs).num_rows == 40
    with pytest.raises(PermissionError):
        pq.read_table(str(outside / "secret.parquet"), filesystem=fs)
    with pytest.raises(PermissionError, match="read-only"):
        fs.delete_file(str(inside / "d" / "a.parquet"))
