"""A selection job on Ray: Parquet -> Ray Data -> Ray Train workers (TorchRec DMP) -> FeatureSet.

The driver (this process):

1. checks the Parquet files and reads the needed columns with Ray Data (:mod:`pipelines.ray_data`);
2. encodes them once (:func:`pipelines.dataset.encode_table`: the split and the vocabularies must
   be the same on every worker) and fixes the search space (:func:`pipelines.stages.plan_job`);
3. hands the encoded train rows to a ``TorchTrainer`` as a Ray Dataset; each worker takes its
   shard with ``ray.train.get_dataset_shard("train")`` and every validation row;
4. relays the workers' progress events to ``on_event`` while they run.

Each worker runs :func:`pipelines.stages.run_stages`, the in-process stages, on its shard: TorchRec's
planner shards the tables across the workers' process group (table-wise, column-wise or
data-parallel on CPU with gloo; row-wise too on GPUs with NCCL), ``DistributedModelParallel``
exchanges the embeddings, and the gates train on the averaged gradients, so every worker makes the
same picks. A step of W workers sees ``batch_size / W`` rows on each, the same rows per step as
one process. Checkpoints are written every epoch and a failed worker group restarts from the last
one (``FailureConfig(max_failures)``), see :mod:`pipelines.checkpoints`.

Example::

    fs = run_ray_job(load_spec("job.yaml"), on_event=print)   # RAY_ADDRESS set: that cluster
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.checkpoints import CheckpointedStages
from pipelines.cluster import connect
from pipelines.dataset import EncodedDataset, EncodedSplit, encode_table
from pipelines.engine import Placed, device
from pipelines.errors import SpecError
from pipelines.events import (
    CheckpointSaved,
    Event,
    OnEvent,
    PlanChosen,
    Progress,
    Resumed,
    StageStarted,
    WorkerStarted,
    emit,
)
from pipelines.limits import JobLimits
from pipelines.preprocessing import write_preprocessing
from pipelines.ray_data import check_parquet, read_parquet, shard_to_split, split_to_dataset
from pipelines.ray_stream import ray_stream_dataset
from pipelines.roots import DataRoots
from pipelines.spec import FeatureSet, JobSpec
from pipelines.stages import plan_job, run_stages, seed_everything
from pipelines.stream import StreamedSplit, wants_stream

log = logging.getLogger(__name__)

RESULT_FILE, ERROR_FILE = "featureset.json", "error.json"
PLACEMENT_ENV = "SEQATTN_RAY_PLACEMENT"
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class RayOptions:
    """How a job uses Ray: where checkpoints go, how many worker-group failures it survives.

    ``storage_path`` defaults to ``$SEQATTN_HOME/ray`` (it must be shared storage on a real
    multi-node cluster: every node writes its workers' checkpoint files there). ``run_name``
    defaults to a fresh name; giving the name of an earlier run that did not finish (a driver that
    died, an ``interrupted`` job) resumes it from its last checkpoint, as Ray Train does.
    """

    storage_path: str | None = None
    max_failures: int = 2
    run_name: str | None = None
    poll_s: float = 0.2
    # "PACK" (fewest nodes) or "SPREAD" (one worker per node where it can: a lost node takes fewer
    # workers with it); None: $SEQATTN_RAY_PLACEMENT, else "PACK".
    placement_strategy: str | None = None


@ray.remote(num_cpus=0)
class ProgressBus:
    """Events from the workers, collected until the driver drains them (actor calls from one
    caller run in order, so a worker's events arrive in the order it sent them)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def drain(self) -> list[Event]:
        out, self.events = self.events, []
        return out


def _empty_split(data: EncodedDataset) -> EncodedSplit:
    return EncodedSplit(np.zeros((0, len(data.dense_names)), np.float32),
                        {n: (np.zeros(0, np.int64), np.zeros(0, np.int32)) for n in data.sparse_names},
                        np.zeros(0, np.float32), np.zeros(0, np.int64))


def _plan_tables(placed: Placed) -> dict[str, dict[str, Any]]:
    """The sharding the planner chose: table -> sharding type, kernel, and the ranks holding it."""
    out = {}
    for module_plan in placed.plan.plan.values():
        for table, p in module_plan.items():
            out[table] = {"sharding_type": p.sharding_type, "compute_kernel": p.compute_kernel,
                          "ranks": sorted(set(p.ranks or []))}
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard -> the shared stages, checkpointed every epoch."""
    import ray.train
    import ray.train.torch
    import torch

    if torch.cuda.is_available():  # the GPU Ray gave this worker: engine.device() and NCCL use the current one
        torch.cuda.set_device(ray.train.torch.get_device())
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    bus = config["bus"]
    bus.put.remote(WorkerStarted(rank, os.getpid(), ray.get_runtime_context().get_node_id()))
    spec: JobSpec = JobSpec.model_validate_json(config["spec"])
    meta: EncodedDataset = config["meta"]
    t0 = time.perf_counter()

    def shard(name: str) -> EncodedSplit:
        batches = ray.train.get_dataset_shard(name).iter_batches(batch_size=None, batch_format="pyarrow")
        return shard_to_split(batches, meta)

    if isinstance(meta.train, StreamedSplit):  # streamed: this worker reads its rows from the files itself
        data = replace(meta, train=meta.train.shard(rank, world))
    else:
        train, valid = _in_memory_shards(shard("train"), shard("valid"), world)
        data = replace(meta, train=train, valid=valid)
    shard_s = time.perf_counter() - t0

    def send(event: Event) -> None:
        if rank == 0:
            if isinstance(event, Progress):
                event = replace(event, rows=event.rows * world)
            bus.put.remote(event)

    def placed_on(stage: str, placed: Placed) -> None:
        bus.put.remote(PlanChosen(stage, rank, world, _plan_tables(placed)))

    hooks = CheckpointedStages.resume(
        ray.train.get_checkpoint(), rank,
        on_checkpoint=lambda stage, epoch: send(CheckpointSaved(stage, epoch)),
        on_place=placed_on if rank == 0 else None)
    if hooks.resumed_from is not None:
        send(Resumed(*hooks.resumed_from))
    seed_everything(spec.training.seed)
    batch_size = max(1, spec.training.batch_size // world)
    try:
        fs = run_stages(spec, data, config["plan"], send, hooks, job_id=config["job_id"],
                        timings={**config["timings"], "shard_s": shard_s}, batch_size=batch_size)
    except SpecError as exc:  # raised alike on every worker (see CheckpointedStages.agree)
        _report_outcome(rank, ERROR_FILE, json.dumps(exc.to_dict()))
        return
    _report_outcome(rank, RESULT_FILE, fs.model_dump_json(indent=2))


def _in_memory_shards(train: EncodedSplit, valid: EncodedSplit, world: int) -> tuple[EncodedSplit, EncodedSplit]:
    """A worker's Ray Data shard of the train rows, cut to the smallest worker's (sharded tables make
    every step a collective: all workers must take the same number of steps), and every validation row."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() and world > 1:
        n = torch.tensor([len(train)], device=device())  # NCCL (GPU workers) reduces CUDA tensors only
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        if int(n) < len(train):
            keep = int(n)
            train = EncodedSplit(train.dense[:keep], {k: _head(v, lens, keep) for k, (v, lens) in train.sparse.items()},
                                 train.labels[:keep], train.row_index[:keep])
    return train, valid


def _report_outcome(rank: int, name: str, text: str) -> None:
    """The last checkpoint holds the outcome (Ray Train keeps the metrics of checkpoints only)."""
    import ray.train

    if rank != 0:
        ray.train.report({"outcome": name}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="seqattn-outcome-") as directory:
        (Path(directory) / name).write_text(text)
        ray.train.report({"outcome": name}, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _head(values: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return values[: int(lengths[:n].sum())], lengths[:n]


def _use_gpu(workers: int) -> bool:
    """GPUs when the cluster has one per worker: then NCCL, CUDA kernels, and row-wise sharding."""
    return ray.cluster_resources().get("GPU", 0) >= workers


def _check_capacity(workers: int) -> None:
    """Fail at once when the cluster can never hold the workers (a TorchTrainer would wait for ever).

    Each worker takes one CPU (or one GPU); an autoscaling cluster that grows on demand can set
    ``SEQATTN_RAY_AUTOSCALING=1`` to skip the check.
    """
    if os.environ.get("SEQATTN_RAY_AUTOSCALING", "").strip() in ("1", "true", "yes"):
        return
    resources = ray.cluster_resources()
    kind = "GPU" if _use_gpu(workers) else "CPU"
    have = int(resources.get(kind, 0))
    if workers > have:
        raise SpecError("training.num_workers", f"{workers} workers need {workers} {kind}s, but the Ray cluster has "
                        f"{have}; lower training.num_workers or add nodes")


def _placement(options: RayOptions) -> str:
    """The placement group strategy of the worker group: the option, else the environment's."""
    value = (options.placement_strategy or os.environ.get(PLACEMENT_ENV, "").strip() or "PACK").upper()
    if value not in PLACEMENTS:
        raise SpecError(PLACEMENT_ENV, f"{value!r} is not a placement strategy; use one of {', '.join(PLACEMENTS)}")
    return value


def _storage_path(options: RayOptions) -> str:
    if options.storage_path:
        return str(Path(options.storage_path).resolve())
    home = Path(os.environ.get("SEQATTN_HOME", ".seqattn"))
    return str((home / "ray").resolve())


def _root_cause(exc: BaseException) -> str:
    """The innermost error's one-line message (a worker's exception arrives wrapped in Ray's)."""
    seen = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[-1] if text else ''}"


def run_ray_job(spec: JobSpec, on_event: OnEvent | None = None, job_id: str | None = None,
                options: RayOptions | None = None, roots: DataRoots | None = None,
                limits: JobLimits | None = None, artifacts: Path | None = None) -> FeatureSet:
    """Run ``spec`` on ``spec.training.num_workers`` Ray Train workers; return its FeatureSet.

    With ``artifacts``, the driver writes the run's preprocessing there
    (:func:`pipelines.preprocessing.write_preprocessing`; train counts only from a streamed read, the
    in-memory read's ids having gone to the workers); the trained model's weights, sharded across
    the workers, are not exported from Ray yet.
    Bad input raises :class:`SpecError` before any worker starts. Events: those of
    :func:`pipelines.job.run_job` plus ``worker`` (rank, pid), ``plan`` (each stage's sharding),
    ``checkpoint`` and ``resumed``.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    options = options or RayOptions()
    t0 = time.perf_counter()
    emit(on_event, StageStarted("load"))
    source = check_parquet(spec.dataset, roots)  # before Ray starts: bad input fails in a second
    placement = _placement(options)
    streamed = wants_stream(spec.dataset, roots)
    connect()
    workers = spec.training.num_workers
    _check_capacity(workers)
    datasets: dict[str, Any] = {}
    if streamed:  # statistics from Ray tasks; each worker reads its own rows (pipelines.ray_stream)
        data = ray_stream_dataset(spec.dataset, spec.training.seed, roots)
        read_s, encode_s = time.perf_counter() - t0, 0.0
        plan = plan_job(spec, data, on_event, limits)
        assert isinstance(data.train, StreamedSplit) and isinstance(data.valid, StreamedSplit)
        lean = replace(data.train.stats, sample=data.train.stats.sample.schema.empty_table())  # the plan used it
        meta = replace(data, train=replace(data.train, stats=lean), valid=replace(data.valid, stats=lean), sample=None)
    else:  # the driver reads and encodes every row; Ray Data hands the workers their shards
        table = read_parquet(source)
        read_s = time.perf_counter() - t0
        data = encode_table(table, source.columns, spec.dataset.validation_fraction, spec.training.seed)
        del table
        encode_s = time.perf_counter() - t0 - read_s
        plan = plan_job(spec, data, on_event, limits)
        assert isinstance(data.train, EncodedSplit) and isinstance(data.valid, EncodedSplit)  # encoded in memory
        datasets = {"train": split_to_dataset(data.train, data, min_blocks=2 * workers),
                    "valid": split_to_dataset(data.valid, data)}
        meta = replace(data, train=_empty_split(data), valid=_empty_split(data), vocabularies={})
    described = replace(meta, vocabularies=data.vocabularies)  # what write_preprocessing reads
    del data
    timings = {"load_s": read_s + encode_s, "read_s": read_s, "encode_s": encode_s, **plan.timings}

    # On the driver's node: a worker node that dies mid-job must not take the progress relay with it
    # (the controller and Ray Data's coordinators are pinned there by Ray Train alike).
    bus = ProgressBus.options(scheduling_strategy=NodeAffinitySchedulingStrategy(  # type: ignore[attr-defined]
        ray.get_runtime_context().get_node_id(), soft=False)).remote()
    # A fresh name per run: Ray Train resumes a run whose folder already exists, and a job id may
    # be submitted again (a retried API call) with data that changed since.
    run_name = options.run_name or "-".join(filter(None, (spec.name, job_id, uuid.uuid4().hex[:8])))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump_json(), "meta": meta, "plan": plan, "bus": bus, "job_id": job_id,
                           "timings": timings},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=_use_gpu(workers),
                                     placement_strategy=placement),
        run_config=RunConfig(name=run_name, storage_path=_storage_path(options),
                             failure_config=FailureConfig(max_failures=options.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets or None,
        dataset_config=DataConfig(datasets_to_split=["train"] if datasets else []),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name=f"ray-job-{run_name}", daemon=True)
    thread.start()
    try:
        while True:
            done = not thread.is_alive()
            for event in ray.get(bus.drain.remote()):
                emit(on_event, event)
            if done:
                break
            thread.join(options.poll_s)
    finally:
        ray.kill(bus)
    if "error" in outcome:
        exc = outcome["error"]
        log.error("ray job %s failed", run_name, exc_info=exc)
        raise RuntimeError(f"job failed on the Ray workers: {_root_cause(exc)}") from exc
    checkpoint = outcome["result"].checkpoint
    if checkpoint is None:
        raise RuntimeError("the Ray workers finished without a result")
    with checkpoint.as_directory() as directory:
        error, result = Path(directory) / ERROR_FILE, Path(directory) / RESULT_FILE
        if error.exists():
            err = json.loads(error.read_text())
            raise SpecError(err["field"], err["message"])
        if not result.exists():
            raise RuntimeError(f"the Ray workers finished without a result (checkpoint {checkpoint.path})")
        fs = FeatureSet.model_validate_json(result.read_text())
    timings = {**fs.timings, "total_s": round(time.perf_counter() - t0, 3)}
    fs = fs.model_copy(update={"timings": timings})
    if artifacts is not None:
        write_preprocessing(Path(artifacts), described, fs)
    return fs
