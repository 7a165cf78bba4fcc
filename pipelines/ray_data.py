"""Parquet through Ray Data: up-front checks, the parallel read, and encoded rows to and from workers.

1. :func:`check_parquet` reads every file's footer (no data) and fails fast, naming the file, on a
   missing path, an unreadable file or a file whose schema differs from the others. Checking up
   front matters: inside Ray Data the same faults surface as a read task's retries and a stack
   trace from a worker, long after the job started.
2. :func:`read_parquet` reads only the needed columns with ``ray.data.read_parquet`` (file,
   directory, hive partitions), in file order so that the split and the vocabularies are the same
   as the in-process run's (:func:`pipelines.dataset.encode_table` is then applied on the driver).
3. :func:`split_to_dataset` turns an encoded split into a Ray Dataset (one row per example: label,
   dense vector, one list of ids per sparse feature) that Ray Train splits across workers;
   :func:`shard_to_split` turns a worker's shard back into the arrays ``BatchSource`` slices.

Example::

    source = check_parquet(DatasetSpec(path="data/ctr", label="label"))
    table = read_parquet(source)                 # a pyarrow Table with source.columns only
    data = encode_table(table, source.columns, 0.2, seed=0)
    ds = split_to_dataset(data.train, data)      # ray.data.Dataset
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.dataset import Columns, EncodedDataset, EncodedSplit, dataset_files, resolve_columns
from pipelines.errors import SpecError
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec

ROW, LABEL, DENSE = "__row", "__label", "__dense"
SPARSE_PREFIX = "sparse/"
ROWS_PER_BLOCK = 50_000


@dataclass(frozen=True)
class ParquetSource:
    """A checked Parquet dataset: its data files, hive root and partition keys, and column roles."""

    path: str
    files: tuple[str, ...]
    root: str | None  # the directory hive partitions are relative to (None for a single file)
    partition_columns: tuple[str, ...]
    columns: Columns
    roots: DataRoots | None = None  # read through their checking filesystem when set

    @property
    def needed(self) -> list[str]:
        return [self.columns.label, *self.columns.dense, *self.columns.sparse]


def _relative(path: str, root: str | None) -> str:
    return str(Path(path).relative_to(root)) if root else Path(path).name


def check_parquet(spec: DatasetSpec, roots: DataRoots | None = None) -> ParquetSource:
    """Find the data files of ``spec.path``, read each footer and check the schemas agree; with
    ``roots``, every file is opened through their checking filesystem (:mod:`pipelines.roots`).

    Raises :class:`SpecError` on ``dataset.path`` (missing, empty, unreadable, mixed schemas) or on
    the column fields (see :func:`pipelines.dataset.resolve_columns`).

    Example::

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> pq.write_table(pa.table({"y": [0, 1], "c": [1, 2]}), os.path.join(d, "a.parquet"))
        >>> pq.write_table(pa.table({"y": [0, 1], "c": ["x", "y"]}), os.path.join(d, "b.parquet"))
        >>> check_parquet(DatasetSpec(path=d, label="y"))
        Traceback (most recent call last):
        ...
        pipelines.errors.SpecError: dataset.path: file 'b.parquet': column 'c' is string, but int64 in 'a.parquet'; every file must have the same schema
    """
    root, files = dataset_files(spec.path)
    base = str(root) if root.is_dir() else None
    filesystem = roots.filesystem() if roots is not None else None
    schemas = []
    for f in files:
        try:
            schemas.append(pq.read_schema(f, filesystem=filesystem))
        except (pa.ArrowInvalid, OSError) as exc:
            raise SpecError("dataset.path", f"cannot read {_relative(f, base)!r} as Parquet: {exc}") from None
    try:
        full = pads.dataset(files, format="parquet", partitioning="hive", partition_base_dir=base,
                            filesystem=filesystem).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise SpecError("dataset.path", f"cannot read {spec.path!r} as Parquet: {exc}") from None
    partition_columns = tuple(n for n in full.names if n not in schemas[0].names)
    columns = resolve_columns(full, spec, partition_columns)
    first = _relative(files[0], base)
    for f, schema in zip(files[1:], schemas[1:]):
        for name in [columns.label, *columns.dense, *columns.sparse]:
            if name in partition_columns:
                continue
            want = schemas[0].field(name).type
            if name not in schema.names:
                raise SpecError("dataset.path", f"file {_relative(f, base)!r}: column {name!r} is missing, but present "
                                f"in {first!r}; every file must have the same schema")
            got = schema.field(name).type
            if got != want and not _same_values(got, want):
                raise SpecError("dataset.path", f"file {_relative(f, base)!r}: column {name!r} is {got}, but {want} in "
                                f"{first!r}; every file must have the same schema")
    return ParquetSource(spec.path, tuple(files), base, partition_columns, columns, roots)


def _same_values(a: pa.DataType, b: pa.DataType) -> bool:
    """A dictionary-encoded column and its plain type hold the same values (writers differ)."""
    a = a.value_type if pa.types.is_dictionary(a) else a
    b = b.value_type if pa.types.is_dictionary(b) else b
    return a == b


def forget_broken_http_filesystem() -> None:
    """Make ``fsspec.implementations.http`` fail to import cleanly and always the same way.

    It needs aiohttp, which is not installed. Ray resolves every path by trying that import and
    expects ``ModuleNotFoundError``; when two threads try at once (Ray Data's executor and the
    trainer's), one can see the other's half-initialised module and get a plain ``ImportError``,
    which failed whole jobs (seen in the tests). A ``None`` entry in ``sys.modules`` makes every
    later import raise ``ModuleNotFoundError`` at once, from any thread.
    """
    module = sys.modules.get("fsspec.implementations.http", False)
    if module is None or (module is not False and hasattr(module, "HTTPFileSystem")):
        return
    try:
        import fsspec.implementations.http  # noqa: F401
    except ImportError:
        sys.modules["fsspec.implementations.http"] = None  # type: ignore[assignment]


forget_broken_http_filesystem()


def read_parquet(source: ParquetSource) -> pa.Table:
    """The needed columns of every file, read by Ray Data tasks, in file order."""
    import ray.data
    from ray.data.datasource import Partitioning

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same row order -> same split as in process
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    file_columns = [c for c in source.needed if c not in source.partition_columns]
    # pyarrow's stubs type the flavour as PartitionStyle, of which "hive" is one.
    partitioning = (Partitioning("hive", base_dir=source.root)  # type: ignore[arg-type]
                    if source.partition_columns and source.root else None)
    filesystem = source.roots.filesystem() if source.roots is not None else None
    try:  # footers are read here on the driver, the row groups in Ray Data's tasks
        ds = ray.data.read_parquet(list(source.files), columns=file_columns, partitioning=partitioning,
                                   filesystem=filesystem)
        tables = [ray.get(ref) for ref in ds.to_arrow_refs()]
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, (pa.ArrowException, OSError)):  # a file changed or vanished after the check
            raise SpecError("dataset.path", f"cannot read {source.path!r}: {type(cause).__name__}: "
                            f"{str(cause).splitlines()[0]}") from None
        raise RuntimeError(f"Ray Data could not read {source.path!r}: {str(exc).splitlines()[0]}") from exc
    tables = [t for t in tables if t.num_rows]
    if not tables:
        raise SpecError("dataset.path", f"{source.path!r} has no rows")
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.select([c for c in source.needed if c in table.column_names])


def split_to_table(split: EncodedSplit, data: EncodedDataset) -> pa.Table:
    """One row per example: ``__row`` (position in the split), label, dense vector, id lists."""
    n = len(split)
    cols: dict[str, pa.Array] = {ROW: pa.array(np.arange(n, dtype=np.int64)), LABEL: pa.array(split.labels)}
    if data.dense_names:
        cols[DENSE] = pa.FixedSizeListArray.from_arrays(pa.array(split.dense.reshape(-1)), len(data.dense_names))
    for name in data.sparse_names:
        values, lengths = split.sparse[name]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        cols[SPARSE_PREFIX + name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))
    return pa.table(cols)


def split_to_dataset(split: EncodedSplit, data: EncodedDataset, min_blocks: int = 1):  # -> ray.data.Dataset
    """A Ray Dataset of ``split`` in blocks of at most :data:`ROWS_PER_BLOCK` rows (and at least
    ``min_blocks``, so every worker's shard is cut from whole blocks)."""
    import ray.data

    table = split_to_table(split, data)
    blocks = max(min_blocks, -(-table.num_rows // ROWS_PER_BLOCK))
    bounds = np.linspace(0, table.num_rows, blocks + 1).astype(int)
    return ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])


def table_to_split(table: pa.Table, data: EncodedDataset) -> EncodedSplit:
    """Back from :func:`split_to_table` rows (any order, any subset) to arrays, in ``__row`` order."""
    table = table.sort_by(ROW) if table.num_rows else table
    n = table.num_rows
    if data.dense_names:
        flat = table.column(DENSE).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        dense = np.ascontiguousarray(flat.astype(np.float32).reshape(n, len(data.dense_names)))
    else:
        dense = np.zeros((n, 0), np.float32)
    sparse = {}
    for name in data.sparse_names:
        col = table.column(SPARSE_PREFIX + name).combine_chunks()
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0]:offsets[-1]]
        sparse[name] = (values, np.diff(offsets).astype(np.int32))
    labels = table.column(LABEL).to_numpy().astype(np.float32)
    return EncodedSplit(dense, sparse, labels, table.column(ROW).to_numpy().astype(np.int64))


def shard_to_split(batches: Iterable[pa.Table], data: EncodedDataset) -> EncodedSplit:
    """A worker's whole shard (Arrow batches from ``iter_batches``) as one :class:`EncodedSplit`."""
    tables = [b for b in batches if b.num_rows]
    if not tables:
        return table_to_split(split_to_table(EncodedSplit(np.zeros((0, len(data.dense_names)), np.float32),
                                                          {n: (np.zeros(0, np.int64), np.zeros(0, np.int32))
                                                           for n in data.sparse_names},
                                                          np.zeros(0, np.float32), np.zeros(0, np.int64)), data), data)
    return table_to_split(pa.concat_tables(tables), data)
