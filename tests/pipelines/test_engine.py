"""The sharding plan and the optimizers that ``place`` builds around a model (CPU and gloo; on a GPU
host the world-of-one tests run on CUDA with NCCL)."""

import doctest
import multiprocessing as mp

import numpy as np
import pytest
import torch

from pipelines import engine
from pipelines.engine import DENSE_LR_SCALE, GATE_LR_SCALE, Placed, place
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
            if hasattr(value, "local_shards"):  # a ShardedTensor: only the shards this rank holds
                if not value.local_shards():
                    continue
                value = value.local_shards()[0].tensor
            out[name] = value.detach().clone()
    return out


def _place_and_step(sizes: dict[str, int], seed: int) -> tuple[Placed, list[str]]:
    """Place a LEM with one table per ``sizes`` entry, train one step on random ids, and return the
    placed model with the tables whose local rows changed (those this rank holds)."""
    cfg = LEMConfig(dense=(), sparse=tuple(SparseFeature(n, s) for n, s in sizes.items()), embedding_dim=8)
    torch.manual_seed(0)
    placed = place(LargeEmbeddingModel(cfg, None, device=torch.device("meta")), 0.01)
    rng = np.random.default_rng(seed)
    n = 256
    sparse = {name: (rng.integers(0, size, n), np.ones(n, np.int32)) for name, size in sizes.items()}
    batch = BatchSource(np.zeros((n, 0), np.float32), sparse, (rng.random(n) < 0.5).astype(np.float32)).batch(0, n)
    batch = batch.to(engine.device())
    before = _table_weights(placed)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(placed.forward(batch.dense, batch.sparse), batch.labels)
    placed.optimizer.zero_grad()
    loss.backward()
    placed.optimizer.step()
    after = _table_weights(placed)
    return placed, sorted(k.split(".")[-2].removeprefix("t_") for k in before if not torch.equal(before[k], after[k]))


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
    placed, trained = _place_and_step({"small": 8, "large": 100_000}, seed=0)
    assert trained == ["large", "small"], "every table must train"
    shardings = placed.plan.plan["ebc"].values()
    assert {s.sharding_type for s in shardings} <= (set(engine.sharding_types(engine.device().type)) if planner
                                                    else {"table_wise"})
    assert all(s.ranks == [0] and s.compute_kernel == "fused" for s in shardings)


def test_balanced_ranks_puts_the_largest_tables_first_on_the_emptiest_rank():
    sizes = {f"t{i}": size for i, size in enumerate([100, 90, 50, 40, 30, 5, 5, 1])}
    ranks = engine.balanced_ranks(sizes, world=3)
    load = [sum(sizes[n] for n, r in ranks.items() if r == rank) for rank in range(3)]
    assert sorted(load) == [100, 101, 120] and ranks["t0"] == 0 and ranks["t1"] == 1
    assert engine.balanced_ranks(sizes, world=1) == dict.fromkeys(sizes, 0)
    assert engine.balanced_ranks(dict(reversed(sizes.items())), world=3) == ranks  # same plan on every worker
    assert doctest.testmod(engine).failed == 0


SIZES = {"big": 50_000, "a": 5_000, "b": 3_000, "c": 2_000, "d": 8}


def _run_ranks(target, world: int, store_path: str) -> dict[int, object]:
    """``target(rank, world, store_path, queue)`` in ``world`` spawned gloo ranks: what each put on the queue."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, world, store_path, out)) for rank in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            rank, result = out.get(timeout=180)
            results[rank] = result
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


def _direct_plan_worker(rank: int, world: int, store_path: str, out: "mp.Queue") -> None:
    """One of two gloo ranks: place a model past PLANNER_MAX_TABLES, train one step, report."""
    torch.set_num_threads(1)
    engine.device = lambda: torch.device("cpu")  # gloo's CPU path, on a GPU host too
    engine.PLANNER_MAX_TABLES = 0
    engine.EmbeddingShardingPlanner = None  # calling it would fail: past the threshold the planner must not run
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store_path, world), rank=rank,
                                         world_size=world)
    try:
        placed, trained = _place_and_step(SIZES, seed=rank)
        plan = {k.removeprefix("t_"): (s.sharding_type, s.ranks, s.compute_kernel)
                for k, s in placed.plan.plan["ebc"].items()}
        out.put((rank, (plan, trained)))
    except Exception as err:  # reported, so the test fails at once instead of waiting on the queue
        out.put((rank, (repr(err), None)))
    finally:
        torch.distributed.destroy_process_group()


def test_direct_plan_spreads_whole_tables_over_two_workers(tmp_path):
    """Past PLANNER_MAX_TABLES a world of two gets the direct plan (no planner): whole tables
    balanced over the ranks, a table larger than a rank's share split over both; every shard trains."""
    results = _run_ranks(_direct_plan_worker, 2, str(tmp_path / "store"))
    # "big" holds 5/6 of the parameters, more than a rank's fair share: split column-wise over both
    # ranks. The rest go whole: 5,000 rows | 3,000 + 2,000; the 8-row table to the emptier rank 0.
    expected = {"big": ("column_wise", [0, 1]), "a": ("table_wise", [0]), "b": ("table_wise", [1]),
                "c": ("table_wise", [1]), "d": ("table_wise", [0])}
    assert sorted(results) == [0, 1]
    for rank, (plan, trained) in results.items():
        assert trained is not None, plan
        assert {name: (kind, ranks) for name, (kind, ranks, _) in plan.items()} == expected
        assert {kernel for _, _, kernel in plan.values()} == {"fused"}
        assert trained == sorted(n for n, (_, ranks) in expected.items() if rank in ranks)


