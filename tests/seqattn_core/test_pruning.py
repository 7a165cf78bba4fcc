"""SequentialAttention++ block pruning: the schedule, the optimizer reset, BSR inference, save/load."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from seqattn_core.batches import BatchSource
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SparseFeature
from seqattn_core.pruning import BlockSparseLinear, BlockSparsifier, PruningConfig
from seqattn_core.training import train


@pytest.mark.parametrize("cycles", [1, 2, 3])
def test_sparsity_at_every_phase_boundary(cycles):
    cfg = PruningConfig(sparsity=0.9, cycles=cycles)
    phases = cfg.phases()
    assert [k for k, _, _ in phases] == ["dense", "sparsify", "sparse"] * cycles
    assert phases[0][1] == 0.0 and phases[-1][2] == 1.0
    assert all(math.isclose(a[2], b[1]) for a, b in zip(phases, phases[1:]))  # contiguous
    for kind, start, end in phases:
        mid = (start + end) / 2
        if kind == "dense":  # a shared boundary belongs to the sparse phase before it
            assert cfg.sparsity_at(start + 1e-9) == 0.0 and cfg.sparsity_at(mid) == 0.0
        elif kind == "sparsify":
            assert cfg.sparsity_at(start) == pytest.approx(0.0)
            assert cfg.sparsity_at(end) == pytest.approx(0.9)  # reached exactly at the phase end
            expected = 0.9 * (1 - math.exp(-2)) / (1 - math.exp(-4))  # t = 1/2 on the exponential ramp
            assert cfg.sparsity_at(mid) == pytest.approx(expected)
        else:
            assert cfg.sparsity_at(start) == 0.9 and cfg.sparsity_at(end) == 0.9


@pytest.mark.parametrize("method, rank_by", [("attention", "weight"), ("attention", "logits"), ("magnitude", "weight")])
def test_masks_follow_the_schedule_and_small_layers_stay_dense(method, rank_by):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
    cfg = PruningConfig(sparsity=0.9, block=8, method=method, rank_by=rank_by)
    sparsifier = BlockSparsifier.wrap(mlp, cfg)
    assert [type(m) for m in mlp] == [BlockSparseLinear, nn.ReLU, nn.Linear]  # 64 -> 1 has 8 tiles: dense
    for kind, start, end in cfg.phases():
        sparsifier.update(start + 1e-9)
        sparsifier.update(end)
        want = 0.0 if kind == "dense" else 0.9
        assert sparsifier.block_sparsity() == pytest.approx(want, abs=1 / 128), (kind, end)


def test_pruned_tiles_are_exactly_zero_and_dense_phase_restarts_them_from_zero():
    torch.manual_seed(0)
    layer = BlockSparseLinear(nn.Linear(64, 64), block=8, method="magnitude")
    layer.prune_to(0.75)
    w = layer.effective_weight().detach()
    pruned = ~layer.mask.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.all(w[pruned] == 0) and torch.all(w[~pruned] != 0)
    layer.release()
    assert layer.mask.all() and torch.all(layer.linear.weight[pruned] == 0)


def test_logit_ranking_keeps_the_largest_logits_and_never_brings_a_cut_tile_back():
    torch.manual_seed(0)
    layer = BlockSparseLinear(nn.Linear(64, 64), block=8, method="attention", rank_by="logits")  # 8 x 8 tiles
    with torch.no_grad():
        layer.attention.logits.copy_(torch.randn(8, 8) * 0.1)
        layer.linear.weight[:8, :8] *= 100  # the largest tile by norm, with the smallest logit
        layer.attention.logits[0, 0] = -1.0
    layer.prune_to(0.5)
    top = torch.argsort(layer.attention.logits.flatten(), descending=True)[:32]
    assert set(layer.mask.flatten().nonzero().flatten().tolist()) == set(top.tolist())
    assert not layer.mask[0, 0]  # ranking by weight would have kept it first
    cut = (~layer.mask).nonzero()[0]
    with torch.no_grad():
        layer.attention.logits[tuple(cut)] = 10.0  # a cut tile's logit rises above every kept one
    layer.prune_to(0.75)
    assert not layer.mask[tuple(cut)] and layer.block_sparsity() == 0.75
    # Equal logits (as after a reset): the weight's norm breaks the tie.
    layer.release()
    with torch.no_grad():
        layer.attention.logits.zero_()
        layer.linear.weight[:8, :8] = torch.randn(8, 8) * 100
    layer.prune_to(63 / 64)
    assert layer.mask[0, 0]


def test_logit_ranking_gets_sgd_like_logits_unless_told_otherwise():
    assert (PruningConfig(sparsity=0.5).logit_lr_scale, PruningConfig(sparsity=0.5).logit_eps) == (1.0, 1e-8)
    by_logits = PruningConfig(sparsity=0.5, rank_by="logits")
    assert (by_logits.logit_lr_scale, by_logits.logit_eps) == (100.0, 1e-3)
    own = PruningConfig(sparsity=0.5, rank_by="logits", logit_lr_scale=3.0, logit_eps=1e-6)
    assert (own.logit_lr_scale, own.logit_eps) == (3.0, 1e-6)


@pytest.mark.parametrize("logits", ["reset", "carry"])
def test_phase_boundaries_fold_the_attention_so_the_layer_computes_the_same(logits):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    cfg = PruningConfig(sparsity=0.75, block=8, min_blocks=16, logits=logits)
    sparsifier = BlockSparsifier.wrap(mlp, cfg)
    x = torch.randn(16, 64)
    for kind, start, end in cfg.phases()[1:]:
        for layer in sparsifier.layers:  # as if the logits had trained during the phase before
            layer.attention.logits.data.normal_()
        before = [layer.attention.logits.clone() for layer in sparsifier.layers]
        y = mlp(x)
        # a phase that starts at a boundary shared with the one before: the sparsify phase owns its
        # start, the other phases begin just after it
        assert sparsifier.update(start if kind == "sparsify" else start + 1e-9)
        assert torch.allclose(mlp(x), y, atol=1e-5), kind
        for layer, old in zip(sparsifier.layers, before):
            carried = logits == "carry" and kind == "sparsify"
            assert torch.equal(layer.attention.logits, old if carried else torch.zeros_like(old)), kind
        sparsifier.update(end - 1e-9 if kind == "dense" else end)  # a dense phase does not own its end
    assert sparsifier.block_sparsity() == pytest.approx(0.75)

def _planted(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    ids = {k: rng.integers(0, 20, n) for k in ("a", "b")}
    y = (rng.random(n) < np.where(ids["a"] < 10, 0.8, 0.2)).astype(np.float32)
    return BatchSource(rng.normal(size=(n, 1)).astype(np.float32),
                       {k: (v, np.ones(n, np.int32)) for k, v in ids.items()}, y)


CFG = LEMConfig(dense=("d",), sparse=(SparseFeature("a", 20), SparseFeature("b", 20)), embedding_dim=8,
                hidden=(128, 64))


def _trained(pruning, epochs=2):
    torch.manual_seed(0)
    model = LargeEmbeddingModel(CFG, None, pruning=pruning)
    source = _planted()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, model, opt, lambda e: source.batches(200, seed=e), source.num_batches(200), epochs, gate_optimizer=opt)
    return model, opt, source


def test_optimizer_state_restarts_at_the_last_phase_boundary():
    pruning = PruningConfig(sparsity=0.8, block=8)
    model, opt, source = _trained(pruning)
    total = source.num_batches(200) * 2
    last_start = pruning.phases()[-1][1]
    first_step_of_last_phase = next(s for s in range(1, total + 1) if s / total > last_start)
    pruned_weight = model.pruner.layers[0].linear.weight
    untouched = model.cross.v[0].weight
    assert int(opt.state[untouched]["step"]) == total
    assert int(opt.state[pruned_weight]["step"]) == total - first_step_of_last_phase
    assert model.pruner.block_sparsity() == pytest.approx(0.8, abs=0.01)


def test_pruned_model_round_trips_through_save_and_load_and_bsr_inference():
    pruning = PruningConfig(sparsity=0.75, block=8)
    model, _, source = _trained(pruning, epochs=1)
    model.eval()
    batch = source.batch(0, 64)
    expected = model(batch.dense, batch.sparse)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = LargeEmbeddingModel(CFG, None, pruning=pruning)
    fresh.load_state_dict(torch.load(buffer))
    fresh.eval()
    assert int(fresh.pruner.phase) == int(model.pruner.phase)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(fresh.pruner.layers, model.pruner.layers))
    assert torch.allclose(fresh(batch.dense, batch.sparse), expected)

    layer = model.pruner.layers[0]
    fast = layer.to_inference()
    assert fast.weight.layout == torch.sparse_bsr
    assert fast.weight.values().shape[0] == int(layer.mask.sum())  # only the kept tiles are stored
    x = torch.randn(32, layer.linear.in_features)
    assert torch.allclose(fast(x), layer(x), atol=1e-5)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    assert torch.allclose(torch.load(buffer, weights_only=False)(x), layer(x), atol=1e-5)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="^sparsity:"):
        PruningConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="^method:"):
        PruningConfig(sparsity=0.5, method="random")
    with pytest.raises(ValueError, match="^weight_decay:"):
        PruningConfig(sparsity=0.5, weight_decay=-1e-3)
    with pytest.raises(ValueError, match="^logit_lr_scale:"):
        PruningConfig(sparsity=0.5, logit_lr_scale=0.0)
    with pytest.raises(ValueError, match="^logits:"):
        PruningConfig(sparsity=0.5, logits="keep")
    with pytest.raises(ValueError, match="^rank_by:"):
        PruningConfig(sparsity=0.5, rank_by="norm")
    with pytest.raises(ValueError, match="^logit_eps:"):
        PruningConfig(sparsity=0.5, logit_eps=0.0)


def test_weight_decay_penalises_only_the_pruned_weights_and_trains_them_smaller():
    mlp = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
    sparsifier = BlockSparsifier.wrap(mlp, PruningConfig(sparsity=0.5, block=8, weight_decay=1e-3))
    expected = 1e-3 * sparsifier.layers[0].linear.weight.pow(2).sum()
    assert torch.allclose(sparsifier.penalty(), expected)  # the 64 -> 1 layer is left dense and unpenalised
    assert BlockSparsifier.wrap(nn.Sequential(nn.Linear(128, 64)), PruningConfig(sparsity=0.5)).penalty() == 0.0

    norms = {}
    for wd in (0.0, 1e-2):
        model, _, _ = _trained(PruningConfig(sparsity=0.5, block=8, weight_decay=wd), epochs=1)
        norms[wd] = float(sum(layer.linear.weight.norm() for layer in model.pruner.layers))
    assert norms[1e-2] < 0.9 * norms[0.0]
