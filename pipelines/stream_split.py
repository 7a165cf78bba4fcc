"""Opening a streamed Parquet dataset and splitting its rows without holding them.

:class:`ParquetFiles` lists the row groups (footers only) and reads one in bounded Arrow batches;
:func:`split_of` puts a row in train or validation by a hash of (file, row number in the file), of a
key column's value, or by time: the same row lands on the same side whatever the batch sizes, the
reader, or the number of workers. Used by :mod:`pipelines.stream_stats` and :mod:`pipelines.stream`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.dataset import Columns, open_dataset, resolve_columns
from pipelines.errors import SpecError
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec

READ_ROWS = 65_536  # rows per Arrow batch read: a few MB per column


# --- opening ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowGroup:
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

    def pieces(self) -> list[RowGroup]:
        """Every row group, files in path order (reads the footers, not the data)."""
        out = []
        try:
            for fragment in sorted(self.dataset.get_fragments(), key=lambda f: f.path):
                rel = os.path.relpath(fragment.path, self.root).replace(os.sep, "/")
                keys = pads.get_partition_keys(fragment.partition_expression)
                metadata, first = fragment.metadata, 0
                for i in range(metadata.num_row_groups):
                    out.append(RowGroup(rel, fragment.path, metadata, i, first, keys))
                    first += metadata.row_group(i).num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise SpecError("dataset.path", f"cannot read {self.root!r} as Parquet: {exc}") from None
        return out

    def read(self, piece: RowGroup, columns: Sequence[str], batch_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
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


def value_hash(values: pa.Array) -> np.ndarray:
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
        h = _mix(value_hash(batch.column(rule.key)) ^ _salt("key", rule.seed))
    else:
        h = row_hash(file, first_row + np.arange(batch.num_rows), rule.seed)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < rule.validation_fraction
