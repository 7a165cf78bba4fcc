"""Parquet -> batches with memory flat in the number of rows: the streaming twin of :mod:`pipelines.dataset`.

:mod:`pipelines.dataset` holds the whole table (about 1 GB per million rows). Here every step reads
bounded Arrow batches and keeps only what is bounded by something other than the row count:

1. :func:`split_of`: train/validation by a hash of (file, row in file), of a key column's value, or
   by time (:func:`time_cutoff`): the same row lands in the same split whatever the batch sizes.
2. :func:`scan_statistics`: one pass for row counts, label checks, dense mean/std, train value
   counts (memory bounded by the distinct values) -> vocabularies, and a bottom-k row sample.
3. :func:`encode_batch`: one Arrow batch -> the ids and standardised values ``dataset.py`` would give.
4. :class:`StreamSource`: the :class:`~seqattn_core.batches.BatchSource` interface over a re-scan per
   epoch (file order and a bounded buffer shuffled by the seed), read ahead in a background thread.
5. :func:`sample_split`: the sample encoded, for stages that need random access.
6. :class:`StreamingBinaryMetrics`: AUC (binned) and log-loss without keeping predictions.

Example::

    >>> import os, tempfile, pyarrow.parquet as pq
    >>> path = os.path.join(tempfile.mkdtemp(), "t.parquet")
    >>> pq.write_table(pa.table({"y": [0, 1] * 500, "c": ["a", "b", "c", "a"] * 250}), path)
    >>> files, columns = open_parquet(DatasetSpec(path=path, label="y"))
    >>> stats = scan_statistics(files, columns, SplitRule(validation_fraction=0.2, seed=0))
    >>> stats.train_rows + stats.valid_rows, stats.vocabularies["c"].to_pylist(), stats.cardinalities
    (1000, ['a', 'b', 'c'], {'c': 4})
    >>> train = StreamSource(files, columns, stats, "train")
    >>> sum(len(b) for b in train.batches(128, seed=1)) == len(train), train.num_batches(128) == -(-len(train) // 128)
    (True, True)
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.dataset import (
    Columns,
    EncodedDataset,
    EncodedSplit,
    dense_matrix,
    label_array,
    open_dataset,
    resolve_columns,
    take_jagged,
)
from pipelines.errors import SpecError
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec
from seqattn_core.batches import Batch, BatchSource
from seqattn_core.crosses import CrossFeature

__all__ = [
    "ParquetFiles", "SplitRule", "StreamSource", "StreamStats", "encode_batch",
    "open_parquet", "row_hash", "sample_split", "scan_statistics", "split_of", "time_cutoff",
    "STREAM_ROWS", "StatsPart", "StreamedSplit", "scan_part", "split_rule", "stream_dataset", "streamed_dataset",
    "wants_stream",
]

READ_ROWS = 65_536  # rows per Arrow batch read: a few MB per column


# --- opening ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    file: str  # path relative to the dataset root: what the split hashes
    path: str  # path on the dataset's filesystem
    metadata: Any  # the file's footer (pq.FileMetaData)
    row_group: int
    first_row: int  # the row group's first row's number within the file
    partition: dict[str, Any]  # hive keys of its folder, e.g. {"day": "2024-01-01"}


@dataclass(frozen=True)
class ParquetFiles:
    """An opened Parquet file or directory, and the folder its files' names are taken relative to
    (so a split does not change when the dataset is moved)."""

    dataset: pads.Dataset
    root: str

    def pieces(self) -> list[_Piece]:
        """Every row group, files in path order (reads the footers, not the data)."""
        out = []
        try:
            for fragment in sorted(self.dataset.get_fragments(), key=lambda f: f.path):
                rel = os.path.relpath(fragment.path, self.root).replace(os.sep, "/")
                keys = pads.get_partition_keys(fragment.partition_expression)
                metadata, first = fragment.metadata, 0
                for i in range(metadata.num_row_groups):
                    out.append(_Piece(rel, fragment.path, metadata, i, first, keys))
                    first += metadata.row_group(i).num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise SpecError("dataset.path", f"cannot read {self.root!r} as Parquet: {exc}") from None
        return out

    def read(self, piece: _Piece, columns: Sequence[str], batch_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
        """(batch, number of its first row in the file) over ``piece``, only ``columns``, typed as the
        dataset's schema. ``ParquetFile.iter_batches`` decodes page by page: the dataset scanner
        would hold a whole row group (a 1M-row group of 36 columns: ~340 MB against ~80 MB)."""
        schema, first = self.dataset.schema, piece.first_row
        try:
            with self.dataset.filesystem.open_input_file(piece.path) as handle:
                reader = pq.ParquetFile(handle, metadata=piece.metadata, pre_buffer=False, buffer_size=1 << 20)
                for batch in reader.iter_batches(batch_size, row_groups=[piece.row_group],
                                                 columns=[c for c in columns if c not in piece.partition]):
                    arrays = [pa.repeat(pa.scalar(piece.partition[c]), batch.num_rows) if c in piece.partition
                              else batch.column(c) for c in columns]
                    yield pa.record_batch([a if a.type == schema.field(c).type else pc.cast(a, schema.field(c).type)
                                           for a, c in zip(arrays, columns)], names=list(columns)), first
                    first += batch.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise SpecError("dataset.path", f"cannot read {piece.file!r} as Parquet: {exc}") from None


def open_parquet(spec: DatasetSpec, roots: DataRoots | None = None) -> tuple[ParquetFiles, Columns]:
    """Open ``spec.path`` (a file or a hive directory) without reading rows; resolve the column roles.
    As ``dataset.read_table`` opens it."""
    dataset = open_dataset(spec.path, roots)
    root = Path(spec.path)
    in_files = set(next(iter(dataset.get_fragments())).physical_schema.names)
    partition_columns = tuple(n for n in dataset.schema.names if n not in in_files)
    columns = resolve_columns(dataset.schema, spec, partition_columns)
    return ParquetFiles(dataset, str(root if root.is_dir() else root.parent)), columns


# --- 1. the split -------------------------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64: a bijection that scatters nearby inputs over all 64 bits."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _salt(*parts: object) -> np.uint64:
    text = ":".join(map(str, parts)).encode()
    return np.uint64(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


def row_hash(file: str, rows: np.ndarray, seed: int, salt: str = "split") -> np.ndarray:
    """uint64 hashes of rows ``rows`` of ``file`` (a relative path); ``seed`` and ``salt`` pick the function."""
    return _mix(np.asarray(rows).astype(np.uint64) ^ _salt(salt, seed, file))


def _value_hash(values: pa.Array) -> np.ndarray:
    """uint64 hashes of a column's values (a null hashes like 0 or the empty string)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        b = pc.cast(values.fill_null(""), pa.large_binary())
        offsets = np.frombuffer(b.buffers()[1], np.int64)[b.offset : b.offset + len(b) + 1]
        data = np.frombuffer(b.buffers()[2], np.uint8) if b.buffers()[2] is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        raw = data[offsets[0] : offsets[-1]].astype(np.uint64) + np.uint64(1)
        pos = np.arange(len(raw)) - np.repeat(offsets[:-1] - offsets[0], lengths)
        with np.errstate(over="ignore"):  # a polynomial hash mod 2**64, one cumulative sum for the whole batch
            powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, 0x100000001B3, np.uint64))
            cum = np.concatenate([[np.uint64(0)], np.cumsum(raw * powers[pos], dtype=np.uint64)])
            return cum[offsets[1:] - offsets[0]] - cum[offsets[:-1] - offsets[0]] + lengths.astype(np.uint64)
    if pa.types.is_floating(t):
        return pc.cast(values, pa.float64()).fill_null(0).to_numpy().view(np.uint64)
    if pa.types.is_temporal(t):
        values = values.view(pa.int64() if t.bit_width == 64 else pa.int32())
    return pc.cast(values, pa.int64()).fill_null(0).to_numpy().view(np.uint64)


