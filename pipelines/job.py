"""``run_job(spec)``: one selection job, start to finish. The CLI, the API and schedules all call it.

1. Load and encode the Parquet data (train/validation split).
2. Pre-screen cross candidates (held-out gain, :mod:`seqattn_core.crosses`).
3. ONE training run of the gated LEM selects features, crosses and dimension blocks.
4. Enforce the budgets: memory by construction (knapsack gates), latency by trimming the last picks
   until the measured time of the final architecture fits.
5. Retrain the chosen configuration; train the all-features reference; report both.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
import torch

from pipelines.dataset import EncodedDataset, EncodedSplit, load_dataset
from pipelines.engine import Placed, place
from pipelines.errors import SpecError
from pipelines.limits import JobLimits
from pipelines.roots import DataRoots
from pipelines.spec import (Candidate, Compression, FeatureSet, JobSpec, LatencyTrim, PrunedLayer, SelectedCross,
                            SelectedFeature)
from seqattn_core.batches import BatchSource, first_ids
from seqattn_core.crosses import CrossFeature, bucket_budget, prescreen_pairs
from seqattn_core.dimensions import BYTES_PER_FLOAT, mb
from seqattn_core.latency import LatencyModel, measure_inference_ms
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SelectionConfig, SparseFeature, warmup_for
from seqattn_core.pruning import PruningConfig
from seqattn_core.training import StepEvent, binary_metrics, predict, train

log = logging.getLogger(__name__)

Event = dict[str, Any]
T = TypeVar("T")
LATENCY_BATCH = 1024
EVAL_BATCH = 8192
ENGINE_ENV = "SEQATTN_ENGINE"  # "ray" or "local": overrides the choice by training.num_workers


def _emit(on_event: Callable[[Event], None] | None, **event: Any) -> None:
    if on_event is not None:
        on_event(event)


@dataclass(frozen=True)
class Choice:
    """The chosen configuration: features (dense first indices, then sparse), crosses and dims."""

    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    crosses: tuple[CrossFeature, ...]
    dims: dict[str, int]


class StageHooks:
    """How the training stages resume, checkpoint and agree; these defaults are the in-process run.

    The Ray runner (:mod:`pipelines.ray_job`) overrides them so that every worker runs the same
    stages below: ``start`` restores a stage from the last checkpoint, ``epoch_end`` writes one,
    ``remember`` replays a finished stage's result after a restart, and ``agree`` makes one worker
    decide what every worker must do alike (a latency measurement differs from process to process).

    Example::

        >>> StageHooks().agree("latency", lambda: 3)
        3
    """

    def start(self, stage: str, placed: Placed) -> int:
        """Restore ``stage``'s state into ``placed``; return the first epoch still to train."""
        return 0

    def epoch_end(self, stage: str, placed: Placed, epoch: int) -> None:
        """Called after every epoch of every stage (a checkpoint point)."""

    def remember(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()``, or its result from before a restart; every worker calls it."""
        return fn()

    def agree(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()`` computed once and shared by every worker (and remembered like ``remember``)."""
        return fn()


IN_PROCESS = StageHooks()


@dataclass(frozen=True)
class Plan:
    """What the training stages need besides the rows: the search space, decided once on the whole
    train split (the cross pre-screen needs every row, so on Ray it runs on the driver)."""

    base: LEMConfig
    search: LEMConfig
    selection: SelectionConfig
    crosses: tuple[CrossFeature, ...]
    screen: dict[str, float]
    train_rows: int
    valid_rows: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionOutcome:
    """What the gated run chose (indices into the plan's candidates) and every candidate's score."""

    kept: tuple[int, ...]
    kept_crosses: tuple[int, ...]
    dims: dict[str, int]
    feature_scores: tuple[float, ...] | None
    cross_scores: tuple[float, ...]
    seconds: float
    kept_heads: tuple[int, ...] = ()


def _sparse_features(data: EncodedDataset, names: tuple[str, ...]) -> tuple[SparseFeature, ...]:
    return tuple(SparseFeature(n, data.cardinalities[n], n in data.multi_valued) for n in names)


def _source(split: EncodedSplit, data: EncodedDataset, dense: tuple[str, ...], sparse: tuple[str, ...],
            crosses: tuple[CrossFeature, ...]) -> BatchSource:
    cols = [data.dense_names.index(d) for d in dense]
    # Crosses read their two features' ids, which may not be kept themselves.
    needed = set(sparse) | {f for c in crosses for f in (c.a, c.b)}
    source = BatchSource(split.dense, {n: split.sparse[n] for n in data.sparse_names if n in needed},
                         split.labels, crosses, data.cardinalities, dense_columns=cols)
    keep = set(sparse) | {c.name for c in crosses}
    # Drop helper columns that only fed a cross, so the KJT holds exactly the model's tables.
    idx = [i for i, k in enumerate(source.keys) if k in keep]
    source.keys = [source.keys[i] for i in idx]
    source.values = [source.values[i] for i in idx]
    source.lengths = [source.lengths[i] for i in idx]
    source.offsets = [source.offsets[i] for i in idx]
    return source


def check_selection(spec: JobSpec, data: EncodedDataset, limits: JobLimits | None = None) -> None:
    """Checks that need the data: counts against candidates, a budget that fits something, and the
    service's limits on table sizes when it has any."""
    n_features = len(data.dense_names) + len(data.sparse_names)
    if limits is not None:
        limits.check_tables(data.cardinalities, n_features)
    k = spec.selection.features
    if k is not None and k > n_features:
        raise SpecError("selection.features", f"{k} is more than the {n_features} candidate features "
                        f"({len(data.dense_names)} dense, {len(data.sparse_names)} sparse)")
    single = [n for n in data.sparse_names if n not in data.multi_valued]
    pairs = len(single) * (len(single) - 1) // 2
    if spec.selection.crosses > pairs:
        raise SpecError("selection.crosses", f"{spec.selection.crosses} is more than the {pairs} pairs of "
                        f"single-valued sparse features")
    if spec.constraints.max_embedding_mb is not None and not data.dense_names:
        first = (spec.selection.embedding_dims or [spec.training.embedding_dim])[0]
        name = min(data.sparse_names, key=lambda n: data.cardinalities[n])
        need = data.cardinalities[name] * first * BYTES_PER_FLOAT
        if need > spec.constraints.max_embedding_mb * 2**20:
            raise SpecError("constraints.max_embedding_mb", f"{spec.constraints.max_embedding_mb} MB is too small "
                            f"for any feature: the smallest table ({name}, {data.cardinalities[name]} rows x "
                            f"{first} dims) needs {mb(need):.4f} MB")


def _fit(config: LEMConfig, selection: SelectionConfig | None, train_src: BatchSource, spec: JobSpec,
         stage: str, on_event: Callable[[Event], None] | None, hooks: StageHooks = IN_PROCESS,
         batch_size: int | None = None, pruning: PruningConfig | None = None) -> tuple[Placed, float]:
    """Place and train one model; returns (placed, seconds). ``batch_size`` is this process's share
    of ``spec.training.batch_size`` (on W Ray workers, 1/W of it, so a step sees the same rows)."""
    t = spec.training
    batch_size = batch_size or t.batch_size
    # Each stage's initial weights depend on (seed, stage) only, not on what ran before it in this
    # process: a worker restarted from a checkpoint then builds the same models as an unbroken run.
    torch.manual_seed(t.seed * 1_000_003 + zlib.crc32(stage.encode()))
    model = LargeEmbeddingModel(config, selection, device=torch.device("meta"), pruning=pruning)
    steps = train_src.num_batches(batch_size)
    placed = place(model, t.learning_rate, _gate_lr(model, steps * t.epochs, t.learning_rate))
    first_epoch = hooks.start(stage, placed)

    def report(ev: StepEvent) -> None:
        if ev.epoch_end or ev.step % 10 == 0:
            _emit(on_event, kind="progress", stage=stage, epoch=ev.epoch, step=ev.step,
                  total_steps=ev.total_steps, rows=ev.rows, loss=ev.loss, picks=ev.picks)

    start = time.perf_counter()
    train(placed.forward, placed.model, placed.optimizer,
          lambda e: train_src.batches(batch_size, seed=t.seed * 1000 + e),
          steps, t.epochs, gate_optimizer=placed.optimizer, start_epoch=first_epoch, stage=stage, on_step=report,
          on_epoch_end=lambda e: hooks.epoch_end(stage, placed, e))
    return placed, time.perf_counter() - start


def _gate_lr(model: LargeEmbeddingModel, total_steps: int, learning_rate: float) -> float:
    """Adam moves a logit by about its lr per step: give the shortest race's phase room to move
    the logits by ~3 nats, so short runs (few steps per pick) still separate the candidates."""
    floor = learning_rate * 10
    if model.selection is None:
        return floor
    s = model.selection
    spans = []
    for m, frac in ((model.feature_attention, s.dims_start if model.dim_attention else 1.0),
                    (model.cross_attention, s.dims_start if model.dim_attention else 1.0),
                    (model.dim_attention, 1.0 - s.dims_start)):
        if m is not None:
            spans.append(total_steps * frac * (1 - m.schedule.warmup) / m.schedule.num_phases)
    return max(floor, 3.0 / max(1.0, min(spans))) if spans else floor


def _evaluate(placed: Any, source: BatchSource) -> dict[str, float]:
    return binary_metrics(*predict(placed.forward, source.batches(EVAL_BATCH)))


def _latency(config: LEMConfig, source: BatchSource) -> float:
    torch.manual_seed(0)
    return measure_inference_ms(LargeEmbeddingModel(config), source.batch(0, min(LATENCY_BATCH, len(source))))


def _fit_latency_budget(choice: Choice, order: list[tuple[str, Any]], data: EncodedDataset, base: LEMConfig,
                        budget_ms: float) -> tuple[Choice, LatencyTrim]:
    """Drop the last picks (crosses, then features) until the measured latency fits ``budget_ms``;
    the trimmed choice and the record of what was dropped, with the ms before and after."""
    def config_of(c: Choice) -> LEMConfig:
        return replace(base, dense=c.dense, sparse=_sparse_features(data, c.sparse), crosses=c.crosses,
                       embedding_dims=c.dims)

    def trimmed(n_drop: int) -> Choice:
        drop = order[len(order) - n_drop:] if n_drop else []
        drop_set = {(kind, key) for kind, key in drop}
        crosses = tuple(x for x in choice.crosses if ("cross", x.name) not in drop_set)
        dense = tuple(d for d in choice.dense if ("feature", d) not in drop_set)
        sparse = tuple(s for s in choice.sparse if ("feature", s) not in drop_set)
        dims = {t: d for t, d in choice.dims.items() if t in set(sparse) | {x.name for x in crosses}}
        return Choice(dense, sparse, crosses, dims)

    src = _source(data.valid, data, choice.dense, choice.sparse, choice.crosses)

    def measure(c: Choice) -> float:
        return _latency(config_of(c), _source(data.valid, data, c.dense, c.sparse, c.crosses) if c != choice else src)

    # Calibrate the linear model on a few prefixes, then jump to the predicted cut and verify.
    probes = sorted({0, len(order) // 3, 2 * len(order) // 3, max(0, len(order) - 1)})
    samples = []
    for n_drop in probes:
        c = trimmed(n_drop)
        samples.append((len(c.sparse) + len(c.crosses), sum(c.dims.values()) + len(c.dense), measure(c)))
    ms_before = samples[0][2]
    model = LatencyModel.fit(samples)
    n_drop = 0
    while n_drop < len(order) - 1:
        c = trimmed(n_drop)
        if model.predict(len(c.sparse) + len(c.crosses), sum(c.dims.values()) + len(c.dense)) <= budget_ms:
            break
        n_drop += 1
    while True:
        c = trimmed(n_drop)
        ms = ms_before if n_drop == 0 else measure(c)
        if ms <= budget_ms:
            return c, LatencyTrim(
                budget_ms=budget_ms, ms_before=round(ms_before, 4), ms_after=round(ms, 4),
                removed_features=[f for f in choice.dense + choice.sparse if f not in c.dense + c.sparse],
                removed_crosses=[(x.a, x.b) for x in choice.crosses if x not in c.crosses])
        if n_drop >= len(order) - 1:
            raise SpecError("constraints.max_inference_ms", f"{budget_ms} ms is too small: even the smallest "
                            f"configuration ({', '.join(c.dense + c.sparse)}) takes {ms:.2f} ms per "
                            f"{LATENCY_BATCH:,} rows on this host")
        n_drop += 1


def use_ray(spec: JobSpec) -> bool:
    """Whether :func:`run_job` runs ``spec`` on Ray: more than one worker, unless ``SEQATTN_ENGINE``
    says ``ray`` or ``local``."""
    engine = os.environ.get(ENGINE_ENV, "").strip().lower()
    if engine in ("ray", "local"):
        return engine == "ray"
    if engine:
        raise SpecError(ENGINE_ENV, f"{engine!r} is not an engine; use 'ray' or 'local'")
    return spec.training.num_workers > 1


def run_job(spec: JobSpec, on_event: Callable[[Event], None] | None = None, job_id: str | None = None,
            roots: DataRoots | None = None, limits: JobLimits | None = None) -> FeatureSet:
    """Run one selection job and return its (unversioned) FeatureSet. A service passes its data
    ``roots`` (every file is checked against them as it is opened) and its job size ``limits``.

    One worker runs in this process; ``training.num_workers > 1`` (or ``SEQATTN_ENGINE=ray``) runs
    the same stages on Ray Train workers (:func:`pipelines.ray_job.run_ray_job`).

    Example::

        fs = run_job(load_spec("job.yaml"), on_event=print)
        fs.features[0].name, fs.metrics.val_auc
    """
    if limits is not None:
        limits.check(spec)
    if use_ray(spec):
        from pipelines.ray_job import run_ray_job

        return run_ray_job(spec, on_event=on_event, job_id=job_id, roots=roots, limits=limits)
    t0 = time.perf_counter()
    seed_everything(spec.training.seed)
    _emit(on_event, kind="stage", stage="load")
    data = load_dataset(spec.dataset, seed=spec.training.seed, roots=roots)
    load_s = time.perf_counter() - t0
    plan = plan_job(spec, data, on_event, limits)
    return run_stages(spec, data, plan, on_event, job_id=job_id, timings={"load_s": load_s, **plan.timings},
                      started=t0)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def plan_job(spec: JobSpec, data: EncodedDataset, on_event: Callable[[Event], None] | None = None,
             limits: JobLimits | None = None) -> Plan:
    """Check the spec against the data and fix the search space (cross candidates by pre-screen,
    reported as stage ``prescreen`` with progress events over its steps)."""
    check_selection(spec, data, limits)
    t0 = time.perf_counter()
    sel = spec.selection
    choices = tuple(sel.embedding_dims)
    search_dim = max(choices) if choices else spec.training.embedding_dim
    max_bytes = spec.constraints.max_embedding_mb * 2**20 if spec.constraints.max_embedding_mb else None

    # Cross candidates from the pre-screen (single-valued features only: a list has no one id to pair).
    crosses: tuple[CrossFeature, ...] = ()
    screen: dict[str, float] = {}
    timings: dict[str, float] = {}
    if sel.crosses:
        _emit(on_event, kind="stage", stage="prescreen")

        def progress(done: int, total: int) -> None:
            _emit(on_event, kind="progress", stage="prescreen", epoch=None, step=done, total_steps=total, rows=0,
                  loss=None, picks={})

        single = [n for n in data.sparse_names if n not in data.multi_valued]
        ids = {n: first_ids(*data.train.sparse[n]) for n in single}
        ranked = prescreen_pairs(ids, data.cardinalities, data.train.labels, max_candidates=max(16, 4 * sel.crosses),
                                 max_buckets=bucket_budget(len(data.train)), seed=spec.training.seed,
                                 on_progress=progress)
        crosses = tuple(c for c, _ in ranked)
        screen = {c.name: g for c, g in ranked}
        timings["prescreen_s"] = time.perf_counter() - t0

    base = LEMConfig(dense=tuple(data.dense_names), sparse=_sparse_features(data, tuple(data.sparse_names)),
                     embedding_dim=spec.training.embedding_dim, interaction=spec.training.interaction,
                     heads=spec.training.attention_heads)
    search_cfg = replace(base, crosses=crosses, embedding_dim=search_dim)
    selection = SelectionConfig(features=sel.features, crosses=min(sel.crosses, len(crosses)), dim_choices=choices,
                                max_embedding_bytes=max_bytes, reference_dim=spec.training.embedding_dim,
                                heads=spec.pruning.heads, warmup=warmup_for(spec.training.epochs))
    return Plan(base, search_cfg, selection, crosses, screen, len(data.train), len(data.valid), timings)


def _outcome(model: LargeEmbeddingModel, seconds: float) -> SelectionOutcome:
    fa, ca = model.feature_attention, model.cross_attention
    return SelectionOutcome(
        kept=tuple(model.kept_features()), kept_crosses=tuple(model.kept_crosses()), dims=dict(model.chosen_dims()),
        feature_scores=tuple(fa.scores.tolist()) if fa is not None else None,
        cross_scores=tuple(ca.scores.tolist()) if ca is not None else (), seconds=seconds,
        kept_heads=tuple(model.kept_heads()))


def run_stages(spec: JobSpec, data: EncodedDataset, plan: Plan, on_event: Callable[[Event], None] | None = None,
               hooks: StageHooks = IN_PROCESS, job_id: str | None = None, timings: dict[str, float] | None = None,
               batch_size: int | None = None, started: float | None = None) -> FeatureSet:
    """Selection, latency trimming, retrain and reference on ``data``; the FeatureSet of ``plan``.

    In process ``data`` is the whole dataset; on a Ray worker it holds that worker's share of the
    train rows (and every validation row), ``batch_size`` its share of a step, and ``hooks``
    checkpoint and resume the stages. The stages themselves are the same code either way.
    """
    t0 = started if started is not None else time.perf_counter()
    timings = dict(timings or {})
    base, crosses = plan.base, plan.crosses

    def fit(config: LEMConfig, selection: SelectionConfig | None, src: BatchSource, stage: str,
            pruning: PruningConfig | None = None) -> tuple[Placed, float]:
        return _fit(config, selection, src, spec, stage, on_event, hooks, batch_size, pruning)

    def select() -> SelectionOutcome:
        train_src = _source(data.train, data, plan.search.dense, tuple(data.sparse_names), crosses)
        placed, seconds = fit(plan.search, plan.selection, train_src, "selection")
        return _outcome(placed.model, seconds)

    _emit(on_event, kind="stage", stage="selection")
    outcome = hooks.remember("selection", select)
    timings["selection_s"] = outcome.seconds

    names = list(data.dense_names) + list(data.sparse_names)
    kept = list(outcome.kept)
    kept_crosses = [crosses[i] for i in outcome.kept_crosses]
    choice = Choice(tuple(names[i] for i in kept if i < len(data.dense_names)),
                    tuple(names[i] for i in kept if i >= len(data.dense_names)), tuple(kept_crosses), outcome.dims)
    order = [("feature", names[i]) for i in kept] + [("cross", c.name) for c in kept_crosses]
    order = [o for o in order if o[0] == "feature"] + [o for o in order if o[0] == "cross"]

    inference_ms, latency = None, None
    if spec.constraints.max_inference_ms is not None:
        _emit(on_event, kind="stage", stage="latency")
        budget_ms = spec.constraints.max_inference_ms
        choice, latency = hooks.agree("latency", lambda: _fit_latency_budget(choice, order, data, base, budget_ms))
        inference_ms = latency.ms_after

    p = spec.pruning
    heads = len(outcome.kept_heads) if p.heads is not None else base.heads
    final_cfg = replace(base, dense=choice.dense, sparse=_sparse_features(data, choice.sparse), crosses=choice.crosses,
                        embedding_dims=choice.dims, heads=heads)
    valid_src = _source(data.valid, data, choice.dense, choice.sparse, choice.crosses)
    pruning = p.config()

    def retrain() -> tuple[dict[str, float], float, Compression | None]:
        final, seconds = fit(final_cfg, None, _source(data.train, data, choice.dense, choice.sparse, choice.crosses),
                             "retrain", pruning)
        return _evaluate(final, valid_src), seconds, _compression(final.model, p.method, outcome.kept_heads)

    _emit(on_event, kind="stage", stage="retrain")
    final_metrics, timings["retrain_s"], compression = hooks.remember("retrain", retrain)
    if inference_ms is None:
        inference_ms = _latency(final_cfg, valid_src)

    def reference() -> tuple[dict[str, float], float]:
        all_sparse = tuple(data.sparse_names)
        ref, seconds = fit(base, None, _source(data.train, data, base.dense, all_sparse, ()), "reference")
        return _evaluate(ref, _source(data.valid, data, base.dense, all_sparse, ())), seconds

    _emit(on_event, kind="stage", stage="reference")
    ref_metrics, timings["reference_s"] = hooks.remember("reference", reference)
    timings["total_s"] = time.perf_counter() - t0

    rank = {i: r for r, i in enumerate(kept, start=1)}
    scores = list(outcome.feature_scores) if outcome.feature_scores is not None else [math.nan] * len(names)
    kept_names = set(choice.dense) | set(choice.sparse)
    features = sorted(
        (SelectedFeature(name=n, kind="dense" if i < len(data.dense_names) else "sparse", rank=rank.get(i, i + 1),
                         score=_finite(scores[i]), embedding_dim=choice.dims.get(n))
         for i, n in enumerate(names) if n in kept_names),
        key=lambda f: f.rank)
    cross_rank = {c.name: r for r, c in enumerate(kept_crosses, start=1)}
    cross_scores = list(outcome.cross_scores)
    out_crosses = [SelectedCross(features=(c.a, c.b), rank=cross_rank[c.name], score=_finite(cross_scores[crosses.index(c)]),
                                 buckets=c.buckets, embedding_dim=choice.dims.get(c.name)) for c in choice.crosses]
    candidates = [Candidate(name=n, kind="dense" if i < len(data.dense_names) else "sparse", score=_finite(scores[i]),
                            selected=n in kept_names) for i, n in enumerate(names)]
    candidates += [Candidate(name=c.name, kind="cross", score=_finite(cross_scores[j]) if cross_scores else plan.screen[c.name],
                             selected=c in choice.crosses) for j, c in enumerate(crosses)]
    metrics = {
        "val_auc": final_metrics["auc"], "val_logloss": final_metrics["logloss"],
        "val_auc_all_features": ref_metrics["auc"], "val_logloss_all_features": ref_metrics["logloss"],
        "embedding_mb": mb(final_cfg.embedding_bytes()), "embedding_mb_all_features": mb(base.embedding_bytes()),
        "inference_ms": inference_ms, "inference_ms_all_features": _latency(base, _source(
            data.valid, data, base.dense, tuple(data.sparse_names), ())),
        "train_rows": plan.train_rows, "valid_rows": plan.valid_rows,
    }
    _emit(on_event, kind="stage", stage="done")
    return FeatureSet(name=spec.name, job_id=job_id, created_at=datetime.now(timezone.utc), spec=spec,
                      features=features, crosses=out_crosses, candidates=candidates, metrics=metrics,
                      timings={k: round(v, 3) for k, v in timings.items()}, pruning=compression, latency=latency)


def _compression(model: LargeEmbeddingModel, method: str, kept_heads: tuple[int, ...]) -> Compression | None:
    """The FeatureSet's record of what pruning kept, or None when the spec asked for none."""
    pruner = model.pruner
    if pruner is None and model.head_attention is None and not kept_heads:
        return None
    layers = pruner.summary() if pruner is not None else []
    weights = sum(layer.linear.weight.numel() for layer in pruner.layers) if pruner is not None else 0
    kept = sum(int(layer.effective_weight().count_nonzero()) for layer in pruner.layers) if pruner is not None else 0
    return Compression(method=method if pruner is not None else None,
                       block_sparsity=pruner.block_sparsity() if pruner is not None else 0.0,
                       layers=[PrunedLayer(**layer) for layer in layers], heads_kept=list(kept_heads),
                       tower_weights=weights, tower_weights_kept=kept)


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0
