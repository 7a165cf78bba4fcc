"""The LEM: KJT in, gated KeyedTensor out; gates in three spaces; budgets; state round trip."""

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor, KeyedTensor

from seqattn_core.batches import BatchSource
from seqattn_core.crosses import CrossFeature
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SelectionConfig, SparseFeature


def _kjt(keys, n=4, card=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.randint(0, card, (len(keys) * n,), generator=g),
        lengths=torch.ones(len(keys) * n, dtype=torch.int32))


CFG = LEMConfig(dense=("d0", "d1"), sparse=(SparseFeature("a", 10), SparseFeature("b", 10), SparseFeature("c", 10)),
                crosses=(CrossFeature("a", "b", 100),), embedding_dim=16, hidden=(8,))


def test_embeddings_are_a_keyed_tensor_with_mixed_dims():
    cfg = LEMConfig(dense=(), sparse=(SparseFeature("a", 10), SparseFeature("b", 10)), embedding_dims={"a": 4, "b": 12})
    kt = LargeEmbeddingModel(cfg).embeddings(_kjt(["a", "b"]))
    assert isinstance(kt, KeyedTensor)
    assert kt["a"].shape == (4, 4) and kt["b"].shape == (4, 12)


def test_dimension_blocks_gate_only_their_columns_and_start_idle():
    sel = SelectionConfig(features=None, dim_choices=(4, 8, 16))
    model = LargeEmbeddingModel(CFG, sel)
    kjt = _kjt(["a", "b", "c", "a_X_b"])
    raw = model.ebc(kjt)
    assert torch.allclose(model.embeddings(kjt).values(), raw.values())  # idle before its stage: gates 1
    model.stage.fill_(1)
    model.dim_attention.warming.fill_(False)
    gated = model.embeddings(kjt)
    for key in ["a", "b", "c", "a_X_b"]:
        assert torch.allclose(gated[key][:, :4], raw[key][:, :4])  # the mandatory first block is never gated
        assert not torch.allclose(gated[key][:, 4:], raw[key][:, 4:])


def test_feature_gates_scale_whole_embeddings_and_dense_columns():
    model = LargeEmbeddingModel(CFG, SelectionConfig(features=2, warmup=0.0))
    kjt = _kjt(["a", "b", "c", "a_X_b"])
    raw, gated = model.ebc(kjt), model.embeddings(kjt)
    g = model.feature_attention().detach()
    assert torch.allclose(gated["b"], raw["b"] * g[3])  # index: 2 dense columns first
    assert torch.allclose(gated["a_X_b"], raw["a_X_b"])  # crosses are not feature-gated


def _planted(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    ids = {k: rng.integers(0, 20, n) for k in ("good", "noise1", "noise2", "noise3")}
    logit = np.where(ids["good"] < 10, 2.0, -2.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = rng.normal(size=(n, 1)).astype(np.float32)
    return BatchSource(dense, {k: (v, np.ones(n, np.int32)) for k, v in ids.items()}, y)


def _train(model, source, steps_per_epoch_batch=256, epochs=3):
    from seqattn_core.training import train
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, model, opt, lambda e: source.batches(steps_per_epoch_batch, seed=e),
          source.num_batches(steps_per_epoch_batch), epochs, gate_optimizer=opt)


def test_memory_budget_is_never_exceeded_and_state_survives():
    torch.manual_seed(0)
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "noise1", "noise2", "noise3")),
                    embedding_dim=16, hidden=(16,))
    budget = 2 * 20 * 4 * 4 + 20 * 4 * 4  # room for the mandatory blocks of 2 tables plus a little
    sel = SelectionConfig(features=3, dim_choices=(4, 8, 16), max_embedding_bytes=budget)
    model = LargeEmbeddingModel(cfg, sel)
    _train(model, _planted())
    assert model.config.sparse[model.kept_features()[0] - 1].name in {"good"} or 0 in model.kept_features()
    dims = model.chosen_dims()
    used = sum(20 * d * 4 for d in dims.values())
    assert used <= budget
    fresh = LargeEmbeddingModel(cfg, sel)
    fresh.load_state_dict(model.state_dict())
    assert fresh.kept_features() == model.kept_features() and fresh.chosen_dims() == dims


def _planted_with_pair(n=6000, seed=0):
    """``good`` matters alone, ``a`` and ``b`` only through their XOR; a noise dense column."""
    rng = np.random.default_rng(seed)
    ids = {k: rng.integers(0, 20, n) for k in ("good", "a", "b", "noise")}
    logit = np.where(ids["good"] < 10, 1.5, -1.5) + np.where((ids["a"] < 10) ^ (ids["b"] < 10), 1.5, -1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = rng.normal(size=(n, 1)).astype(np.float32)
    return BatchSource(dense, {k: (v, np.ones(n, np.int32)) for k, v in ids.items()}, y,
                       crosses=(CrossFeature("a", "b", 400),), cardinalities={k: 20 for k in ids})


PAIR_CFG = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "a", "b", "noise")),
                     crosses=(CrossFeature("a", "b", 400),), embedding_dim=16, hidden=(16,))


