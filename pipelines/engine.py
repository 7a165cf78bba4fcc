"""Placement: wrap a LEM in TorchRec's ``DistributedModelParallel`` and build its optimizers.

The same wrapping serves one process (a world of one, gloo, started here) and Ray Train workers
(whose process group Ray sets up). On CPU the planner picks the ``fused`` compute kernel, i.e.
FBGEMM's table-batched CPU kernels, and the embedding optimizer runs inside the backward pass
(``apply_optimizer_in_backward``); on GPU the CUDA kernels and NCCL. Measured here: a fused DMP step
is about 2x faster than a plain ``EmbeddingBagCollection`` stepped by Adam (26 tables, batch 2048).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import (
    ParameterShardingGenerator,
    column_wise,
    construct_module_sharding_plan,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from seqattn_core.lem import LargeEmbeddingModel
from seqattn_core.pruning import BlockAttention

# The JobSpec's learning_rate scales three optimizers, tuned on planted data and Frappe:
# embedding rows see sparse, bursty gradients, so they take row-wise Adagrad (TorchRec/DLRM's usual
# choice) at 3x (docs/embedding_lr.md: 5x over-fits planted data, and 3x is within the seed spread
# of 5x on Frappe and Criteo); the DCN/MLP towers take Adam at 0.1x (at 1x Adam the cross layers
# diverge in the second epoch); the gate logits take Adam at 10x, because a phase lasts only a few
# dozen steps and Adam moves a logit by about its lr per step.
EMBEDDING_LR_SCALE = 3.0
DENSE_LR_SCALE = 0.1
GATE_LR_SCALE = 10.0


# What the planner may choose from. Row-wise shards need a per-row bucketisation of ids that only the
# CUDA kernels implement well; on CPU over gloo the planner keeps to whole tables or column slices
# (see docs/architecture.md, "The engine"). No data_parallel replicas: the planner gives those its `dense`
# kernel, outside the fused optimizer that trains every other table inside backward, so small tables
# stayed at their initialisation (found by bench section g; tests/pipelines/test_engine.py).
CPU_SHARDING_TYPES = (ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE)
GPU_SHARDING_TYPES = CPU_SHARDING_TYPES + (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)


# TorchRec's planner searches every table's options in time that grows about as the square of the
# table count (minutes at a few thousand tables; figures in docs/architecture.md, "The engine", and
# `python -m bench.placement`). Past this many tables the plan is built directly (_direct_plan):
# whole tables, largest first, each to the rank holding the fewest parameters so far, and only a
# table larger than a rank's fair share split over all ranks. Below it the planner still plans, so
# placements (and the results that depend on them) stay as they were.
PLANNER_MAX_TABLES = 1_000


def sharding_types(device_type: str) -> list[str]:
    """The sharding types the planner may use on ``device_type`` ("cpu" or "cuda")."""
    return [t.value for t in (GPU_SHARDING_TYPES if device_type == "cuda" else CPU_SHARDING_TYPES)]


def device() -> torch.device:
    """The current CUDA device where there is a GPU (a Ray Train worker makes its own GPU current
    first: ``ray.train.torch.get_device``), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def ensure_process_group() -> None:
    """A world of one for in-process runs; Ray Train workers arrive with theirs already set."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


@dataclass
class Placed:
    """A model placed for training: call ``forward``, step ``optimizer`` (dense parts and gates);
    the embedding tables are updated by the fused optimizer inside backward."""

    forward: DistributedModelParallel
    model: LargeEmbeddingModel
    optimizer: torch.optim.Optimizer
    plan: ShardingPlan


def place(model: LargeEmbeddingModel, learning_rate: float, gate_learning_rate: float | None = None) -> Placed:
    """Shard ``model``'s tables with the planner's choice (see ``PLANNER_MAX_TABLES``) and build the optimizers."""
    ensure_process_group()
    dev = device()
    if model.ebc is not None:
        apply_optimizer_in_backward(
            RowWiseAdagrad, model.ebc.parameters(), {"lr": learning_rate * EMBEDDING_LR_SCALE}
        )
    plan = _plan(model, dev)
    dmp = DistributedModelParallel(model, device=dev, plan=plan)
    named = [(n, p) for n, p in dmp.named_parameters() if "ebc." not in n]
    # SequentialAttention++'s tile logits get their own rate and eps (PruningConfig.logit_lr_scale, logit_eps).
    tiles = {id(m.logits) for m in model.modules() if isinstance(m, BlockAttention)}
    blocks = [p for n, p in named if id(p) in tiles]
    gates = [p for n, p in named if n.endswith("attention.logits") and id(p) not in tiles]
    dense = [p for n, p in named if not n.endswith("attention.logits")]
    # Block tiles exist only in a model built with a PruningConfig, whose phase settings are filled in.
    lr_scale, eps = (model.pruner.config.logit_lr_scale, model.pruner.config.logit_eps) if model.pruner else (1.0, 1e-8)
    assert lr_scale is not None and eps is not None
    optimizer = torch.optim.Adam(
        [
            {"params": dense, "lr": learning_rate * DENSE_LR_SCALE},
            {"params": gates, "lr": gate_learning_rate or learning_rate * GATE_LR_SCALE},
            {"params": blocks, "lr": learning_rate * (lr_scale if blocks else 1.0), "eps": eps if blocks else 1e-8},
        ]
    )
    return Placed(dmp, model, optimizer, plan)


def _plan(model: LargeEmbeddingModel, dev: torch.device) -> ShardingPlan:
    """The planner's sharding plan, or past ``PLANNER_MAX_TABLES`` tables :func:`_direct_plan`."""
    tables = model.config.table_configs() if model.ebc is not None else []
    world = dist.get_world_size()
    if len(tables) > PLANNER_MAX_TABLES:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return ShardingPlan({"ebc": construct_module_sharding_plan(model.ebc, _direct_plan(tables, world, dev.type),
                                                                   local_size=local, world_size=world,
                                                                   device_type=dev.type)})
    constraints = {t.name: ParameterConstraints(sharding_types=sharding_types(dev.type)) for t in tables}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=dev.type),
                                       constraints=constraints)
    return planner.collective_plan(model, pg=dist.GroupMember.WORLD)


