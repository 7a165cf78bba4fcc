"""Up-front Parquet checks (clear errors, no Ray needed) and the encoded-rows round trip."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import encode_table, read_table
from pipelines.errors import SpecError
from pipelines.ray_data import check_parquet, shard_to_split, split_to_table, table_to_split
from pipelines.spec import DatasetSpec
from pipelines.synth import synth_table, write_partitioned_synth


def _days(tmp_path: Path) -> Path:
    root = tmp_path / "days"
    write_partitioned_synth(root, days=3, rows_per_day=300, drift_day=None, n_noise=3)
    return root


def test_partitions_are_found_and_the_partition_key_is_not_a_feature(tmp_path):
    source = check_parquet(DatasetSpec(path=str(_days(tmp_path)), label="label"))
    assert len(source.files) == 3 and source.partition_columns == ("day",)
    assert "day" not in source.columns.sparse + source.columns.dense
    assert "rel_0" in source.columns.sparse and "dense_0" in source.columns.dense


def test_missing_path_names_the_field(tmp_path):
    with pytest.raises(SpecError) as err:
        check_parquet(DatasetSpec(path=str(tmp_path / "nope"), label="label"))
    assert err.value.field == "dataset.path" and "not found" in err.value.message


def test_partition_with_another_schema_is_named(tmp_path):
    root = _days(tmp_path)
    bad = root / "day=2026-01-02" / "part.parquet"
    table = pq.read_table(bad)
    table = table.set_column(table.column_names.index("rel_0"), "rel_0", pa.array(
        [f"x{v}" for v in table.column("rel_0").to_pylist()]))
    pq.write_table(table, bad)
    with pytest.raises(SpecError) as err:
        check_parquet(DatasetSpec(path=str(root), label="label"))
    assert err.value.field == "dataset.path"
    assert "day=2026-01-02" in err.value.message and "'rel_0' is string" in err.value.message


def test_partition_missing_a_column_is_named(tmp_path):
    root = _days(tmp_path)
    bad = root / "day=2026-01-03" / "part.parquet"
    pq.write_table(pq.read_table(bad).drop_columns(["tags"]), bad)
    with pytest.raises(SpecError, match=r"day=2026-01-03.*'tags' is missing"):
        check_parquet(DatasetSpec(path=str(root), label="label"))


def test_unreadable_file_is_named(tmp_path):
    root = _days(tmp_path)
    (root / "day=2026-01-02" / "part.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(SpecError) as err:
        check_parquet(DatasetSpec(path=str(root), label="label"))
    assert err.value.field == "dataset.path" and "day=2026-01-02" in err.value.message


def test_encoded_rows_survive_the_trip_through_arrow_in_any_order(tmp_path):
    table, _ = synth_table(rows=500, seed=1, n_noise=2)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    t, columns = read_table(DatasetSpec(path=str(path), label="label"))
    data = encode_table(t, columns, 0.2, seed=0)
    rows = split_to_table(data.train, data)
    shuffled = rows.take(np.random.default_rng(0).permutation(rows.num_rows))
    back = shard_to_split([shuffled.slice(0, 100), shuffled.slice(100)], data)
    np.testing.assert_array_equal(back.dense, data.train.dense)
    np.testing.assert_array_equal(back.labels, data.train.labels)
    for name in data.sparse_names:
        np.testing.assert_array_equal(back.sparse[name][0], data.train.sparse[name][0])
        np.testing.assert_array_equal(back.sparse[name][1], data.train.sparse[name][1])
    empty = shard_to_split([], data)
    assert len(empty) == 0 and empty.dense.shape == (0, len(data.dense_names))


def test_a_subset_keeps_its_rows_aligned(tmp_path):
    table, _ = synth_table(rows=300, seed=2, n_noise=1)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    t, columns = read_table(DatasetSpec(path=str(path), label="label"))
    data = encode_table(t, columns, 0.2, seed=0)
    rows = split_to_table(data.train, data)
    part = table_to_split(rows.filter(pa.compute.equal(pa.compute.bit_wise_and(rows.column("__row"), 1), 1)), data)
    odd = np.arange(1, len(data.train), 2)
    np.testing.assert_array_equal(part.labels, data.train.labels[odd])
    values, lengths = data.train.sparse["tags"]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    want = np.concatenate([values[starts[i]:starts[i + 1]] for i in odd])
    np.testing.assert_array_equal(part.sparse["tags"][0], want)
