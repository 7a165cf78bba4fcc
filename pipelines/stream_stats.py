"""The statistics pass of a streamed read: counts, vocabularies, dense moments, a bottom-k sample.

:func:`scan_part` scans some row groups into a mergeable :class:`StatsPart` (Ray tasks scan parts in
parallel, :mod:`pipelines.ray_stream`); :func:`scan_statistics` merges the parts (or scans
everything) into the :class:`StreamStats` a job reads with: memory bounded by the distinct values
and the sample, not by the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.dataset import Columns, dense_matrix, label_array
from pipelines.errors import SpecError
from pipelines.stream_split import READ_ROWS, ParquetFiles, SplitRule, row_hash, split_of


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


def flat_values(column: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
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
                values, parents = flat_values(batch.column(name))
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
