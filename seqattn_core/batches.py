"""Encoded arrays -> ``KeyedJaggedTensor`` batches, crosses computed on the fly.

Input is column arrays already in memory (the pipelines read Parquet; this package does no I/O):
dense ``(n, d)`` float32, and per sparse feature a jagged pair ``(values, lengths)`` of ids.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from seqattn_core.crosses import CrossFeature


@dataclass
class Batch:
    """One training batch: dense ``(B, d)``, sparse KJT (features then crosses), labels ``(B,)``."""

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Batch:
        """This batch on ``device`` (itself if it is there already): batches are sliced on the
        CPU, and a model on a GPU trains on CUDA copies of them."""
        if self.labels.device == device:
            return self
        return Batch(self.dense.to(device), self.sparse.to(device), self.labels.to(device))


def first_ids(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One id per row (the first; 0, the out-of-vocabulary id, for an empty row)."""
    lengths = np.asarray(lengths)
    out = np.zeros(len(lengths), dtype=np.int64)
    has = lengths > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out[has] = np.asarray(values)[starts[has]]
    return out


class BatchSource:
    """Slices encoded columns into batches; keys are the features then the crosses.

    Example::

        >>> src = BatchSource(
        ...     dense=np.zeros((3, 1), np.float32),
        ...     sparse={"a": (np.array([1, 2, 0]), np.array([1, 1, 1])),
        ...             "b": (np.array([3, 1, 2]), np.array([1, 1, 1]))},
        ...     labels=np.array([1, 0, 1], np.float32),
        ...     crosses=[CrossFeature("a", "b", buckets=16)], cardinalities={"a": 3, "b": 4})
        >>> batch = next(src.batches(batch_size=2))
        >>> batch.sparse.keys(), batch.sparse["a_X_b"].values().tolist()
        (['a', 'b', 'a_X_b'], [7, 9])
    """

    def __init__(
        self,
        dense: np.ndarray,
        sparse: Mapping[str, tuple[np.ndarray, np.ndarray]],
        labels: np.ndarray,
        crosses: Sequence[CrossFeature] = (),
        cardinalities: Mapping[str, int] | None = None,
        dense_columns: Sequence[int] | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.float32)
        n = len(self.labels)
        dense = np.asarray(dense, dtype=np.float32).reshape(n, -1)
        self.dense = dense if dense_columns is None else np.ascontiguousarray(dense[:, list(dense_columns)])
        cols: dict[str, tuple[np.ndarray, np.ndarray]] = {
            k: (np.asarray(v, dtype=np.int64), np.asarray(lens, dtype=np.int32)) for k, (v, lens) in sparse.items()
        }
        for c in crosses:
            if cardinalities is None:
                raise ValueError("cardinalities: needed to compute crosses")
            ids = c.ids(first_ids(*cols[c.a]), first_ids(*cols[c.b]), cardinalities[c.a], cardinalities[c.b])
            cols[c.name] = (ids, np.ones(n, dtype=np.int32))
        self.keys = list(cols)
        self.values = [cols[k][0] for k in self.keys]
        self.lengths = [cols[k][1] for k in self.keys]
        self.offsets = [np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]) for lens in self.lengths]

    def keep_keys(self, keys: Collection[str]) -> None:
        """Drop every sparse column whose key is not in ``keys``, in place, keeping the others' order.

        A cross reads the ids of its two features, which the model need not keep itself: build the
        source with them, then keep only the model's tables, so a batch's KJT holds exactly those.

            >>> src = BatchSource(np.zeros((2, 0), np.float32),
            ...                   {"a": (np.array([1, 2]), np.array([1, 1])),
            ...                    "b": (np.array([3, 1]), np.array([1, 1]))},
            ...                   np.array([1, 0], np.float32), [CrossFeature("a", "b", buckets=16)], {"a": 3, "b": 4})
            >>> src.keep_keys({"b", "a_X_b"})
            >>> src.keys, src.batch(0, 2).sparse.keys()
            (['b', 'a_X_b'], ['b', 'a_X_b'])
        """
        idx = [i for i, k in enumerate(self.keys) if k in keys]
        self.keys = [self.keys[i] for i in idx]
        self.values = [self.values[i] for i in idx]
        self.lengths = [self.lengths[i] for i in idx]
        self.offsets = [self.offsets[i] for i in idx]

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batch(self, start: int, stop: int) -> Batch:
        values = [v[o[start] : o[stop]] for v, o in zip(self.values, self.offsets)]
        lengths = [lens[start:stop] for lens in self.lengths]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values)) if values else torch.zeros(0, dtype=torch.long),
            lengths=torch.from_numpy(np.concatenate(lengths)) if lengths else torch.zeros(0, dtype=torch.int32),
        )
        return Batch(torch.from_numpy(self.dense[start:stop]), kjt, torch.from_numpy(self.labels[start:stop]))

    def batches(self, batch_size: int, seed: int | None = None) -> Generator[Batch, None, None]:
        """Contiguous batches; with a seed, visited in a shuffled order (rows were shuffled once
        when the split was made, so shuffling batch order is enough and keeps slicing cheap)."""
        starts = np.arange(0, len(self), batch_size)
        if seed is not None:
            np.random.default_rng(seed).shuffle(starts)
        for s in starts:
            yield self.batch(int(s), int(min(s + batch_size, len(self))))


