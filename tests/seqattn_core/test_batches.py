"""Batches: encoded columns sliced into KJT batches, and moved to the model's device."""

import numpy as np
import torch

from seqattn_core.batches import BatchSource


def test_a_batch_moves_whole_to_another_device_and_stays_put_on_its_own():
    batch = BatchSource(np.ones((4, 1), np.float32), {"a": (np.array([1, 2, 3, 0]), np.ones(4, np.int32))},
                        np.array([1, 0, 1, 0], np.float32)).batch(0, 4)
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))  # any device but the CPU: a GPU one on a GPU host
    parts = (moved.dense, moved.labels, moved.sparse.values(), moved.sparse.lengths())
    assert {t.device.type for t in parts} == {"meta"}
    assert moved.sparse.keys() == ["a"] and len(moved) == 4
