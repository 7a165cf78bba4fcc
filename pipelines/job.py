"""``run_job(spec)``: one selection job, start to finish. The CLI, the API and schedules all call it.

This module only decides where the job runs: in this process, or on Ray Train workers
(:func:`pipelines.ray_job.run_ray_job`) when ``training.num_workers > 1`` or ``SEQATTN_ENGINE``
says so. The stages themselves, the same code either way, are in :mod:`pipelines.stages`:

1. Load and encode the Parquet data (train/validation split).
2. Pre-screen cross candidates (held-out gain, :mod:`seqattn_core.crosses`).
3. ONE training run of the gated LEM selects features, crosses and dimension blocks.
4. Enforce the budgets: memory by construction (knapsack gates), latency by trimming the last picks
   until the measured time of the final architecture fits.
5. Retrain the chosen configuration; train the all-features reference; report both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipelines.dataset import load_dataset
from pipelines.errors import SpecError
from pipelines.events import OnEvent, StageStarted, emit
from pipelines.export_model import KeepFinalModel, write_model
from pipelines.limits import JobLimits
from pipelines.preprocessing import write_preprocessing
from pipelines.roots import DataRoots
from pipelines.spec import FeatureSet, JobSpec
from pipelines.stages import IN_PROCESS, plan_job, run_stages, seed_everything
from pipelines.stream import stream_dataset, wants_stream

ENGINE_ENV = "SEQATTN_ENGINE"  # "ray" or "local": overrides the choice by training.num_workers


def use_ray(spec: JobSpec) -> bool:
    """Whether :func:`run_job` runs ``spec`` on Ray: more than one worker, unless ``SEQATTN_ENGINE``
    says ``ray`` or ``local``."""
    engine = os.environ.get(ENGINE_ENV, "").strip().lower()
    if engine in ("ray", "local"):
        return engine == "ray"
    if engine:
        raise SpecError(ENGINE_ENV, f"{engine!r} is not an engine; use 'ray' or 'local'")
    return spec.training.num_workers > 1


def run_job(spec: JobSpec, on_event: OnEvent | None = None, job_id: str | None = None,
            roots: DataRoots | None = None, limits: JobLimits | None = None,
            artifacts: Path | None = None) -> FeatureSet:
    """Run one selection job and return its (unversioned) FeatureSet. A service passes its data
    ``roots`` (every file is checked against them as it is opened) and its job size ``limits``.
    With ``artifacts``, the run's preprocessing (vocabularies, dense moments, label:
    :func:`pipelines.preprocessing.write_preprocessing`) and its trained final model
    (:func:`pipelines.export_model.write_model`) are written into that folder, which the registry
    publishes with the version and ``seqattn export`` reads (docs/export.md).

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

        return run_ray_job(spec, on_event=on_event, job_id=job_id, roots=roots, limits=limits, artifacts=artifacts)
    t0 = time.perf_counter()
    seed_everything(spec.training.seed)
    emit(on_event, StageStarted("load"))
    if wants_stream(spec.dataset, roots):
        data = stream_dataset(spec.dataset, seed=spec.training.seed, roots=roots)
    else:
        data = load_dataset(spec.dataset, seed=spec.training.seed, roots=roots)
    load_s = time.perf_counter() - t0
    plan = plan_job(spec, data, on_event, limits)
    # Only a run that exports keeps its final model alive through the reference stage.
    kept = KeepFinalModel() if artifacts is not None else None
    fs = run_stages(spec, data, plan, on_event, hooks=kept or IN_PROCESS, job_id=job_id,
                    timings={"load_s": load_s, **plan.timings}, started=t0)
    if artifacts is not None:
        write_preprocessing(Path(artifacts), data, fs)
        if kept is not None and kept.placed is not None:
            write_model(Path(artifacts), kept.placed, data, fs)
    return fs
