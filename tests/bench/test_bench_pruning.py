"""bench.pruning's helpers on a small placed LEM (a world of one, CPU)."""

import numpy as np
import pytest
import torch

from bench.pruning import kept_by_input
from pipelines.engine import place
from seqattn_core.batches import BatchSource
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SparseFeature
from seqattn_core.pruning import PruningConfig


def _model(**config):
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(f"s{i}", 40) for i in range(3)), embedding_dim=16,
                    hidden=(128, 64), **config)
    model = LargeEmbeddingModel(cfg, None, device=torch.device("meta"), pruning=PruningConfig(sparsity=0.9))
    place(model, 0.01)
    rng = np.random.default_rng(0)
    sparse = {f"s{i}": (rng.integers(0, 40, 32), np.ones(32, np.int32)) for i in range(3)}
    batch = BatchSource(rng.random((32, 1), dtype=np.float32), sparse, np.zeros(32, np.float32)).batch(0, 32)
    return model, batch


def test_kept_tiles_are_counted_by_the_input_their_columns_read():
    model, batch = _model()
    layer = model.pruner.layers[0]  # input: the dense projection (16 columns), then 3 embeddings of 16
    assert layer.mask.shape == (16, 8)
    layer.mask.zero_()
    layer.mask[:5, 1] = True   # the dense projection's second tile column
    layer.mask[2, 2:8] = True  # one tile on every embedding column
    counts = kept_by_input(model, batch.sparse)
    assert counts == {"dense": 5, "s0": 2, "s1": 2, "s2": 2}


def test_autoint_towers_are_refused():
    model, batch = _model(interaction="autoint", attention_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="heads"):
        kept_by_input(model, batch.sparse)
