"""The optimizers that ``place`` builds around a model (a world of one, CPU)."""

import numpy as np
import pytest
import torch

from pipelines import engine
from pipelines.engine import DENSE_LR_SCALE, GATE_LR_SCALE, place
from seqattn_core.batches import BatchSource
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
    eps = {id(p): group["eps"] for group in placed.optimizer.param_groups for p in group["params"]}
    assert tiles and all(rate[id(p)] == pytest.approx(0.03) and eps[id(p)] == 1e-8 for p in tiles)
    assert rate[id(model.feature_attention.logits)] == pytest.approx(0.01 * GATE_LR_SCALE)
    assert rate[id(model.pruner.layers[0].linear.weight)] == pytest.approx(0.01 * DENSE_LR_SCALE)
    assert len(rate) == sum(1 for n, _ in placed.model.named_parameters() if "ebc." not in n)


def test_tile_logits_ranked_by_their_value_take_sgd_like_steps():
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(f"s{i}", 40) for i in range(3)), embedding_dim=8,
                    hidden=(128, 64))
    model = LargeEmbeddingModel(cfg, None, device=torch.device("meta"),
                                pruning=PruningConfig(sparsity=0.9, rank_by="logits"))
    placed = place(model, 0.01)
    tiles = {id(m.logits) for m in model.modules() if isinstance(m, BlockAttention)}
    groups = [g for g in placed.optimizer.param_groups if any(id(p) in tiles for p in g["params"])]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == tiles
    assert groups[0]["lr"] == pytest.approx(1.0) and groups[0]["eps"] == 1e-3


def _table_weights(placed):
    out = {}
    for name, value in placed.forward.state_dict().items():
        if name.startswith("ebc.") and name.endswith(".weight"):
            shards = value.local_shards() if hasattr(value, "local_shards") else None
            out[name] = (shards[0].tensor if shards else value).detach().clone()
    return out


@pytest.mark.parametrize("planner", [True, False], ids=["planner", "direct plan"])
def test_one_step_trains_every_table_small_or_large(planner, monkeypatch):
    """A small table must train like a large one (the planner once replicated small tables with a
    kernel that no optimizer stepped, so they kept their initial rows); so must every table of a
    world of one with more tables than the planner is given (here: more than none)."""
    if not planner:
        monkeypatch.setattr(engine, "PLANNER_MAX_TABLES", 0)

        def no_planner(*args, **kwargs):
            raise AssertionError("the planner ran on a world of one past PLANNER_MAX_TABLES")

        monkeypatch.setattr(engine, "EmbeddingShardingPlanner", no_planner)
    cfg = LEMConfig(dense=(), sparse=(SparseFeature("small", 8), SparseFeature("large", 100_000)), embedding_dim=16)
    torch.manual_seed(0)
    placed = place(LargeEmbeddingModel(cfg, None, device=torch.device("meta")), 0.01)
    rng = np.random.default_rng(0)
    n = 256
    sparse = {name: (rng.integers(0, size, n), np.ones(n, np.int32)) for name, size in (("small", 8), ("large", 100_000))}
    batch = BatchSource(np.zeros((n, 0), np.float32), sparse, (rng.random(n) < 0.5).astype(np.float32)).batch(0, n)
    before = _table_weights(placed)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(placed.forward(batch.dense, batch.sparse), batch.labels)
    placed.optimizer.zero_grad()
    loss.backward()
    placed.optimizer.step()
    after = _table_weights(placed)
    assert len(before) == 2
    for name in before:
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    shardings = placed.plan.plan["ebc"].values()
    assert {s.sharding_type for s in shardings} <= ({"table_wise", "column_wise"} if planner else {"table_wise"})
    assert all(s.ranks == [0] and s.compute_kernel == "fused" for s in shardings)
