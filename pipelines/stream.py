"""Parquet -> batches with memory flat in the number of rows: the streaming twin of :mod:`pipelines.dataset`.

:mod:`pipelines.dataset` holds the whole table (about 1 GB per million rows). Here every step reads
bounded Arrow batches and keeps only what is bounded by something other than the row count:

1. :func:`~pipelines.stream_split.split_of` (:mod:`pipelines.stream_split`): train/validation by a
   hash of (file, row in file), of a key column's value, or by time: the same row lands in the same
   split whatever the batch sizes.
2. :func:`~pipelines.stream_stats.scan_statistics` (:mod:`pipelines.stream_stats`): one pass for row
   counts, label checks, dense mean/std, train value counts (memory bounded by the distinct values)
   -> vocabularies, and a bottom-k row sample; in parts that merge (Ray tasks scan them).
3. :func:`encode_batch`: one Arrow batch -> the ids and standardised values ``dataset.py`` would give,
   through a :class:`VocabularyIndex` per column.
4. :class:`StreamSource`: the :class:`~seqattn_core.batches.BatchSource` interface over a re-scan per
   epoch (file order and a bounded buffer shuffled by the seed), read ahead in a background thread;
   :meth:`StreamedSplit.shard` gives a Ray worker its equal range of rows.
5. :func:`sample_split`: the sample encoded, for stages that need random access.

Validation metrics stream too (:class:`seqattn_core.training.StreamingBinaryMetrics`).

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

import queue
import threading
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.dataset import (
    Columns,
    EncodedDataset,
    EncodedSplit,
    dense_matrix,
    label_array,
    take_jagged,
)
from pipelines.errors import SpecError
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec
from pipelines.stream_split import (
    READ_ROWS,
    ParquetFiles,
    RowGroup,
    SplitRule,
    open_parquet,
    row_hash,
    split_of,
    value_hash,
)
from pipelines.stream_stats import (
    StatsPart,
    StreamStats,
    flat_values,
    scan_part,
    scan_statistics,
    time_cutoff,
)
from seqattn_core.batches import Batch, BatchSource
from seqattn_core.crosses import CrossFeature

__all__ = [
    "ParquetFiles", "SplitRule", "StreamSource", "StreamStats", "encode_batch",
    "open_parquet", "row_hash", "sample_split", "scan_statistics", "split_of", "time_cutoff",
    "STREAM_ROWS", "StatsPart", "StreamedSplit", "scan_part", "split_rule", "stream_dataset", "streamed_dataset",
    "wants_stream",
]


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
            hashes = value_hash(vocabulary)
            self.order = np.argsort(hashes, kind="stable")
            self.sorted = hashes[self.order]
            self.search = not bool((np.diff(self.sorted) == 0).any())

    def ids(self, values: pa.Array) -> np.ndarray:
        if len(self.vocabulary) == 0:
            return np.zeros(len(values), np.int64)
        if not self.search:
            return pc.fill_null(pc.index_in(values, value_set=self.vocabulary), -1).to_numpy().astype(np.int64) + 1
        hashes = value_hash(values)
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
        values, parents = flat_values(batch.column(name))
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

    def _ranges(self, pieces: Sequence[RowGroup]) -> list[tuple[int, RowGroup, int, int]]:
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
