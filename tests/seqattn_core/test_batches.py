"""Batches: encoded columns sliced into KJT batches, and moved to the model's device."""

import numpy as np
import torch

from seqattn_core.batches import BatchSource, holdout_rows


def test_a_batch_moves_whole_to_another_device_and_stays_put_on_its_own():
    batch = BatchSource(np.ones((4, 1), np.float32), {"a": (np.array([1, 2, 3, 0]), np.ones(4, np.int32))},
                        np.array([1, 0, 1, 0], np.float32)).batch(0, 4)
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))  # any device but the CPU: a GPU one on a GPU host
    parts = (moved.dense, moved.labels, moved.sparse.values(), moved.sparse.lengths())
    assert {t.device.type for t in parts} == {"meta"}
    assert moved.sparse.keys() == ["a"] and len(moved) == 4


def test_held_out_rows_follow_the_content_not_the_position():
    n = 4000
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, n)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    src = BatchSource(dense, {"a": (ids, np.ones(n, np.int32))}, np.zeros(n, np.float32))
    mask = holdout_rows(src.batch(0, n), 0.2)
    assert 0.17 < float(mask.float().mean()) < 0.23
    # The same rows in another order and other batches: the same verdict row by row.
    perm = rng.permutation(n)
    shuffled = BatchSource(dense[perm], {"a": (ids[perm], np.ones(n, np.int32))}, np.ones(n, np.float32))
    again = torch.cat([holdout_rows(b, 0.2) for b in shuffled.batches(333)])
    assert bool((again == mask[torch.as_tensor(perm)]).all())
    assert not bool(holdout_rows(src.batch(0, n), 0.0).any())
