"""The streamed read on Ray: statistics scanned by Ray tasks and merged, rows read by the workers.

The driver holds no rows. It reads the Parquet footers, then:

1. :func:`scan_on_ray` splits the row groups into parts of about :data:`ROWS_PER_TASK` rows, one Ray
   task each (:func:`pipelines.stream.scan_part`: value counts, moments, split sizes, a bottom-k
   sample), and merges what they return in row-group order, so the vocabularies, moments, split and
   sample are those of the in-process pass (:func:`pipelines.stream.scan_statistics`) whatever the
   number of tasks or workers;
2. :func:`ray_stream_dataset` gives the job stages an ``EncodedDataset`` of
   :class:`~pipelines.stream.StreamedSplit` s: a description of the files and the statistics, which
   every Ray Train worker receives. A worker reads only its shard of the train split
   (:meth:`StreamedSplit.shard`: equal, consecutive row ranges, so every worker takes the same number
   of steps) and every validation row.

Why the workers read Parquet themselves instead of through ``ray.data.read_parquet`` and
``get_dataset_shard``: sharded tables make every step a collective, so each worker must know its
exact row count before the first step; the split hashes each row's number within its file, which
Ray Data's blocks do not carry; and the worker's reader is the in-process one (a seeded row-group
order per epoch, a shuffle buffer, a prefetch thread), so one worker and two read the same rows
the same way. Rows go from the files to the worker that trains on them, never through the driver
or the object store.

Example::

    data = ray_stream_dataset(DatasetSpec(path="lake/ctr/", label="click", reader="stream"), seed=0)
    data.train.shard(0, 2)   # rank 0's half of the train rows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from pipelines.dataset import Columns, EncodedDataset
from pipelines.errors import SpecError
from pipelines.roots import DataRoots
from pipelines.spec import DatasetSpec
from pipelines.stream import split_rule, streamed_dataset
from pipelines.stream_split import ParquetFiles, SplitRule, open_parquet
from pipelines.stream_stats import StatsPart, StreamStats, scan_part, scan_statistics

ROWS_PER_TASK = 2_000_000  # rows one statistics task scans: fixed, so the parts do not depend on the cluster


@ray.remote(num_cpus=1, max_retries=2)
def _scan_task(files: ParquetFiles, columns: Columns, split: SplitRule, pieces: list[int],
               sample_rows: int) -> StatsPart:
    return scan_part(files, columns, split, pieces, sample_rows=sample_rows)


def task_parts(row_counts: Sequence[int], rows_per_task: int = ROWS_PER_TASK) -> list[list[int]]:
    """Consecutive row groups in parts of at least ``rows_per_task`` rows (the last may hold fewer).

    >>> task_parts([3, 3, 3, 3, 1], rows_per_task=5)
    [[0, 1], [2, 3], [4]]
    """
    parts: list[list[int]] = [[]]
    rows = 0
    for i, n in enumerate(row_counts):
        if rows >= rows_per_task:
            parts.append([])
            rows = 0
        parts[-1].append(i)
        rows += n
    return [p for p in parts if p]


def scan_on_ray(files: ParquetFiles, columns: Columns, split: SplitRule, *, max_vocab: int | None = None,
                min_count: int = 1, sample_rows: int = 200_000, rows_per_task: int = ROWS_PER_TASK) -> StreamStats:
    """:func:`pipelines.stream.scan_statistics` with the scan spread over Ray tasks (Ray must be
    connected). A task that fails is retried twice; a :class:`SpecError` (a bad label, an unreadable
    file) is raised here as it is in process.

    The parts are fetched one at a time, in row-group order, each merged before the next. Each task
    samples only about its share of the ``sample_rows`` (:func:`task_sample_rows`), so the driver
    receives about ``sample_rows`` rows in all whatever the number of tasks. The merged sample is
    still exactly the in-process one: a task that left rows out below the merged sample's bound
    (its share was too small, which a margin of six standard deviations makes rare) is scanned
    again for them.
    """
    pieces = files.pieces()
    counts = [p.metadata.row_group(p.row_group).num_rows for p in pieces]
    parts = task_parts(counts, rows_per_task)
    caps = [task_sample_rows(sample_rows, sum(counts[i] for i in part), sum(counts)) for part in parts]
    refs: list[Any] = [_scan_task.remote(files, columns, split, part, cap) for part, cap in zip(parts, caps)]
    total = StatsPart(columns, files.dataset.schema, sample_rows)
    short: list[tuple[int, np.uint64 | None]] = []  # tasks that dropped sample rows, and their largest kept hash
    try:
        for i in range(len(refs)):
            part, refs[i] = ray.get(refs[i]), None  # the driver keeps no reference: the store frees it
            if part.sampler.dropped:
                kept = part.sampler.items()
                short.append((i, None if kept is None else kept[1][-1]))
            total.merge(part)
            del part
        merged = total.sampler.items()
        bound = merged[1][-1] if merged is not None and len(merged[1]) >= sample_rows else None
        for i, largest in short:
            if bound is None or largest is None or largest < bound:
                again = ray.get(_scan_task.remote(files, columns, split, parts[i], sample_rows)).sampler.items()
                if again is not None:
                    rows, hashes = again
                    new = hashes > largest if largest is not None else np.ones(len(hashes), bool)
                    total.sampler.offer_table(rows.filter(pa.array(new)), hashes[new])
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, SpecError):
            raise SpecError(exc.cause.field, exc.cause.message) from None
        raise
    return scan_statistics(files, columns, split, max_vocab=max_vocab, min_count=min_count,
                           sample_rows=sample_rows, parts=[total])


def task_sample_rows(sample_rows: int, task_rows: int, total_rows: int) -> int:
    """A task's share of a bottom-k sample of ``sample_rows``, with a margin of six standard deviations.

    >>> task_sample_rows(200_000, 2_000_000, 16_000_000)
    26013
    """
    share = sample_rows * task_rows / max(total_rows, 1)
    return min(sample_rows, int(math.ceil(share + 6 * math.sqrt(share) + 64)))


def ray_stream_dataset(spec: DatasetSpec, seed: int = 0, roots: DataRoots | None = None) -> EncodedDataset:
    """:func:`pipelines.stream.stream_dataset` with the statistics pass on Ray tasks."""
    files, columns = open_parquet(spec, roots)
    stats = scan_on_ray(files, columns, split_rule(spec, files, seed), max_vocab=spec.max_vocabulary,
                        min_count=spec.min_count)
    return streamed_dataset(files, columns, stats)
