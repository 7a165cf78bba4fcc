"""The optimizers that ``place`` builds around a model (a world of one, CPU)."""

import pytest
import torch

from pipelines.engine import DENSE_LR_SCALE, GATE_LR_SCALE, place
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SelectionConfig, SparseFeature
from seqattn_core.pruning import BlockAttention, PruningConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tile_logits_feature_gates_and_towers_each_get_their_own_rate():
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(f"s{i}", 40) for i in range(3)), embedding_dim=8,
                    hidden=(128, 64))
    model = LargeEmbeddingModel(cfg, SelectionConfig(features=2), device=torch.device("meta"),
                                pruning=PruningConfig(sparsity=0.9, logit_lr_scale=3.0))
    placed = place(model, 0.01)
    rate = {id(p): group["lr"] for group in placed.optimizer.param_groups for p in group["params"]}
    tiles = [m.logits for m in model.modules() if isinstance(m, BlockAttention)]
    assert tiles and all(rate[id(p)] == pytest.approx(0.03) for p in tiles)
    assert rate[id(model.feature_attention.logits)] == pytest.approx(0.01 * GATE_LR_SCALE)
    assert rate[id(model.pruner.layers[0].linear.weight)] == pytest.approx(0.01 * DENSE_LR_SCALE)
    assert len(rate) == sum(1 for n, _ in placed.model.named_parameters() if "ebc." not in n)