@dataclass(frozen=True)
class SplitRule:
    """How rows are split. By default a row is validation when a hash of (file, row number in the
    file) falls below ``validation_fraction``; with ``key``, the hash is of that column's value (all
    rows of a user on one side); with ``time`` and ``cutoff``, rows at or after the cutoff are
    validation (an out-of-time split; a null time is train), see :func:`time_cutoff`."""

    validation_fraction: float = 0.2
    seed: int = 0
    key: str | None = None
    time: str | None = None
    cutoff: Any = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns :func:`split_of` reads."""
        return tuple(c for c in (self.key, self.time) if c is not None)


def split_of(batch: pa.RecordBatch, rule: SplitRule, file: str, first_row: int) -> np.ndarray:
    """Which rows of ``batch`` are validation rows (a bool array); ``batch`` holds rows
    ``first_row, first_row + 1, ...`` of ``file`` (relative path) and the ``rule.columns``.

        >>> batch, rule = pa.record_batch({"x": list(range(10_000))}), SplitRule(0.2, seed=0)
        >>> valid = split_of(batch, rule, "a.parquet", 0)
        >>> same = split_of(batch[6000:], rule, "a.parquet", 6000)  # the same rows in another batch
        >>> bool(abs(valid.mean() - 0.2) < 0.02), bool((valid[6000:] == same).all())
        (True, True)
    """
    if rule.time is not None:
        if rule.cutoff is None:
            raise ValueError("SplitRule.time needs a cutoff (see time_cutoff)")
        late = pc.fill_null(pc.greater_equal(batch.column(rule.time), rule.cutoff), False)
        return late.to_numpy(zero_copy_only=False)
    if rule.key is not None:
        h = _mix(_value_hash(batch.column(rule.key)) ^ _salt("key", rule.seed))
    else:
        h = row_hash(file, first_row + np.arange(batch.num_rows), rule.seed)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < rule.validation_fraction


class _BottomK:
    """The ``k`` rows with the smallest hashes offered: a uniform sample that is the same whatever the
    batch boundaries or order. Holds at most about 2k rows."""

    def __init__(self, k: int) -> None:
        self.k, self.size = k, 0
        self.tables: list[pa.Table] = []
        self.hashes: list[np.ndarray] = []
        self.bound: np.uint64 | None = None  # the k-th smallest hash once k rows were seen
        self.seen = 0  # rows offered

    @property
    def dropped(self) -> bool:
        """Whether rows were left out (more than ``k`` offered)."""
        return self.seen > self.k

    def offer(self, rows: pa.RecordBatch, hashes: np.ndarray) -> None:
        self.seen += len(hashes)
        keep = np.ones(len(hashes), bool) if self.bound is None else hashes < self.bound
        if self.k and keep.any():
            self.tables.append(pa.Table.from_batches([rows.filter(pa.array(keep))]))
            self.hashes.append(hashes[keep])
            self.size += int(keep.sum())
            if self.size > 2 * self.k:
                self._compact()

    def offer_table(self, rows: pa.Table, hashes: np.ndarray) -> None:
        """Another sampler's result (its rows and their hashes, in the same order)."""
        self.offer(pa.record_batch([c.combine_chunks() for c in rows.columns], schema=rows.schema), hashes)

    def _compact(self) -> None:
        table, h = pa.concat_tables(self.tables), np.concatenate(self.hashes)
        if len(h) > self.k:
            kept = np.argpartition(h, self.k - 1)[: self.k]
            table, h = table.take(pa.array(kept)), h[kept]
            self.bound = h.max()
        self.tables, self.hashes, self.size = [table], [h], len(h)

    def items(self) -> tuple[pa.Table, np.ndarray] | None:
        """The sample and its hashes, in hash order (a random order); None when nothing was kept."""
        if not self.tables:
            return None
        self._compact()
        order = np.argsort(self.hashes[0], kind="stable")
        return self.tables[0].take(pa.array(order)), self.hashes[0][order]

    def result(self, schema: pa.Schema) -> pa.Table:
        """The sample in hash order (a random order)."""
        kept = self.items()
        return schema.empty_table() if kept is None else kept[0]