_MIX = (0x9E3779B97F4A7C15 - (1 << 64), 0xBF58476D1CE4E5B9 - (1 << 64), 0x94D049BB133111EB - (1 << 64))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrapping arithmetic; shifts masked to be logical)."""
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX[1]
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX[2]
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def holdout_rows(batch: Batch, fraction: float) -> torch.Tensor:
    """Which rows of ``batch`` are held out: about ``fraction`` of them, chosen by a hash of the
    row's content (its ids per key and its dense values, not its label).

    A row is held out or not the same way in every epoch and whatever batch it falls in, and
    identical rows fall on the same side, so a model that never trains on the held-out rows
    never sees them, nor copies of them. That is what lets a held-out objective train the gates
    on rows the weights never fit (:func:`seqattn_core.training.train`).

    Example::

        >>> src = BatchSource(np.zeros((1000, 0), np.float32), {"a": (np.arange(1000), np.ones(1000))},
        ...                   np.zeros(1000, np.float32))
        >>> mask = holdout_rows(src.batch(0, 1000), 0.2)
        >>> 150 < int(mask.sum()) < 250, bool((mask == holdout_rows(src.batch(0, 1000), 0.2)).all())
        (True, True)
    """
    n = len(batch)
    kjt = batch.sparse
    h = torch.zeros(n, dtype=torch.long)
    lengths = kjt.lengths().long()
    if lengths.numel():
        n_keys = len(kjt.keys())
        segment = torch.repeat_interleave(torch.arange(n_keys * n), lengths)
        key, row = segment // n, segment % n
        h.index_add_(0, row, _mix(kjt.values().long() * _MIX[0] + key + 1))
    if batch.dense.numel():
        bits = batch.dense.float().contiguous().view(torch.int32).long()
        cols = torch.arange(bits.shape[1]) + 1_000_003
        h += _mix(bits * _MIX[0] + cols).sum(dim=1)
    return ((_mix(h) >> 40) & 0xFFFF) < int(round(fraction * 65536))


def split_rows(batch: Batch, mask: torch.Tensor) -> tuple[Batch, Batch]:
    """``batch`` cut in two: the rows where ``mask`` is False, then those where it is True.

        >>> src = BatchSource(np.zeros((3, 1), np.float32), {"a": (np.array([5, 6, 7, 8]), np.array([1, 2, 1]))},
        ...                   np.array([0, 1, 0], np.float32))
        >>> rest, held = split_rows(src.batch(0, 3), torch.tensor([False, True, False]))
        >>> rest.sparse["a"].values().tolist(), held.sparse["a"].values().tolist(), len(held)
        ([5, 8], [6, 7], 1)
    """
    kjt = batch.sparse
    lengths = kjt.lengths()
    per_key = mask.repeat(len(kjt.keys()))
    by_value = torch.repeat_interleave(per_key, lengths.long())

    def part(rows: torch.Tensor, key_rows: torch.Tensor, values: torch.Tensor) -> Batch:
        sparse = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=kjt.values()[values],
                                                     lengths=lengths[key_rows])
        return Batch(batch.dense[rows], sparse, batch.labels[rows])

    return part(~mask, ~per_key, ~by_value), part(mask, per_key, by_value)
