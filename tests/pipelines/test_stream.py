"""The streaming data plane: split, one-pass statistics, encoding, the prefetching source, metrics."""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import pipelines.stream as stream
from pipelines.dataset import _encode_sparse, encode_table, take_jagged
from pipelines.errors import SpecError
from pipelines.spec import DatasetSpec
from pipelines.stream import (
    ParquetFiles,
    SplitRule,
    StreamedSplit,
    StreamSource,
    StreamStats,
    encode_batch,
    open_parquet,
    sample_split,
    scan_part,
    scan_statistics,
    split_of,
    time_cutoff,
)
from seqattn_core.batches import BatchSource
from seqattn_core.crosses import CrossFeature
from seqattn_core.training import StreamingBinaryMetrics

FILE_ROWS = (4_000, 3_000, 5_000)  # 12k rows in three files, row groups of 1,500


def _write(out: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    start = 0
    for k, n in enumerate(FILE_ROWS):
        tags = [None if r < 0.05 else [int(t) for t in rng.integers(0, 40, int(r * 5))] for r in rng.random(n)]
        tags[0] = [1, None, 2]  # a null inside a list is dropped
        c = rng.zipf(1.5, n) % 50
        table = pa.table({
            "label": (rng.random(n) < 0.3).astype(np.int8),
            "rid": np.arange(start, start + n, dtype=np.float64),  # a dense row id: rows are traceable
            "x": rng.normal(3.0, 2.0, n).astype(np.float32),
            "c": pa.array([f"c{v}" for v in c], mask=rng.random(n) < 0.05),
            "n": rng.integers(0, 300, n),
            "tags": pa.array(tags, pa.list_(pa.int64())),
            "user": pa.array([f"u{v}" for v in rng.integers(0, 500, n)]),
            "ts": pa.array(rng.integers(0, 10**6, n) * 10**6, pa.timestamp("us")),
        })
        pq.write_table(table, out / f"part-{k}.parquet", row_group_size=1_500)
        start += n


@pytest.fixture
def data(tmp_path: Path) -> tuple[ParquetFiles, stream.Columns]:
    _write(tmp_path)
    return open_parquet(DatasetSpec(path=str(tmp_path), label="label", dense=["rid", "x"], sparse=["c", "n", "tags"]))


def _read_all(files: ParquetFiles, rule: SplitRule, batch_size: int = 100_000) -> tuple[pa.Table, np.ndarray]:
    """Every row in file order and its validation flag, computed batch by batch."""
    batches, valid = [], []
    for piece in files.pieces():
        for batch, first in files.read(piece, files.dataset.schema.names, batch_size):
            batches.append(batch)
            valid.append(split_of(batch, rule, piece.file, first))
    return pa.Table.from_batches(batches), np.concatenate(valid)


def test_split_is_deterministic_and_independent_of_batch_size(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    rule = SplitRule(0.2, seed=0)
    _, a = _read_all(files, rule, batch_size=1_000)
    _, b = _read_all(files, rule, batch_size=777)
    _, other = _read_all(files, SplitRule(0.2, seed=1))
    assert (a == b).all() and not (a == other).all()
    assert abs(a.mean() - 0.2) < 0.02
    s1 = scan_statistics(files, columns, rule, batch_size=1_000, sample_rows=500)
    s2 = scan_statistics(files, columns, rule, batch_size=4_096, sample_rows=500)
    assert (s1.train_rows, s1.valid_rows) == (s2.train_rows, s2.valid_rows) == (int((~a).sum()), int(a.sum()))
    assert all(s1.vocabularies[n].equals(s2.vocabularies[n]) for n in columns.sparse)
    assert s1.sample.equals(s2.sample)


def test_key_and_time_splits(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    table, valid = _read_all(files, SplitRule(0.2, seed=3, key="user"))
    sides = {}
    for user, v in zip(table.column("user").to_pylist(), valid):
        assert sides.setdefault(user, v) == v  # every row of a user on one side
    assert abs(np.mean(list(sides.values())) - 0.2) < 0.07
    _, by_int = _read_all(files, SplitRule(0.2, seed=3, key="n"))
    n = table.column("n").to_numpy()
    assert all(len(set(by_int[n == v])) == 1 for v in np.unique(n)[:50])

    cutoff = time_cutoff(files, "ts", 0.25)
    rule = SplitRule(time="ts", cutoff=cutoff)
    table, valid = _read_all(files, rule)
    ts = table.column("ts").to_numpy().astype(np.int64)
    assert abs(valid.mean() - 0.25) < 0.01
    assert (ts[valid] >= cutoff.value).all() and (ts[~valid] < cutoff.value).all()
    assert scan_statistics(files, columns, rule).valid_rows == int(valid.sum())


def test_vocabulary_and_moments_match_dataset(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    rule = SplitRule(0.2, seed=0)
    stats = scan_statistics(files, columns, rule, batch_size=1_000)
    table, valid = _read_all(files, rule)
    train = np.flatnonzero(~valid)
    for name in columns.sparse:
        reference, _ = _encode_sparse(table.column(name), train, (train,))  # dataset.py's vocabulary
        values = pa.chunked_array([pa.compute.list_flatten(table.column(name).take(train))]) \
            if name == "tags" else table.column(name).take(train)
        counts = {v["values"]: v["counts"] for v in pa.compute.value_counts(values).to_pylist()}
        ordered = reference.to_pylist()
        # The same values and counts in the same order; only ties are broken differently (value here, first seen there).
        assert [counts[v] for v in ordered] == stats.vocabulary_counts[name].tolist()
        assert sorted(ordered, key=lambda v: (-counts[v], v)) == stats.vocabularies[name].to_pylist()
        assert stats.cardinalities[name] == len(ordered) + 1
    dense = np.stack([table.column(c).to_numpy().astype(np.float32) for c in columns.dense], axis=1)[train]
    np.testing.assert_allclose(stats.dense_mean, dense.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(stats.dense_std, dense.std(axis=0, dtype=np.float64), rtol=1e-6)
    assert stats.multi_valued == frozenset({"tags"}) and stats.train_rows == len(train)


def test_vocabulary_caps(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    full = scan_statistics(files, columns, SplitRule())
    capped = scan_statistics(files, columns, SplitRule(), max_vocab=10)
    frequent = scan_statistics(files, columns, SplitRule(), min_count=40)
    for name in columns.sparse:
        assert capped.vocabularies[name].to_pylist() == full.vocabularies[name].to_pylist()[:10]
        kept = int((full.vocabulary_counts[name] >= 40).sum())
        assert 0 < kept < len(full.vocabularies[name]) or name == "tags"  # every tag is frequent
        assert frequent.vocabularies[name].to_pylist() == full.vocabularies[name].to_pylist()[:kept]
        assert frequent.cardinalities[name] == kept + 1


def test_encode_batch_gives_dataset_ids(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    table, _ = _read_all(files, SplitRule())
    reference = encode_table(table, columns, 0.2, seed=0)
    stats = replace(scan_statistics(files, columns, SplitRule()), vocabularies=reference.vocabularies,
                    dense_mean=reference.dense_mean, dense_std=reference.dense_std)
    for split in (reference.train, reference.valid):
        got = encode_batch(table.take(split.row_index), stats, columns)
        assert np.array_equal(got.dense, split.dense) and np.array_equal(got.labels, split.labels)
        for name in columns.sparse:
            assert np.array_equal(got.sparse[name][0], split.sparse[name][0])
            assert np.array_equal(got.sparse[name][1], split.sparse[name][1])


def _rids(batches: list) -> np.ndarray:
    return np.concatenate([b.dense[:, 0].numpy() for b in batches]).astype(np.int64)


def _source(files: ParquetFiles, columns: stream.Columns, stats: StreamStats, split: str = "train",
            **kwargs: object) -> StreamSource:
    return StreamSource(files, columns, stats, split, read_rows=1_000, shuffle_buffer_rows=2_500, **kwargs)


def test_stream_source_yields_every_row_once(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule(), standardize=False)
    table, valid = _read_all(files, SplitRule())
    full = encode_batch(table, stats, columns)
    train = _source(files, columns, stats)
    epoch = list(train.batches(512, seed=1))
    assert len(epoch) == train.num_batches(512) and all(len(b) == 512 for b in epoch[:-1])
    rids = _rids(epoch)
    assert np.array_equal(np.sort(rids), np.flatnonzero(~valid)) and len(train) == len(rids)
    labels = np.concatenate([b.labels.numpy() for b in epoch])
    assert np.array_equal(labels, full.labels[rids])
    assert np.array_equal(np.concatenate([b.sparse["n"].values().numpy() for b in epoch]), full.sparse["n"][0][rids])
    tags = np.concatenate([b.sparse["tags"].values().numpy() for b in epoch])
    assert np.array_equal(tags, take_jagged(*full.sparse["tags"], rids)[0])
    assert np.array_equal(_rids(list(train.batches(512, seed=1))), rids)  # a seed fixes the order
    assert not np.array_equal(_rids(list(train.batches(512, seed=2))), rids)
    held_out = _source(files, columns, stats, "valid")
    assert np.array_equal(_rids(list(held_out.batches(300))), np.flatnonzero(valid))  # no seed: file order
    assert len(list(held_out.batches(10_000))) == held_out.num_batches(10_000) == 1


def test_keys_are_features_then_crosses(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule())
    crosses = [CrossFeature("c", "n", buckets=64)]
    src = _source(files, columns, stats, "valid", crosses=crosses)
    batch = next(iter(src.batches(256)))
    assert batch.sparse.keys() == src.keys == ["c", "n", "tags", "c_X_n"]
    table, valid = _read_all(files, SplitRule())
    rows = encode_batch(table.filter(pa.array(valid)).slice(0, 256), stats, columns)
    expected = BatchSource(rows.dense, rows.sparse, rows.labels, crosses, stats.cardinalities).batch(0, 256)
    assert batch.sparse["c_X_n"].values().tolist() == expected.sparse["c_X_n"].values().tolist()
    src.keep_keys({"n", "c_X_n"})
    kept = next(iter(src.batches(256)))
    assert kept.sparse.keys() == ["n", "c_X_n"] and kept.sparse["c_X_n"].values().tolist() == \
        expected.sparse["c_X_n"].values().tolist()


def _no_prefetch_thread(before: int) -> bool:
    for _ in range(100):
        gc.collect()
        if threading.active_count() == before and not any(t.name == "stream-prefetch" for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


def test_prefetch_thread_stops_when_the_consumer_stops(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule())
    src = StreamSource(files, columns, stats, "train", read_rows=200, shuffle_buffer_rows=500, prefetch=2)
    before = threading.active_count()
    for i, _ in enumerate(src.batches(64, seed=0)):
        if i == 2:
            break
    assert _no_prefetch_thread(before)
    batches = src.batches(64, seed=0)
    next(batches)
    assert threading.active_count() == before + 1
    batches.close()
    assert _no_prefetch_thread(before)


def test_errors_while_reading_reach_the_consumer(data: tuple[ParquetFiles, stream.Columns],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule())
    before = threading.active_count()
    calls = []

    def failing(*args: object) -> object:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk on fire")
        return encode_batch(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stream, "encode_batch", failing)
    got = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        got.extend(_source(files, columns, stats).batches(100, seed=0))
    monkeypatch.undo()
    assert _no_prefetch_thread(before)

    Path(files.root, "part-1.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SpecError, match="cannot read") as err:
        list(_source(files, columns, stats).batches(100, seed=0))
    assert err.value.field == "dataset.path" and _no_prefetch_thread(before)


def test_stream_refuses_changed_data(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule())
    table = pq.read_table(Path(files.root, "part-2.parquet"))
    pq.write_table(table.slice(0, 1_000), Path(files.root, "part-2.parquet"))
    reopened, _ = open_parquet(DatasetSpec(path=files.root, label="label"))  # e.g. a later stage's process
    with pytest.raises(SpecError, match="changed since"):
        list(_source(reopened, columns, stats).batches(100))


def test_statistics_check_the_label(tmp_path: Path) -> None:
    pq.write_table(pa.table({"y": [0, 1, 2] * 10, "c": list(range(30))}), tmp_path / "t.parquet")
    files, columns = open_parquet(DatasetSpec(path=str(tmp_path), label="y"))
    with pytest.raises(SpecError) as err:
        scan_statistics(files, columns, SplitRule())
    assert err.value.field == "dataset.label" and "2" in err.value.message


def test_sample_is_train_rows(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule(), sample_rows=1_000, batch_size=700, standardize=False)
    sample = sample_split(stats, columns)
    _, valid = _read_all(files, SplitRule())
    rids = sample.dense[:, 0].astype(np.int64)
    assert len(sample) == 1_000 and len(set(rids)) == 1_000 and not valid[rids].any()
    assert abs(np.median(rids) - len(valid) / 2) < len(valid) / 10  # spread over the files, not the first rows
    everything = scan_statistics(files, columns, SplitRule(), sample_rows=100_000)
    assert len(everything.sample) == everything.train_rows


def test_streaming_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(200_000) < 0.3).astype(np.float32)
    p = (1 / (1 + np.exp(-(rng.normal(size=len(labels)) + 1.5 * labels - 1)))).astype(np.float32)
    p[:1000] = 0.0  # clipped like training.binary_metrics
    whole, halves = StreamingBinaryMetrics(), [StreamingBinaryMetrics(), StreamingBinaryMetrics()]
    for k, s in enumerate(range(0, len(p), 10_000)):
        whole.update(p[s : s + 10_000], labels[s : s + 10_000])
        halves[k % 2].update(p[s : s + 10_000], labels[s : s + 10_000])
    auc, logloss = whole.compute()
    clipped = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    assert abs(auc - roc_auc_score(labels, clipped)) < 1e-4
    assert abs(logloss - log_loss(labels, clipped)) < 1e-9
    halves[0].merge(halves[1])
    assert np.allclose(halves[0].compute(), (auc, logloss))
    empty = StreamingBinaryMetrics()
    empty.update(np.array([0.5]), np.array([1]))
    assert np.isnan(empty.compute()[0])


def test_hive_partition_keys_are_columns(tmp_path: Path) -> None:
    for day, labels in (("2024-01-01", [0, 1] * 50), ("2024-01-02", [1, 0, 0] * 40)):
        (tmp_path / f"day={day}").mkdir()
        pq.write_table(pa.table({"y": labels, "c": list(range(len(labels)))}), tmp_path / f"day={day}" / "p.parquet")
    files, columns = open_parquet(DatasetSpec(path=str(tmp_path), label="y", sparse=["day", "c"]))
    stats = scan_statistics(files, columns, SplitRule())
    assert sorted(stats.vocabularies["day"].to_pylist()) == ["2024-01-01", "2024-01-02"]
    batch = next(iter(StreamSource(files, columns, stats, "valid").batches(1_000)))
    assert len(batch) == stats.valid_rows and set(batch.sparse["day"].values().tolist()) <= {1, 2}


def test_statistics_from_parts_are_the_whole_pass(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    rule = SplitRule(0.25, seed=3)
    whole = scan_statistics(files, columns, rule, sample_rows=500)
    pieces = list(range(len(files.pieces())))
    parts = [scan_part(files, columns, rule, chunk, sample_rows=500) for chunk in (pieces[:2], pieces[2:5], pieces[5:])]
    merged = scan_statistics(files, columns, rule, sample_rows=500, parts=parts)
    assert (merged.train_rows, merged.valid_rows, merged.positives) == (whole.train_rows, whole.valid_rows,
                                                                       whole.positives)
    assert merged.piece_rows == whole.piece_rows and sum(t for t, _ in whole.piece_rows) == whole.train_rows
    for name in columns.sparse:
        assert merged.vocabularies[name].equals(whole.vocabularies[name])
        assert np.array_equal(merged.vocabulary_counts[name], whole.vocabulary_counts[name])
    np.testing.assert_allclose(merged.dense_mean, whole.dense_mean, rtol=1e-6)
    np.testing.assert_allclose(merged.dense_std, whole.dense_std, rtol=1e-6)
    assert merged.sample.equals(whole.sample) and merged.sample.num_rows == 500


def test_worker_shards_are_equal_consecutive_ranges(data: tuple[ParquetFiles, stream.Columns]) -> None:
    files, columns = data
    stats = scan_statistics(files, columns, SplitRule(), standardize=False)
    split = StreamedSplit(files, columns, stats, "train")
    in_order = _rids(list(split.source((), stats.cardinalities, [0, 1]).batches(700)))
    world = 3
    shards = [split.shard(rank, world) for rank in range(world)]
    each = len(split) // world
    assert [len(s) for s in shards] == [each] * world
    read = [_rids(list(s.source((), stats.cardinalities, [0, 1]).batches(256))) for s in shards]
    assert np.array_equal(np.concatenate(read), in_order[: world * each])  # file order, no row twice
    shuffled = _rids(list(shards[1].source((), stats.cardinalities, [0, 1]).batches(256, seed=4)))
    assert len(shuffled) == each and np.array_equal(np.sort(shuffled), np.sort(read[1]))
    reader = shards[0].source((), stats.cardinalities, [0, 1])
    needed = int(np.searchsorted(np.cumsum([t for t, _ in stats.piece_rows]), each)) + 1
    assert [r[0] for r in reader._ranges(files.pieces())] == list(range(needed)) < list(range(len(files.pieces())))


def test_jobspec_split_by_time_or_key(tmp_path: Path) -> None:
    _write(tmp_path)
    base = {"path": str(tmp_path), "label": "label", "validation_fraction": 0.25}
    data = stream.stream_dataset(DatasetSpec(**base, split_time="ts"))
    assert "ts" not in data.sparse_names and "ts" not in data.dense_names  # the split's column is no feature
    rule = data.train.stats.split
    table, valid = _read_all(data.train.files, rule)
    ts = table.column("ts").to_numpy().astype(np.int64)
    assert ts[valid].min() >= ts[~valid].max() and abs(valid.mean() - 0.25) < 0.01
    keyed = stream.stream_dataset(DatasetSpec(**base, split_key="user"))
    assert keyed.train.stats.split.key == "user" and "user" not in keyed.sparse_names
    assert stream.wants_stream(DatasetSpec(**base, split_key="user"))
    with pytest.raises(SpecError, match="dataset.split_key: column 'nope' not found"):
        stream.stream_dataset(DatasetSpec(**base, split_key="nope"))


@pytest.mark.parametrize(("extra", "words"), [
    ({"split_key": "user", "reader": "memory"}, "needs a streamed read"),
    ({"split_key": "user", "split_time": "ts"}, "not both"),
    ({"split_time": "label"}, "is the label"),
])
def test_jobspec_split_fields_are_checked(extra: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DatasetSpec(path="x", label="label", **extra)


@pytest.mark.parametrize("kind", ["string", "int64", "dictionary"])
def test_vocabulary_index_matches_index_in(kind: str) -> None:
    rng = np.random.default_rng(5)
    raw = rng.permutation(5_000)[:1_000]
    vocabulary = pa.array([f"v{v}" for v in raw]) if kind != "int64" else pa.array(raw)
    seen = rng.integers(0, 5_000, 20_000)
    values = pa.array([None if v % 97 == 0 else (f"v{v}" if kind != "int64" else int(v)) for v in seen])
    if kind == "dictionary":
        values = values.dictionary_encode().cast(values.type)  # decoded again, as stream_stats.flat_values gives it
    index = stream.VocabularyIndex(vocabulary, search_from=1)
    assert index.search
    expected = pc.fill_null(pc.index_in(values, value_set=vocabulary), -1).to_numpy() + 1
    assert np.array_equal(index.ids(values), expected) and (expected > 0).any() and (expected == 0).any()
    assert np.array_equal(stream.VocabularyIndex(vocabulary).ids(values), expected)  # the small-vocabulary path