def _direct_plan(tables: list[EmbeddingBagConfig], world: int,
                 device_type: str) -> dict[str, ParameterShardingGenerator]:
    """Whole tables over the ranks by :func:`balanced_ranks`, except a table larger than a rank's fair
    share (a giant ID table among many small ones), which no placement of whole tables balances: it is
    spread over every rank, row-wise on GPU and column-wise on CPU (the sharding types each supports
    here; on CPU only when its dims divide evenly, else it stays whole)."""
    sizes = {t.name: t.num_embeddings * t.embedding_dim for t in tables}
    fair = sum(sizes.values()) / world
    spread = {t.name for t in tables if world > 1 and sizes[t.name] > fair
              and (device_type == "cuda" or t.embedding_dim % world == 0)}
    every = list(range(world))
    plan = {name: row_wise(compute_kernel="fused") if device_type == "cuda"
            else column_wise(ranks=every, compute_kernel="fused")
            for name in spread}
    whole = balanced_ranks({name: size for name, size in sizes.items() if name not in spread}, world)
    return plan | {name: table_wise(rank=rank, compute_kernel="fused") for name, rank in whole.items()}


def balanced_ranks(sizes: dict[str, int], world: int) -> dict[str, int]:
    """Each table's rank: largest first, to the rank holding the fewest parameters so far.

    Deterministic (equal sizes in name order, equal loads to the lower rank), so every worker
    builds the same plan without a collective.

    Example::

        >>> balanced_ranks({"a": 10, "b": 6, "c": 5, "d": 1}, world=2)
        {'a': 0, 'b': 1, 'c': 1, 'd': 0}
    """
    load = [0] * world
    out = {}
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        rank = min(range(world), key=lambda r: (load[r], r))
        out[name] = rank
        load[rank] += size
    return out


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedModelParallel) else module