def time_cutoff(files: ParquetFiles, column: str, fraction: float, *, sample_rows: int = 100_000,
                seed: int = 0, batch_size: int = READ_ROWS) -> Any:
    """The value at the ``1 - fraction`` quantile of ``column`` (a bottom-k sample of it, one pass):
    ``SplitRule(time=column, cutoff=...)`` then holds out about the last ``fraction`` of rows by time."""
    sampler = _BottomK(sample_rows)
    for piece in files.pieces():
        for batch, first in files.read(piece, [column], batch_size):
            sampler.offer(batch, row_hash(piece.file, first + np.arange(batch.num_rows), seed, "time"))
    values = pc.drop_null(sampler.result(pa.schema([files.dataset.schema.field(column)]))[column].combine_chunks())
    if len(values) == 0:
        raise SpecError("dataset", f"column {column!r} has no non-null values to split by time")
    ordered = values.take(pc.sort_indices(values))
    return ordered[min(int((1 - fraction) * len(ordered)), len(ordered) - 1)]


# --- 2. statistics ------------------------------------------------------------------------------


def _flat(column: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """(the values, their rows): ``None`` for a single-valued column, whose value i is row i's."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not _is_list(column.type):
        return column, None
    values = pc.list_flatten(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values, pc.list_parent_indices(column).to_numpy().astype(np.int64)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def _value_type(t: pa.DataType) -> pa.DataType:
    t = t.value_type if _is_list(t) else t
    return t.value_type if pa.types.is_dictionary(t) else t


class _Counter:
    """Running value counts: per-batch ``value_counts`` merged when they outgrow the merged counts,
    so memory is a small multiple of the distinct values and the merges cost O(total log total)."""

    def __init__(self, value_type: pa.DataType) -> None:
        self.merged = pa.table({"value": pa.array([], value_type), "count": pa.array([], pa.int64())})
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, values: pa.Array) -> None:
        counted = pc.value_counts(values)
        present = pc.is_valid(counted.field("values"))
        self.add_counts(pa.table({"value": counted.field("values").filter(present),
                                  "count": counted.field("counts").filter(present)}))

    def add_counts(self, counts: pa.Table) -> None:
        """Counts of (value, count) rows, e.g. another counter's :meth:`result`."""
        self.parts.append(counts)
        self.pending += counts.num_rows
        if self.pending > max(self.merged.num_rows, 1 << 18):
            self.result()

    def result(self) -> pa.Table:
        if self.parts:
            summed = pa.concat_tables([self.merged, *self.parts]).group_by("value").aggregate([("count", "sum")])
            self.merged = pa.table({"value": summed["value"], "count": summed["count_sum"]})
            self.parts, self.pending = [], 0
        return self.merged


@dataclass(frozen=True)
class StreamStats:
    """What one pass learns: counts, the train vocabularies and dense moments, and a train sample.

    As in ``EncodedDataset``: ``vocabularies[name][i]`` is the value with id ``i + 1``, ids by
    descending train count (ties by ascending value), ``cardinalities[name] = len(vocabulary) + 1``.
    ``vocabulary_counts[name][i]`` is the train count of that value. ``sample`` holds raw rows
    (label, dense and sparse columns) of the train split, in a random order.
    """

    split: SplitRule
    train_rows: int
    valid_rows: int
    positives: int  # label 1 rows, both splits
    vocabularies: dict[str, pa.Array]
    vocabulary_counts: dict[str, np.ndarray]
    cardinalities: dict[str, int]
    dense_mean: np.ndarray  # (n_dense,) float32
    dense_std: np.ndarray  # (n_dense,) float32
    multi_valued: frozenset[str]
    piece_rows: tuple[tuple[int, int], ...]  # (train, validation) rows of each row group of files.pieces()
    sample: pa.Table = field(repr=False)


class StatsPart:
    """What a scan of some of the row groups learns, mergeable with the other parts': row and label
    counts, dense moments, train value counts, a bottom-k sample, and each row group's split sizes.
    :func:`scan_part` makes one; :meth:`merge` adds another (Ray tasks scan parts in parallel)."""

    def __init__(self, columns: Columns, schema: pa.Schema, sample_rows: int) -> None:
        self.counters = {name: _Counter(_value_type(schema.field(name).type)) for name in columns.sparse}
        self.sampler = _BottomK(sample_rows)
        self.n = self.n_train = self.positives = 0
        self.mean, self.m2 = np.zeros(len(columns.dense)), np.zeros(len(columns.dense))
        self.piece_rows: dict[int, tuple[int, int]] = {}  # row group index -> (train rows, validation rows)

    def _moments(self, m: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan et al.'s merge of (count, mean, sum of squared deviations) with ``m`` more rows."""
        if m:
            delta = mean - self.mean
            self.m2 += m2 + delta**2 * self.n_train * m / (self.n_train + m)
            self.mean += delta * m / (self.n_train + m)
            self.n_train += m

    def merge(self, other: StatsPart) -> None:
        self.n, self.positives = self.n + other.n, self.positives + other.positives
        self._moments(other.n_train, other.mean, other.m2)
        for name, counter in self.counters.items():
            counter.add_counts(other.counters[name].result())
        kept = other.sampler.items()
        if kept is not None:
            self.sampler.offer_table(*kept)
        self.piece_rows.update(other.piece_rows)


def scan_part(files: ParquetFiles, columns: Columns, split: SplitRule, pieces: Sequence[int] | None = None, *,
              sample_rows: int = 200_000, batch_size: int = READ_ROWS) -> StatsPart:
    """Scan the row groups ``pieces`` (indices into ``files.pieces()``; default all), only the
    needed columns, ``batch_size`` rows at a time."""
    schema, all_pieces = files.dataset.schema, files.pieces()
    needed = [columns.label, *columns.dense, *columns.sparse]
    part = StatsPart(columns, schema, sample_rows)
    for index in range(len(all_pieces)) if pieces is None else pieces:
        piece, in_train, in_valid = all_pieces[index], 0, 0
        for batch, first in files.read(piece, list(dict.fromkeys([*needed, *split.columns])), batch_size):
            labels = label_array(batch.column(columns.label), columns.label)
            dense = dense_matrix(batch, columns.dense).astype(np.float64)
            train = ~split_of(batch, split, piece.file, first)
            m = int(train.sum())
            in_train, in_valid = in_train + m, in_valid + batch.num_rows - m
            part.n, part.positives = part.n + batch.num_rows, part.positives + int(labels.sum())
            if m:
                x = dense[train]
                part._moments(m, x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0))
            for name in columns.sparse:
                values, parents = _flat(batch.column(name))
                part.counters[name].add(values.filter(pa.array(train if parents is None else train[parents])))
            hashes = row_hash(piece.file, first + np.flatnonzero(train), split.seed, "sample")
            part.sampler.offer(batch.select(needed).filter(pa.array(train)), hashes)
        part.piece_rows[index] = (in_train, in_valid)
    return part


def scan_statistics(files: ParquetFiles, columns: Columns, split: SplitRule, *, max_vocab: int | None = None,
                    min_count: int = 1, sample_rows: int = 200_000, batch_size: int = READ_ROWS,
                    standardize: bool = True, parts: Iterable[StatsPart] | None = None) -> StreamStats:
    """One streaming pass over ``files`` (only the needed columns, ``batch_size`` rows at a time), or
    the merge of ``parts`` that scanned every row group between them (see :func:`scan_part`).

    A vocabulary keeps the values seen at least ``min_count`` times on the train rows, at most
    ``max_vocab`` of them (the most frequent); the others share the OOV id 0. Raises
    :class:`SpecError` as ``dataset.py`` does: a label that is not 0/1, a missing dense value, one
    class only, every feature constant, or a split that leaves a side empty.
    """
    schema = files.dataset.schema
    needed = [columns.label, *columns.dense, *columns.sparse]
    if parts is None:
        total = scan_part(files, columns, split, sample_rows=sample_rows, batch_size=batch_size)
    else:
        total = StatsPart(columns, schema, sample_rows)
        for part in parts:
            total.merge(part)
    n, n_train, positives = total.n, total.n_train, total.positives
    if n == 0:
        raise SpecError("dataset.path", f"{files.root!r} has no rows")
    if n_train == 0 or n_train == n:
        raise SpecError("dataset.validation_fraction", f"the split left {n_train} train and {n - n_train} "
                        f"validation rows of {n}; both need some")
    if positives in (0, n):
        raise SpecError("dataset.label", f"column {columns.label!r} holds only {int(positives > 0)}s: a click "
                        "model needs rows of both classes (0 and 1)")
    raw_std = np.sqrt(total.m2 / n_train).astype(np.float32)
    vocabularies, vocabulary_counts = {}, {}
    for name, counter in total.counters.items():
        counted = counter.result().filter(pc.greater_equal(counter.result()["count"], min_count))
        counted = counted.sort_by([("count", "descending"), ("value", "ascending")])
        counted = counted.slice(0, max_vocab) if max_vocab is not None else counted
        vocabularies[name] = counted["value"].combine_chunks()
        vocabulary_counts[name] = counted["count"].to_numpy()
    if all(not sd > 0 for sd in raw_std) and all(len(v) <= 1 for v in vocabularies.values()):
        raise SpecError("dataset", "every feature column is constant on the train rows: there is nothing to select")
    std = raw_std.copy()
    std[std == 0] = 1.0
    return StreamStats(
        split=split, train_rows=n_train, valid_rows=n - n_train, positives=positives,
        vocabularies=vocabularies, vocabulary_counts=vocabulary_counts,
        cardinalities={name: len(v) + 1 for name, v in vocabularies.items()},
        dense_mean=total.mean.astype(np.float32) if standardize else np.zeros(len(columns.dense), np.float32),
        dense_std=std if standardize else np.ones(len(columns.dense), np.float32),
        multi_valued=frozenset(c for c in columns.sparse if _is_list(schema.field(c).type)),
        piece_rows=tuple(total.piece_rows[i] for i in sorted(total.piece_rows)),
        sample=total.sampler.result(pa.schema([schema.field(c) for c in needed])),
    )


# --- 3. encoding --------------------------------------------------------------------------------


class VocabularyIndex:
    """Looks values up in a vocabulary: ids ``position + 1``, 0 outside it (or null).

    ``pc.index_in`` builds a hash table of the whole vocabulary on every call: 0.28 s for a 65,536-row
    batch against a million strings, per column. This index sorts the vocabulary's 64-bit value
    hashes once; a batch then costs a hash, a binary search and an equality check per value (the
    check makes it exact): 0.026 s there. Below :attr:`SEARCH_FROM` values ``index_in`` is the
    faster (0.7 against 3.4 ms for 100 values) and is used, as it is for a vocabulary with two values
    of one hash.

        >>> VocabularyIndex(pa.array(["b", "a", "c"]), search_from=1).ids(pa.array(["a", "x", None, "c"])).tolist()
        [2, 0, 0, 3]
    """

    SEARCH_FROM = 100_000

    def __init__(self, vocabulary: pa.Array, search_from: int = SEARCH_FROM) -> None:
        self.vocabulary = vocabulary
        self.search = len(vocabulary) >= max(search_from, 1)
        if self.search:
            hashes = _value_hash(vocabulary)
            self.order = np.argsort(hashes, kind="stable")
            self.sorted = hashes[self.order]
            self.search = not bool((np.diff(self.sorted) == 0).any())

    def ids(self, values: pa.Array) -> np.ndarray:
        if len(self.vocabulary) == 0:
            return np.zeros(len(values), np.int64)
        if not self.search:
            return pc.fill_null(pc.index_in(values, value_set=self.vocabulary), -1).to_numpy().astype(np.int64) + 1
        hashes = _value_hash(values)
        at = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
        found = self.order[at]
        same = pc.fill_null(pc.equal(self.vocabulary.take(pa.array(found)), values), False)
        hit = (self.sorted[at] == hashes) & same.to_numpy(zero_copy_only=False)
        return np.where(hit, found + 1, 0).astype(np.int64)


def encode_batch(batch: pa.RecordBatch | pa.Table, stats: StreamStats, columns: Columns,
                 indexes: dict[str, VocabularyIndex] | None = None) -> EncodedSplit:
    """``batch``'s rows encoded as ``dataset.encode_table`` would with these vocabularies and moments:
    ids ``index in vocabulary + 1``, 0 for a value outside it, a null value dropped (a null
    single value gives a row of length 0). ``row_index`` is the row's position in ``batch``.
    ``indexes`` caches each column's :class:`VocabularyIndex` across calls (filled as needed)."""
    indexes = {} if indexes is None else indexes
    if isinstance(batch, pa.Table):
        batch = pa.record_batch([c.combine_chunks() for c in batch.columns], schema=batch.schema)
    labels = label_array(batch.column(columns.label), columns.label)
    dense = (dense_matrix(batch, columns.dense) - stats.dense_mean) / stats.dense_std
    sparse = {}
    for name in columns.sparse:
        values, parents = _flat(batch.column(name))
        if name not in indexes:
            indexes[name] = VocabularyIndex(stats.vocabularies[name])
        ids = indexes[name].ids(values)
        present = pc.is_valid(values).to_numpy(zero_copy_only=False)
        rows = np.arange(batch.num_rows) if parents is None else parents
        sparse[name] = (ids[present], np.bincount(rows[present], minlength=batch.num_rows).astype(np.int32))
    return EncodedSplit(dense, sparse, labels, np.arange(batch.num_rows, dtype=np.int64))


def sample_split(stats: StreamStats, columns: Columns) -> EncodedSplit:
    """The train sample encoded (in a random order), for stages that need random access to rows."""
    return encode_batch(stats.sample, stats, columns)


def _concat(parts: Sequence[EncodedSplit]) -> EncodedSplit:
    if len(parts) == 1:
        return parts[0]
    return EncodedSplit(
        np.concatenate([p.dense for p in parts]),
        {k: (np.concatenate([p.sparse[k][0] for p in parts]), np.concatenate([p.sparse[k][1] for p in parts]))
         for k in parts[0].sparse},
        np.concatenate([p.labels for p in parts]), np.concatenate([p.row_index for p in parts]))


def _take(part: EncodedSplit, rows: np.ndarray) -> EncodedSplit:
    def jagged(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        single = len(values) == len(lengths) and bool((lengths == 1).all())  # the common case, 2x faster
        return (values[rows], lengths[rows]) if single else take_jagged(values, lengths, rows)

    return EncodedSplit(part.dense[rows], {k: jagged(*pair) for k, pair in part.sparse.items()},
                        part.labels[rows], part.row_index[rows])


# --- 4. the stream ------------------------------------------------------------------------------


_END = object()  # the producer's last item; an exception instead is raised by the consumer


class StreamSource:
    """``BatchSource``'s interface over one split of ``files``, read again for each call to
    :meth:`batches`: memory is bounded by the shuffle buffer, not the rows.

    With a seed, row groups are visited in a seeded order and rows pass through a shuffle buffer of
    ``shuffle_buffer_rows`` (default ``max(65,536, 4 x batch_size)``); without one, rows come in file
    order (validation). Every batch but the last is full, so :meth:`num_batches` is exact. A
    background thread reads and encodes up to ``prefetch`` Arrow batches ahead.
    """

    def __init__(self, files: ParquetFiles, columns: Columns, stats: StreamStats, split: Literal["train", "valid"],
                 crosses: Sequence[CrossFeature] = (), cardinalities: dict[str, int] | None = None,
                 dense_columns: Sequence[int] | None = None, *, rows: tuple[int, int] | None = None,
                 read_rows: int = READ_ROWS, shuffle_buffer_rows: int | None = None, prefetch: int = 2) -> None:
        self.files, self.stats, self.split, self.rows = files, stats, split, rows
        self.crosses, self.dense_columns = tuple(crosses), dense_columns
        self.cardinalities = stats.cardinalities if cardinalities is None else cardinalities
        self.columns, self.keys = columns, [*columns.sparse, *(c.name for c in self.crosses)]
        self.read_rows, self.shuffle_buffer_rows, self.prefetch = read_rows, shuffle_buffer_rows, prefetch

    def keep_keys(self, keys: Collection[str]) -> None:
        """Keep only these sparse keys in the batches; only they and the crosses' features are read."""
        self.keys = [k for k in self.keys if k in keys]
        needed = [n for n in self.columns.sparse if n in self.keys or any(n in (c.a, c.b) for c in self.crosses)]
        self.columns = replace(self.columns, sparse=tuple(needed))

    def __len__(self) -> int:
        if self.rows is not None:
            return self.rows[1] - self.rows[0]
        return self.stats.train_rows if self.split == "train" else self.stats.valid_rows

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def _ranges(self, pieces: Sequence[_Piece]) -> list[tuple[int, _Piece, int, int]]:
        """(index, piece, first, end): the split's rows ``first`` to ``end`` of each row group that
        holds some of :attr:`rows` (all of every row group without a range)."""
        side = 0 if self.split == "train" else 1
        out, offset = [], 0
        lo, hi = self.rows if self.rows is not None else (0, len(self))
        for i, piece in enumerate(pieces):
            count = self.stats.piece_rows[i][side] if i < len(self.stats.piece_rows) else 0
            if offset < hi and offset + count > lo:
                out.append((i, piece, max(lo - offset, 0), min(hi - offset, count)))
            offset += count
        return out

    def _produce(self, seed: int | None, out: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            ranges = self._ranges(self.files.pieces())
            if seed is not None:
                ranges = [ranges[i] for i in np.random.default_rng(seed).permutation(len(ranges))]
            c, indexes = self.columns, dict[str, VocabularyIndex]()
            read = list(dict.fromkeys([c.label, *c.dense, *c.sparse, *self.stats.split.columns]))
            for _, piece, lo, hi in ranges:
                at = 0  # the split's rows of this row group read so far
                for batch, first in self.files.read(piece, read, self.read_rows):
                    valid = split_of(batch, self.stats.split, piece.file, first)
                    rows = batch.filter(pa.array(valid if self.split == "valid" else ~valid))
                    begin, end = max(lo - at, 0), min(hi - at, rows.num_rows)
                    rows, at = rows.slice(begin, max(end - begin, 0)), at + rows.num_rows
                    if rows.num_rows and not put(encode_batch(rows, self.stats, c, indexes)):
                        return
                    if at >= hi:
                        break
            put(_END)
        except BaseException as exc:  # noqa: B036 - handed to the consumer, which raises it
            put(exc)

    def batches(self, batch_size: int, seed: int | None = None) -> Generator[Batch, None, None]:
        """Exactly ``num_batches(batch_size)`` batches holding every row of the split once."""
        stop, out = threading.Event(), queue.Queue[Any](maxsize=self.prefetch)
        thread = threading.Thread(target=self._produce, args=(seed, out, stop), name="stream-prefetch", daemon=True)
        thread.start()
        rng = None if seed is None else np.random.default_rng([seed, 1])
        target = max(self.shuffle_buffer_rows or max(READ_ROWS, 4 * batch_size), batch_size)
        pool: list[EncodedSplit] = []
        pooled = seen = 0
        try:
            while True:
                try:
                    item = out.get(timeout=1.0)
                except queue.Empty:
                    if thread.is_alive():
                        continue
                    raise RuntimeError("the Parquet reader thread stopped without a result") from None
                if isinstance(item, BaseException):
                    raise item
                end = item is _END
                if not end:
                    pool.append(item)
                    pooled, seen = pooled + len(item), seen + len(item)
                if seen > len(self) or (end and seen < len(self)):
                    raise SpecError("dataset.path", f"{self.files.root!r} changed since its statistics were taken: "
                                    f"the {self.split} split had {len(self)} rows, now {'more' if not end else seen}")
                if pooled and (end or pooled >= target):
                    rows = _concat(pool)
                    order = np.arange(pooled) if rng is None else rng.permutation(pooled)
                    full = pooled if end else pooled - pooled % batch_size
                    if full:
                        yield from self._emit(_take(rows, order[:full]), batch_size)
                    pool, pooled = ([_take(rows, order[full:])], pooled - full) if full < pooled else ([], 0)
                if end:
                    return
        finally:
            stop.set()
            thread.join()

    def _emit(self, rows: EncodedSplit, batch_size: int) -> Iterator[Batch]:
        source = BatchSource(rows.dense, rows.sparse, rows.labels, self.crosses, self.cardinalities, self.dense_columns)
        source.keep_keys(self.keys)
        for s in range(0, len(rows), batch_size):
            yield source.batch(s, min(s + batch_size, len(rows)))


# --- 5. a streamed dataset for the job stages -----------------------------------------------------

STREAM_ROWS = 2_000_000  # reader "auto": at most this many rows are read into memory


@dataclass(frozen=True)
class StreamedSplit:
    """One split of a streamed dataset: what :func:`pipelines.stages.batch_source` builds a
    :class:`StreamSource` from (in place of an in-memory ``EncodedSplit``)."""

    files: ParquetFiles
    columns: Columns
    stats: StreamStats
    name: Literal["train", "valid"]
    rows: tuple[int, int] | None = None  # a range of the split's rows, in file order (a worker's shard)

    def __len__(self) -> int:
        if self.rows is not None:
            return self.rows[1] - self.rows[0]
        return self.stats.train_rows if self.name == "train" else self.stats.valid_rows

    def shard(self, rank: int, world: int) -> StreamedSplit:
        """Worker ``rank`` of ``world``'s equal share: ``len(self) // world`` consecutive rows of the split in
        file order (the last ``len(self) % world`` rows are left out, so that every worker takes the same
        number of steps). A worker reads only the row groups that hold its rows."""
        lo, _ = self.rows or (0, 0)
        each = len(self) // world
        return replace(self, rows=(lo + rank * each, lo + (rank + 1) * each))

    def source(self, crosses: Sequence[CrossFeature], cardinalities: dict[str, int],
               dense_columns: Sequence[int]) -> StreamSource:
        return StreamSource(self.files, self.columns, self.stats, self.name, crosses, cardinalities, dense_columns,
                            rows=self.rows)


def wants_stream(spec: DatasetSpec, roots: DataRoots | None = None) -> bool:
    """Whether a job reads ``spec`` streamed: ``reader: stream``, or ``auto`` with a vocabulary cap
    or more than :data:`STREAM_ROWS` rows (counted from the Parquet footers, no rows read)."""
    if spec.reader != "auto":
        return spec.reader == "stream"
    if spec.min_count > 1 or spec.max_vocabulary is not None or spec.split_key or spec.split_time:
        return True
    files, _ = open_parquet(spec, roots)
    return sum(p.metadata.row_group(p.row_group).num_rows for p in files.pieces()) > STREAM_ROWS


def stream_dataset(spec: DatasetSpec, seed: int = 0, roots: DataRoots | None = None) -> EncodedDataset:
    """The dataset a spec names, streamed: one pass learns the vocabularies, dense moments, split
    sizes and a train sample (:func:`scan_statistics`); the splits are :class:`StreamedSplit` s that
    read the files again for each pass. Memory is bounded by the batches, the sample and the
    vocabularies, not by the rows.

    Example::

        data = stream_dataset(DatasetSpec(path="ctr/", label="click", reader="stream"), seed=0)
        len(data.train), data.cardinalities["item"], len(data.sample)
    """
    files, columns = open_parquet(spec, roots)
    stats = scan_statistics(files, columns, split_rule(spec, files, seed), max_vocab=spec.max_vocabulary,
                            min_count=spec.min_count)
    return streamed_dataset(files, columns, stats)


def split_rule(spec: DatasetSpec, files: ParquetFiles, seed: int) -> SplitRule:
    """The spec's split: by ``split_time`` (its cutoff found by one pass over that column), by
    ``split_key``, else by a hash of (file, row)."""
    if spec.split_time:
        cutoff = time_cutoff(files, spec.split_time, spec.validation_fraction, seed=seed)
        return SplitRule(spec.validation_fraction, seed, time=spec.split_time, cutoff=cutoff)
    return SplitRule(spec.validation_fraction, seed, key=spec.split_key)


def streamed_dataset(files: ParquetFiles, columns: Columns, stats: StreamStats) -> EncodedDataset:
    """The job stages' view of a streamed read: the splits as :class:`StreamedSplit` s, the train sample encoded."""
    return EncodedDataset(
        train=StreamedSplit(files, columns, stats, "train"), valid=StreamedSplit(files, columns, stats, "valid"),
        label=columns.label, dense_names=columns.dense, sparse_names=columns.sparse,
        multi_valued=stats.multi_valued, cardinalities=stats.cardinalities, vocabularies=stats.vocabularies,
        dense_mean=stats.dense_mean, dense_std=stats.dense_std, ignored=columns.ignored,
        sample=sample_split(stats, columns))
