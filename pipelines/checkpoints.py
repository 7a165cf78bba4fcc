"""Per-epoch checkpoints of a job's training stages on Ray Train workers, and resuming from them.

Every worker writes its own file, ``rank-{r}.pt``, into the checkpoint that
``ray.train.report(metrics, checkpoint=...)`` publishes (Ray Train merges the workers' files into
one directory). A file holds:

- ``current``: the stage being trained, its last finished epoch, and this worker's part of the
  model (dense layers, gate logits, the selection state kept in buffers, and the local shards of
  its embedding tables), of the torch optimizer (Adam moments of the towers and gates) and of the
  fused embedding optimizer (row-wise Adagrad state);
- ``decisions``: the results of finished stages (the selection outcome, the latency trim, the
  retrained and reference metrics), so a restart skips them.

Sharded tables are saved as their local shards, not gathered: a restart has the same number of
workers and the planner makes the same plan, so each worker reloads exactly its shards.

Example (inside ``train_loop_per_worker``)::

    hooks = CheckpointedStages.resume(ray.train.get_checkpoint(), rank, on_checkpoint=print)
    run_stages(spec, data, plan, hooks=hooks)   # start() restores, epoch_end() reports
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from pipelines.engine import Placed
from pipelines.errors import SpecError
from pipelines.stages import StageHooks

T = TypeVar("T")


def _local(x: Any) -> Any:
    """A detached copy with every ShardedTensor replaced by the list of its local shards."""
    if isinstance(x, ShardedTensor):
        return [s.tensor.detach().clone() for s in x.local_shards()]
    if hasattr(x, "to_local") and isinstance(x, torch.Tensor):  # DTensor
        return x.to_local().detach().clone()  # type: ignore[attr-defined]  # a DTensor (hasattr above)
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _local(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_local(v) for v in x)
    return copy.deepcopy(x)


def _copy_into(current: Any, saved: Any, where: str) -> None:
    """Copy ``saved`` (from :func:`_local`) into the live tensors of a state dict, in place."""
    if isinstance(current, ShardedTensor):
        shards = current.local_shards()
        if len(shards) != len(saved):
            raise RuntimeError(f"checkpoint {where}: {len(saved)} saved shards, {len(shards)} live ones")
        for shard, value in zip(shards, saved):
            shard.tensor.detach().copy_(value)
    elif hasattr(current, "to_local") and isinstance(current, torch.Tensor):
        current.to_local().detach().copy_(saved)  # type: ignore[attr-defined]  # a DTensor (hasattr above)
    elif isinstance(current, torch.Tensor):
        current.detach().copy_(saved)
    elif isinstance(current, dict):
        missing = set(current) - set(saved)
        if missing:
            raise RuntimeError(f"checkpoint {where}: no saved state for {sorted(missing)[:3]}")
        for k in current:
            _copy_into(current[k], saved[k], f"{where}.{k}")


def snapshot(placed: Placed) -> dict[str, Any]:
    """This worker's part of a placed model and of its optimizers, as plain tensors."""
    fused = getattr(placed.forward, "fused_optimizer", None)
    return {
        "model": _local(placed.forward.state_dict()),
        "optimizer": _local(placed.optimizer.state_dict()),
        "fused": _local(fused.state_dict()) if fused is not None else None,
    }


def restore(placed: Placed, state: dict[str, Any]) -> None:
    """Load a :func:`snapshot` into a freshly placed model of the same config and plan."""
    _copy_into(placed.forward.state_dict(), state["model"], "model")
    placed.optimizer.load_state_dict(state["optimizer"])
    fused = getattr(placed.forward, "fused_optimizer", None)
    if fused is not None and state["fused"] is not None:
        live = fused.state_dict()
        _copy_into(live, state["fused"], "fused")
        fused.load_state_dict(live)


def _rank_file(directory: str | os.PathLike[str], rank: int) -> Path:
    return Path(directory) / f"rank-{rank}.pt"


class CheckpointedStages(StageHooks):
    """Stage hooks for Ray Train workers: checkpoint every epoch, resume, agree via rank 0.

    ``report(metrics, directory)`` publishes a checkpoint directory (``ray.train.report`` in a
    worker); ``on_checkpoint(stage, epoch)`` is told after each one (progress events).
    """

    def __init__(self, rank: int, state: dict[str, Any] | None = None,
                 report: Callable[[dict[str, Any], str], None] | None = None,
                 on_checkpoint: Callable[[str, int], None] | None = None,
                 on_place: Callable[[str, Placed], None] | None = None) -> None:
        self.rank = rank
        state = state or {}
        self.current: dict[str, Any] | None = state.get("current")
        self.decisions: dict[str, Any] = dict(state.get("decisions", {}))
        self.resumed_from = (self.current["stage"], self.current["epoch"]) if self.current else None
        self._report = report or _ray_report
        self._on_checkpoint = on_checkpoint
        self._on_place = on_place

    @classmethod
    def resume(cls, checkpoint: Any, rank: int, **kwargs: Any) -> CheckpointedStages:
        """Hooks holding this worker's state from ``checkpoint`` (``ray.train.get_checkpoint()``),
        or fresh ones when it is None."""
        if checkpoint is None:
            return cls(rank, None, **kwargs)
        with checkpoint.as_directory() as directory:
            path = _rank_file(directory, rank)
            if not path.exists():
                raise RuntimeError(f"checkpoint {checkpoint.path}: no state for worker {rank} "
                                   "(was the job restarted with another number of workers?)")
            state = torch.load(path, map_location="cpu", weights_only=False)
        return cls(rank, state, **kwargs)

    # -- StageHooks ------------------------------------------------------------------------------
    def start(self, stage: str, placed: Placed) -> int:
        if self._on_place is not None:
            self._on_place(stage, placed)
        if self.current is not None and self.current["stage"] == stage:
            restore(placed, self.current)
            return int(self.current["epoch"]) + 1
        return 0

    def epoch_end(self, stage: str, placed: Placed, epoch: int) -> None:
        self.current = {"stage": stage, "epoch": epoch, **snapshot(placed)}
        with tempfile.TemporaryDirectory(prefix="seqattn-ckpt-") as directory:
            torch.save({"current": self.current, "decisions": self.decisions}, _rank_file(directory, self.rank))
            self._report({"stage": stage, "epoch": epoch}, directory)
        if self._on_checkpoint is not None:
            self._on_checkpoint(stage, epoch)

    def remember(self, name: str, fn: Callable[[], T]) -> T:
        if name not in self.decisions:
            self.decisions[name] = fn()
        return self.decisions[name]

    def agree(self, name: str, fn: Callable[[], T]) -> T:
        def decide() -> T:
            box: list[Any] = [None]
            if self.rank == 0:
                try:
                    box[0] = ("ok", fn())
                except SpecError as exc:  # every worker must raise it, or the others wait for ever
                    box[0] = ("error", exc)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.broadcast_object_list(box, src=0)
            status, value = box[0]
            if status == "error":
                raise value
            return value

        return self.remember(name, decide)


def _ray_report(metrics: dict[str, Any], directory: str) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
