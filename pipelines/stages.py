"""The stages of one selection job, the same code in process and on every Ray Train worker.

:func:`pipelines.job.run_job` calls them in this process; :mod:`pipelines.ray_job` calls them on
each worker with :class:`~pipelines.checkpoints.CheckpointedStages` as the hooks. In order:

1. :func:`plan_job` checks the spec against the data (:func:`check_selection`) and fixes the search
   space: the cross candidates of the pre-screen (:mod:`seqattn_core.crosses`), the gated config.
2. :func:`run_stages`: ONE training run of the gated LEM selects features, crosses and dimension
   blocks (:func:`fit`, read back by :func:`selection_outcome`); the latency budget trims the last
   picks until the measured time of the final architecture fits; the chosen configuration is
   retrained and the all-features reference trained, both scored by :func:`evaluate`.

The pieces are public so that the benchmarks (``bench/``) train and score their variants with the
product's own code rather than a copy of it.

Example (the in-process run, as :func:`pipelines.job.run_job` does it)::

    data = load_dataset(spec.dataset, seed=spec.training.seed)
    plan = plan_job(spec, data, on_event=print)
    fs = run_stages(spec, data, plan, on_event=print)   # hooks: IN_PROCESS
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
import torch

from pipelines.dataset import EncodedDataset, EncodedSplit
from pipelines.engine import Placed, place
from pipelines.errors import SpecError
from pipelines.events import OnEvent, Progress, StageStarted, emit
from pipelines.limits import JobLimits
from pipelines.spec import (
    Candidate,
    Compression,
    FeatureSet,
    JobSpec,
    LatencyTrim,
    PrunedLayer,
    SelectedCross,
    SelectedFeature,
)
from pipelines.stream import StreamedSplit, StreamSource
from seqattn_core.batches import BatchSource, first_ids
from seqattn_core.crosses import CrossFeature, bucket_budget, prescreen_pairs
from seqattn_core.dimensions import BYTES_PER_FLOAT, mb
from seqattn_core.latency import LatencyModel, measure_inference_ms
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SelectionConfig, SparseFeature, warmup_for
from seqattn_core.pruning import PruningConfig
from seqattn_core.training import (
    StepEvent,
    StreamingBinaryMetrics,
    binary_metrics,
    gate_learning_rate,
    predict,
    predict_batches,
    train,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Source = BatchSource | StreamSource  # a split's batches: sliced from arrays, or streamed from Parquet
LATENCY_BATCH = 1024
EVAL_BATCH = 8192


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
    """The model's sparse features ``names``, with their table sizes and whether they hold lists."""
    return tuple(SparseFeature(n, data.cardinalities[n], n in data.multi_valued) for n in names)


def batch_source(split: EncodedSplit | StreamedSplit, data: EncodedDataset, dense: tuple[str, ...],
                 sparse: tuple[str, ...], crosses: tuple[CrossFeature, ...]) -> Source:
    """The batches of a model that reads ``dense``, ``sparse`` and ``crosses`` from ``split``: sliced
    from its arrays, or read from its files again for every pass when it is streamed.

    The crosses' ids are computed from their two features, which the model need not keep itself:
    those helper columns are dropped once the crosses are built, so a batch's KJT holds exactly the
    model's tables (the keys the model's ``EmbeddingBagCollection`` expects).
    """
    cols = [data.dense_names.index(d) for d in dense]
    # Crosses read their two features' ids, which may not be kept themselves.
    needed = set(sparse) | {f for c in crosses for f in (c.a, c.b)}
    source: Source
    if isinstance(split, StreamedSplit):
        source = split.source(crosses, data.cardinalities, cols)
        source.keep_keys(set(sparse) | {c.name for c in crosses})
        return source
    source = BatchSource(split.dense, {n: split.sparse[n] for n in data.sparse_names if n in needed},
                         split.labels, crosses, data.cardinalities, dense_columns=cols)
    source.keep_keys(set(sparse) | {c.name for c in crosses})
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