# In the order two ranks' sharded output lists them (rank 0's tables first): the DCN tower reads the
# pooled embeddings in that order, so one rank and two then feed the same weights the same columns.
HELD_SIZES = {"noise_a": 400, "noise_b": 30, "signal": 50}


def _held_out_gate_grads(rank: int, world: int, store_path: str, out: "mp.Queue") -> None:
    """One of ``world`` gloo ranks: train two steps of a gated LEM with held-out gates on this rank's
    share of two global batches of 512 rows; report the gate logits' gradient after each step."""
    from seqattn_core.training import train

    torch.set_num_threads(1)
    engine.device = lambda: torch.device("cpu")
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store_path, world), rank=rank,
                                         world_size=world)
    try:
        rng = np.random.default_rng(0)  # the same global rows on every rank
        n = 1024
        sparse = {name: (rng.integers(0, size, n), np.ones(n, np.int32)) for name, size in HELD_SIZES.items()}
        labels = ((sparse["signal"][0] % 2) ^ (rng.random(n) < 0.2)).astype(np.float32)
        source = BatchSource(np.zeros((n, 0), np.float32), sparse, labels)
        share = 512 // world
        cfg = LEMConfig(dense=(), sparse=tuple(SparseFeature(k, s) for k, s in HELD_SIZES.items()), embedding_dim=8)
        torch.manual_seed(0)
        model = LargeEmbeddingModel(cfg, SelectionConfig(features=1, warmup=0.0, gate_holdout=0.25),
                                    device=torch.device("meta"))
        placed = place(model, 0.05)
        _same_weights(placed)
        grads = []
        train(placed.forward, placed.model, placed.optimizer,
              lambda e: (source.batch(i * 512 + rank * share, i * 512 + (rank + 1) * share) for i in range(2)),
              2, 1, gate_optimizer=placed.optimizer,
              on_step=lambda ev: ev.epoch_end or grads.append(model.feature_attention.logits.grad.clone().tolist()))
        out.put((rank, grads))
    except Exception as err:
        out.put((rank, repr(err)))
    finally:
        torch.distributed.destroy_process_group()


def _same_weights(placed: Placed) -> None:
    """Set every weight to a function of its global position, so that one worker and two start
    alike: each rank initialises its own shards from its own generator otherwise."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(placed.model.named_parameters()):
            if "ebc." not in name and not name.endswith("logits"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for name, value in placed.forward.state_dict().items():
            if name.startswith("ebc.") and name.endswith(".weight"):
                for shard in value.local_shards() if hasattr(value, "local_shards") else []:
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    rows, cols = torch.arange(r0, r0 + nr)[:, None], torch.arange(c0, c0 + nc)[None, :]
                    shard.tensor.copy_(0.1 * torch.sin(0.37 * rows + 1.3 * cols))


def test_held_out_gates_on_two_workers_step_as_one_worker_over_the_same_rows(tmp_path):
    """The held-out rows' gradient reaches the gate logits summed over the workers and divided by
    the global held-out count: two workers, each with half of every batch, get the gradient one
    worker gets from the whole batch (the tables' fused Adagrad takes the W-times larger sum of
    TorchRec's data-parallel backward, which its row-wise normalisation cancels)."""
    one = _run_ranks(_held_out_gate_grads, 1, str(tmp_path / "one"))[0]
    two = _run_ranks(_held_out_gate_grads, 2, str(tmp_path / "two"))
    assert not isinstance(one, str) and not any(isinstance(g, str) for g in two.values()), (one, two)
    assert len(one) == 2 and two[0] == two[1]  # every worker's logits get the same gradient
    for step in range(2):
        assert np.abs(np.asarray(one[step])).max() > 1e-4  # the held-out rows do move the gates
        np.testing.assert_allclose(two[0][step], one[step], rtol=1e-3, atol=1e-6)