def _choice(budget):
    torch.manual_seed(0)
    sel = SelectionConfig(features=2, crosses=1, dim_choices=(4, 8, 16), max_embedding_bytes=budget, reference_dim=8)
    model = LargeEmbeddingModel(PAIR_CFG, sel)
    _train(model, _planted_with_pair(), epochs=2)
    rows = {**{f.name: 20 for f in PAIR_CFG.sparse}, "a_X_b": 400}
    dims = model.chosen_dims()
    return model.kept_features(), model.kept_crosses(), dims, sum(rows[t] * d * 4 for t, d in dims.items())


def test_a_memory_budget_that_does_not_bind_keeps_the_unbudgeted_choice():
    free = _choice(None)
    assert free[3] > 0
    assert _choice(free[3]) == free  # met exactly: never binds
    assert _choice(free[3] * 50) == free


def test_features_and_crosses_share_one_memory_budget():
    # Room for the cross's smallest width or for features, not for both: each race alone would fit.
    budget = 400 * 4 * 4 + 100
    kept, crosses, dims, used = _choice(budget)
    assert used <= budget
    assert len(kept) >= 1


def test_first_pick_is_the_informative_feature():
    torch.manual_seed(0)
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "noise1", "noise2", "noise3")),
                    embedding_dim=8, hidden=(16,))
    model = LargeEmbeddingModel(cfg, SelectionConfig(features=2))
    _train(model, _planted())
    assert model.kept_features()[0] == 1  # "good" (index 0 is the dense column)


def test_dimension_search_needs_every_table_at_the_largest_choice():
    with pytest.raises(ValueError, match="largest choice"):
        LargeEmbeddingModel(CFG, SelectionConfig(features=None, dim_choices=(4, 8)))


AUTOINT = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "noise1", "noise2", "noise3")),
                    embedding_dims={"good": 8, "noise1": 4}, embedding_dim=16, hidden=(16,), interaction="autoint",
                    attention_heads=4, head_dim=4)


def test_autoint_takes_mixed_widths_and_head_race_keeps_exactly_k_heads():
    torch.manual_seed(0)
    model = LargeEmbeddingModel(AUTOINT, SelectionConfig(features=None, keep_heads=2))
    kjt = _kjt(["good", "noise1", "noise2", "noise3"], card=20)
    assert model(torch.rand(4, 1), kjt).shape == (4,)
    _train(model, _planted())
    kept = model.kept_heads()
    assert len(kept) == 2 and len(set(kept)) == 2
    gates = model.head_attention().detach()
    assert gates[kept].tolist() == [1.0, 1.0] and gates.sum() == 2.0  # dropped heads contribute nothing
    fresh = LargeEmbeddingModel(AUTOINT, SelectionConfig(features=None, keep_heads=2))
    fresh.load_state_dict(model.state_dict())
    fresh.eval(), model.eval()
    assert fresh.kept_heads() == kept
    assert torch.allclose(fresh(torch.rand(4, 1).zero_(), kjt), model(torch.zeros(4, 1), kjt))


def test_head_race_needs_autoint():
    with pytest.raises(ValueError, match="^keep_heads:"):
        LargeEmbeddingModel(CFG, SelectionConfig(features=None, keep_heads=1))


def test_a_forward_pass_prints_no_torch_fx_note():
    import subprocess
    import sys
    code = ("import torch; from test_lem import CFG, _kjt; from seqattn_core.lem import LargeEmbeddingModel; "
            "LargeEmbeddingModel(CFG)(torch.rand(4, 2), _kjt(['a', 'b', 'c', 'a_X_b']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=__import__("pathlib").Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert "is_fx_tracing" not in out.stderr


def test_held_out_gates_still_find_the_informative_feature():
    torch.manual_seed(0)
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "noise1", "noise2", "noise3")),
                    embedding_dim=8, hidden=(16,))
    model = LargeEmbeddingModel(cfg, SelectionConfig(features=2, gate_holdout=0.2))
    _train(model, _planted())
    assert model.kept_features()[0] == 1


def test_the_gate_step_takes_the_logits_gradient_from_the_held_out_rows_only():
    from seqattn_core.batches import holdout_rows, split_rows
    from seqattn_core.training import gate_step

    torch.manual_seed(0)
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(k, 20) for k in ("good", "noise1")), embedding_dim=4,
                    hidden=(8,))
    model = LargeEmbeddingModel(cfg, SelectionConfig(features=2, warmup=0.0))
    src = _planted()
    src.keep_keys({"good", "noise1"})
    batch = src.batch(0, 512)
    rest, held = split_rows(batch, holdout_rows(batch, 0.3))
    assert 0 < len(held) < len(rest) and len(held) + len(rest) == 512
    logits = model.feature_attention.logits
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(rest.dense, rest.sparse), rest.labels)
    loss.backward()
    from_rest = logits.grad.clone()
    gate_step(model, held)
    expected, = torch.autograd.grad(
        torch.nn.functional.binary_cross_entropy_with_logits(model(held.dense, held.sparse), held.labels), [logits])
    assert torch.allclose(logits.grad, expected) and not torch.allclose(logits.grad, from_rest)
