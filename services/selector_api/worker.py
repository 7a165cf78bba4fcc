"""Background job execution: a few worker threads take queued jobs from the database and run them.

Each worker runs its job in a process of its own (:mod:`services.selector_api.job_process`), with
the service's data roots and job limits, calling the same code as the CLI:
:func:`pipelines.job.run_job` for a job (which uses the Ray runner when ``training.num_workers > 1``
or ``SEQATTN_ENGINE=ray``) or :func:`pipelines.continual.run_step` for a schedule's run, and the
result is published through the registry. ``job_concurrency`` threads bound how many jobs run at
once; the rest wait in the jobs table (the queue), so they survive a restart.

Cancellation really stops a running job, not only relabels it: the worker thread checks the job's
flag at every progress event and every 0.2 s, and when it is set, raises :class:`JobCancelled`,
which stops the job's process (SIGTERM, then SIGKILL). The flag is set by ``DELETE /v1/jobs/{id}``
in this process, or by the heartbeat when another instance asked (it reads ``cancel_requested``).

Example::

    workers = JobWorkers(store, concurrency=1, on_published=cache.invalidate)
    workers.start()
    workers.wake()          # after queueing a job
    workers.stop()
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import SpecError
from pipelines.events import Event, OnEvent, Progress, StageStarted, WindowChosen, as_dict
from pipelines.limits import JobLimits
from pipelines.roots import DataRoots
from services.selector_api.job_process import JobProcessError, JobTask, default_memory_bytes, run_in_process
from services.selector_api.metrics import JobMetrics
from services.selector_api.store import JobRow, Store, instance_owner

log = logging.getLogger("seqattn.service.jobs")

PROGRESS_EVERY_S = 0.5


class JobCancelled(Exception):
    """Raised inside a job (from its progress callback) to stop it."""


class _Progress:
    """The live progress of one job, written to its row at most every ``PROGRESS_EVERY_S``."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.state: dict[str, Any] = {"stage": "queued", "stages": []}
        self.written = 0.0

    def update(self, event: Event) -> None:
        match event:
            case StageStarted(stage=stage):
                self.enter(stage)
            case WindowChosen(window=window, warm_start_from=warm):
                self.state.update(window=window, warm_start_from=warm)
                self.enter("window")
            case Progress():
                self.state.update({k: v for k, v in as_dict(event).items() if k != "kind"})
                if time.monotonic() - self.written >= PROGRESS_EVERY_S:
                    self.flush()

    def enter(self, stage: str) -> None:
        """A new stage: appended to ``stages`` (once) and written at once."""
        if not self.state["stages"] or self.state["stages"][-1] != stage:
            self.state["stages"] = [*self.state["stages"], stage]
        self.state["stage"] = stage
        self.flush()

    def flush(self) -> None:
        self.written = time.monotonic()
        self.store.set_progress(self.job_id, json.loads(json.dumps(self.state, default=str)))


class JobWorkers:
    """``concurrency`` threads running queued jobs; see the module docstring."""

    def __init__(self, store: Store, concurrency: int = 1,
                 on_published: Callable[[str], None] | None = None, metrics: JobMetrics | None = None,
                 roots: DataRoots | None = None, limits: JobLimits | None = None,
                 max_memory_bytes: int | None = None) -> None:
        self.store = store
        self.roots, self.limits = roots, limits
        self.max_memory_bytes = max_memory_bytes or default_memory_bytes()
        self.metrics = metrics
        self.concurrency = concurrency
        self.owner = instance_owner()
        self.on_published = on_published
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, threading.Event] = {}
        self._shutdown_ids: set[str] = set()

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._loop, name=f"seqattn-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """A job was queued: let an idle worker look now rather than at its next poll."""
        with self._wake:
            self._wake.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones are stopped and marked ``interrupted`` (resubmit them)."""
        self._stopping.set()
        for job_id, flag in list(self._running.items()):
            self._shutdown_ids.add(job_id)
            flag.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def cancel(self, job_id: str) -> None:
        """Stop ``job_id`` at its next event if it runs here (the database flag covers other instances)."""
        flag = self._running.get(job_id)
        if flag is not None:
            flag.set()

    def running(self) -> list[str]:
        return list(self._running)

    def heartbeat(self) -> None:
        """Prove this instance's jobs alive, and pick up cancellations requested elsewhere."""
        for job_id in self.store.heartbeat(self.running()):
            self.cancel(job_id)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next_job(self.owner)
            except Exception:  # a locked or vanished database must not kill the worker
                log.exception("could not claim a job")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(1.0)
                continue
            self._run(job)

    def _run(self, job: JobRow) -> None:
        flag = threading.Event()
        self._running[job.id] = flag
        progress = _Progress(self.store, job.id)

        def poll() -> None:
            if flag.is_set():
                raise JobCancelled(job.id)

        def on_event(event: Event) -> None:
            poll()
            progress.update(event)

        started = time.perf_counter()

        def finish(state: str, **details: Any) -> None:
            # Counted only when this worker's end is the one recorded (not one an orphan sweep wrote first).
            if self.store.finish_job(job.id, state, **details) and self.metrics is not None:
                self.metrics.observe(state, time.perf_counter() - started)

        log.info("job started", extra={"job_id": job.id, "feature_set": job.name, "kind": job.kind})
        try:
            if flag.is_set():
                raise JobCancelled(job.id)
            record = self._execute(job, on_event, poll)
            progress.state["stage"] = "done"
            progress.flush()
            finish("succeeded", record=record)
            log.info("job succeeded", extra={"job_id": job.id, "feature_set": job.name, "version": record.version,
                                             "decision": record.decision,
                                             "seconds": round(time.perf_counter() - started, 3)})
            if self.on_published is not None:
                self.on_published(record.name)
        except JobCancelled:
            if job.id in self._shutdown_ids:
                finish("interrupted", error_message="the service stopped while this job ran; resubmit it")
            else:
                finish("cancelled", error_message="cancelled by request")
            log.info("job stopped", extra={"job_id": job.id, "feature_set": job.name})
        except SpecError as exc:
            finish("failed", error=exc)
            log.info("job failed on its input", extra={"job_id": job.id, "field": exc.field, "problem": exc.message})
        except JobProcessError as exc:  # over its memory, killed, or raised in its process (logged there)
            finish("failed", error_message=str(exc))
            log.info("job failed", extra={"job_id": job.id, "feature_set": job.name, "problem": str(exc)})
        except Exception as exc:  # the traceback goes to the log; the job shows one line
            log.exception("job failed", extra={"job_id": job.id, "feature_set": job.name})
            finish("failed", error_message=f"{type(exc).__name__}: {exc}")
        finally:
            self._running.pop(job.id, None)

    def _execute(self, job: JobRow, on_event: OnEvent, poll: Callable[[], None]) -> Any:
        # The job's process writes its export artifacts here; they are published with the version.
        staging = Path(self.store.home) / "staging" / job.id
        task = JobTask(job.kind, job.spec, job.id, str(self.store.home), self.roots, self.limits,
                       artifacts=str(staging) if job.kind == "job" else None)
        try:
            kind, result = run_in_process(task, on_event, poll, self.max_memory_bytes)
            if kind == "feature_set":
                found = staging if (staging / "preprocessing.json").is_file() else None
                return self.store.publish(result.model_copy(update={"job_id": job.id}), source="job", artifacts=found)
            return result  # a schedule's run published in its process, through the same registry
        finally:
            shutil.rmtree(staging, ignore_errors=True)