def fit(config: LEMConfig, selection: SelectionConfig | None, train_src: Source, spec: JobSpec,
        stage: str, on_event: OnEvent | None, hooks: StageHooks = IN_PROCESS,
        batch_size: int | None = None, pruning: PruningConfig | None = None) -> tuple[Placed, float]:
    """Place and train one model of ``config`` (gated when ``selection`` is given); returns (placed, seconds).

    Every training stage of a job is one call: the seeding, placement, optimizers, gate learning
    rate and loop are the job's, so a benchmark that calls it trains exactly as a job does.
    ``stage`` names the run in progress events and checkpoints, and seeds its initial weights.
    ``batch_size`` is this process's share of ``spec.training.batch_size`` (on W Ray workers, 1/W
    of it, so a step sees the same rows)."""
    t = spec.training
    batch_size = batch_size or t.batch_size
    # Each stage's initial weights depend on (seed, stage) only, not on what ran before it in this
    # process: a worker restarted from a checkpoint then builds the same models as an unbroken run.
    torch.manual_seed(t.seed * 1_000_003 + zlib.crc32(stage.encode()))
    model = LargeEmbeddingModel(config, selection, device=torch.device("meta"), pruning=pruning)
    steps = train_src.num_batches(batch_size)
    placed = place(model, t.learning_rate, gate_learning_rate(model, steps * t.epochs, t.learning_rate))
    first_epoch = hooks.start(stage, placed)

    def report(ev: StepEvent) -> None:
        if ev.epoch_end or ev.step % 10 == 0:
            emit(on_event, Progress(stage, ev.epoch, ev.step, ev.total_steps, ev.rows, ev.loss, ev.picks))

    start = time.perf_counter()
    train(placed.forward, placed.model, placed.optimizer,
          lambda e: train_src.batches(batch_size, seed=t.seed * 1000 + e),
          steps, t.epochs, gate_optimizer=placed.optimizer, start_epoch=first_epoch, stage=stage, on_step=report,
          on_epoch_end=lambda e: hooks.epoch_end(stage, placed, e))
    return placed, time.perf_counter() - start


def evaluate(placed: Placed, source: Source) -> dict[str, float]:
    """Validation AUC and log-loss (``auc``, ``logloss``) of a trained model over every row of
    ``source``: exact over arrays; over a stream, from binned counts (AUC within ~1e-4), so that
    no per-row array is kept."""
    if isinstance(source, BatchSource):
        return binary_metrics(*predict(placed.forward, source.batches(EVAL_BATCH)))
    metrics = StreamingBinaryMetrics()
    for probs, labels in predict_batches(placed.forward, source.batches(EVAL_BATCH)):
        metrics.update(probs, labels)
    auc, logloss = metrics.compute()
    return {"auc": auc, "logloss": logloss}


def _latency(config: LEMConfig, source: Source) -> float:
    """Measured inference time of ``config`` on the first ``LATENCY_BATCH`` rows of ``source``, in ms."""
    torch.manual_seed(0)
    batches = source.batches(LATENCY_BATCH)
    try:
        first = next(batches)
    finally:
        batches.close()  # a stream's reader thread stops here
    return measure_inference_ms(LargeEmbeddingModel(config), first)


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

    src = batch_source(data.valid, data, choice.dense, choice.sparse, choice.crosses)

    def measure(c: Choice) -> float:
        return _latency(config_of(c),
                        batch_source(data.valid, data, c.dense, c.sparse, c.crosses) if c != choice else src)

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


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators (a job's start, in process and on each worker)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def plan_job(spec: JobSpec, data: EncodedDataset, on_event: OnEvent | None = None,
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
        emit(on_event, StageStarted("prescreen"))

        def progress(done: int, total: int) -> None:
            emit(on_event, Progress("prescreen", epoch=None, step=done, total_steps=total))

        single = [n for n in data.sparse_names if n not in data.multi_valued]
        # Pairs are scored on the rows in memory: all of them, or a streamed dataset's train sample.
        rows = data.sample if data.sample is not None else data.train
        assert isinstance(rows, EncodedSplit)
        ids = {n: first_ids(*rows.sparse[n]) for n in single}
        ranked = prescreen_pairs(ids, data.cardinalities, rows.labels, max_candidates=max(16, 4 * sel.crosses),
                                 max_buckets=bucket_budget(len(data.train)), seed=spec.training.seed,
                                 on_progress=progress)
        crosses = tuple(c for c, _ in ranked)
        screen = {c.name: g for c, g in ranked}
        timings["prescreen_s"] = time.perf_counter() - t0

    base = LEMConfig(dense=tuple(data.dense_names), sparse=_sparse_features(data, tuple(data.sparse_names)),
                     embedding_dim=spec.training.embedding_dim, interaction=spec.training.interaction,
                     attention_heads=spec.training.attention_heads)
    search_cfg = replace(base, crosses=crosses, embedding_dim=search_dim)
    selection = SelectionConfig(features=sel.features, crosses=min(sel.crosses, len(crosses)), dim_choices=choices,
                                max_embedding_bytes=max_bytes, reference_dim=spec.training.embedding_dim,
                                keep_heads=spec.pruning.heads, warmup=warmup_for(spec.training.epochs),
                                gate_holdout=sel.gate_holdout)
    return Plan(base, search_cfg, selection, crosses, screen, len(data.train), len(data.valid), timings)


def selection_outcome(model: LargeEmbeddingModel, seconds: float) -> SelectionOutcome:
    """What a gated ``model`` chose once trained (its kept features, crosses, widths and heads) and
    every candidate's score; ``seconds`` is the training time recorded with it."""
    fa, ca = model.feature_attention, model.cross_attention
    return SelectionOutcome(
        kept=tuple(model.kept_features()), kept_crosses=tuple(model.kept_crosses()), dims=dict(model.chosen_dims()),
        feature_scores=tuple(fa.scores.tolist()) if fa is not None else None,
        cross_scores=tuple(ca.scores.tolist()) if ca is not None else (), seconds=seconds,
        kept_heads=tuple(model.kept_heads()))


def run_stages(spec: JobSpec, data: EncodedDataset, plan: Plan, on_event: OnEvent | None = None,
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

    def fit_stage(config: LEMConfig, selection: SelectionConfig | None, src: Source, stage: str,
                  pruning: PruningConfig | None = None) -> tuple[Placed, float]:
        return fit(config, selection, src, spec, stage, on_event, hooks, batch_size, pruning)

    def select() -> SelectionOutcome:
        train_src = batch_source(data.train, data, plan.search.dense, tuple(data.sparse_names), crosses)
        placed, seconds = fit_stage(plan.search, plan.selection, train_src, "selection")
        return selection_outcome(placed.model, seconds)

    emit(on_event, StageStarted("selection"))
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
        emit(on_event, StageStarted("latency"))
        budget_ms = spec.constraints.max_inference_ms
        choice, latency = hooks.agree("latency", lambda: _fit_latency_budget(choice, order, data, base, budget_ms))
        inference_ms = latency.ms_after

    p = spec.pruning
    heads = len(outcome.kept_heads) if p.heads is not None else base.attention_heads
    final_cfg = replace(base, dense=choice.dense, sparse=_sparse_features(data, choice.sparse), crosses=choice.crosses,
                        embedding_dims=choice.dims, attention_heads=heads)
    valid_src = batch_source(data.valid, data, choice.dense, choice.sparse, choice.crosses)
    pruning = p.config()

    def retrain() -> tuple[dict[str, float], float, Compression | None]:
        train_src = batch_source(data.train, data, choice.dense, choice.sparse, choice.crosses)
        final, seconds = fit_stage(final_cfg, None, train_src, "retrain", pruning)
        return evaluate(final, valid_src), seconds, _compression(final.model, p.method, outcome.kept_heads)

    emit(on_event, StageStarted("retrain"))
    final_metrics, timings["retrain_s"], compression = hooks.remember("retrain", retrain)
    if inference_ms is None:
        inference_ms = _latency(final_cfg, valid_src)

    def reference() -> tuple[dict[str, float], float]:
        all_sparse = tuple(data.sparse_names)
        ref, seconds = fit_stage(base, None, batch_source(data.train, data, base.dense, all_sparse, ()), "reference")
        return evaluate(ref, batch_source(data.valid, data, base.dense, all_sparse, ())), seconds

    emit(on_event, StageStarted("reference"))
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
    out_crosses = [SelectedCross(features=(c.a, c.b), rank=cross_rank[c.name],
                                 score=_finite(cross_scores[crosses.index(c)]), buckets=c.buckets,
                                 embedding_dim=choice.dims.get(c.name)) for c in choice.crosses]
    candidates = [Candidate(name=n, kind="dense" if i < len(data.dense_names) else "sparse", score=_finite(scores[i]),
                            selected=n in kept_names) for i, n in enumerate(names)]
    candidates += [Candidate(name=c.name, kind="cross",
                             score=_finite(cross_scores[j]) if cross_scores else plan.screen[c.name],
                             selected=c in choice.crosses) for j, c in enumerate(crosses)]
    metrics = {
        "val_auc": final_metrics["auc"], "val_logloss": final_metrics["logloss"],
        "val_auc_all_features": ref_metrics["auc"], "val_logloss_all_features": ref_metrics["logloss"],
        "embedding_mb": mb(final_cfg.embedding_bytes()), "embedding_mb_all_features": mb(base.embedding_bytes()),
        "inference_ms": inference_ms, "inference_ms_all_features": _latency(base, batch_source(
            data.valid, data, base.dense, tuple(data.sparse_names), ())),
        "train_rows": plan.train_rows, "valid_rows": plan.valid_rows,
    }
    emit(on_event, StageStarted("done"))
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
    """``x``, or 0.0 for a score that is not finite (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else 0.0
