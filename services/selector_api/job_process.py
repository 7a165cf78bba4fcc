"""Each job in its own worker process, with its memory watched, so that no job can take the API down.

Jobs used to train inside the API process: a job asking for ``embedding_dim: 4096`` on 4,000 rows
took it from 0.7 GB to 5.8 GB, and an out-of-memory kill of that process is the whole service.
Now the worker thread that claimed a job starts a process for it and waits on a pipe. The process
runs :func:`pipelines.job.run_job` (or a schedule's :func:`pipelines.continual.run_step`) and sends
back every progress event and then its result. The thread watches three things. First, the
resident memory of the process and its children, which is stopped with SIGKILL above
``max_memory_bytes`` (``SEQATTN_JOB_MAX_MEMORY_MB``). Second, the process dying (the kernel's OOM
killer picks the largest process, which is now the job). Third, cancellation: SIGTERM, which unwinds
the job and lets Ray's local cluster, when the job started one, shut down.

Processes come from a *forkserver*: a clean process started once, which has imported the training
stack. A job then starts in well under a second. A plain fork of the API process would copy the
locks its threads hold, and spawn would import torch again for every job (seconds). The job's
environment is the service's at the moment the job starts, not the forkserver's.

Example::

    task = JobTask("job", spec.model_dump_json(), "j-0123456789abcdef", home=".seqattn")
    kind, result = run_in_process(task, on_event=print, poll=lambda: None, max_memory_bytes=8 * 2**30)
    # kind == "feature_set": result is the FeatureSet (the caller publishes it); "record" for a schedule
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from pipelines.errors import SpecError
from pipelines.events import Event, OnEvent
from pipelines.limits import JobLimits
from pipelines.roots import DataRoots

log = logging.getLogger("seqattn.service.jobs")

POLL_S = 0.2  # how often memory, cancellation and liveness are looked at
STOP_GRACE_S = 10.0  # SIGTERM, then this long to unwind, then SIGKILL
PRELOAD = ["pipelines.job", "pipelines.continual"]


class JobProcessError(Exception):
    """The job's process went over its memory, died, or raised; ``str()`` is the job's one-line error."""


@dataclass(frozen=True)
class JobTask:
    """What a job's process needs: everything picklable, nothing from the API process's state."""

    kind: str  # "job" (a JobSpec) or "schedule" (a ScheduleSpec's run)
    spec_json: str
    job_id: str
    home: str
    roots: DataRoots | None = None
    limits: JobLimits | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    # A job's export artifacts (vocabularies, model) go here; the caller publishes them with the version.
    artifacts: str | None = None


def default_memory_bytes() -> int:
    """A job process's memory ceiling when none is set: half of this machine's memory."""
    return psutil.virtual_memory().total // 2


def _context() -> mp.context.BaseContext:
    if "forkserver" not in mp.get_all_start_methods():  # Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _child(conn: Connection, task: JobTask) -> None:
    """The job process: run the task, send ``("event", Event)`` messages, then one result message."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: finally blocks, Ray's atexit
    _die_with_parent()
    os.environ.clear()
    os.environ.update(task.env)
    logging.basicConfig(level=logging.ERROR)

    def on_event(event: Event) -> None:
        conn.send(("event", event))

    try:
        if task.kind == "job":
            from pipelines.job import run_job
            from pipelines.spec import load_spec

            fs = run_job(load_spec(json.loads(task.spec_json)), on_event=on_event, job_id=task.job_id,
                         roots=task.roots, limits=task.limits,
                         artifacts=Path(task.artifacts) if task.artifacts else None)
            conn.send(("feature_set", fs.model_dump_json()))
        else:
            from pipelines.continual import load_schedule, run_step
            from pipelines.registry import Registry

            # run_step publishes through the registry, which logs a promotion as by "schedule:NAME".
            step = run_step(load_schedule(json.loads(task.spec_json)), registry=Registry(task.home),
                            on_event=on_event, roots=task.roots, limits=task.limits)
            conn.send(("record", step.record))
    except SpecError as exc:
        conn.send(("spec_error", exc.field, exc.message))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent goes. Its parent is the forkserver, which exits
    with the service, so a service killed with SIGKILL leaves no job training (or publishing) on."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and its descendants (a local Ray cluster the job started, too)."""
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _died(code: int | None) -> JobProcessError:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = ": most likely the machine ran out of memory" if -code == signal.SIGKILL else ""
        return JobProcessError(f"the job's process was killed by {name}{hint}; resubmit it with a smaller job "
                               "or on a larger machine")
    return JobProcessError(f"the job's process exited with code {code} before it sent a result")


def run_in_process(task: JobTask, on_event: OnEvent, poll: Callable[[], None],
                   max_memory_bytes: int) -> tuple[str, Any]:
    """Run ``task`` in a new process; returns ``("feature_set", FeatureSet)`` or ``("record", VersionRecord)``.

    ``on_event`` gets each progress event and ``poll`` is called every :data:`POLL_S`; either may
    raise (a cancellation) to stop the job: its process is then stopped before the error goes on.
    Raises :class:`SpecError` for bad input found in the process and :class:`JobProcessError` when
    the process goes over ``max_memory_bytes``, dies, or raises anything else.
    """
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, task), name=f"seqattn-{task.job_id}", daemon=True)
    proc.start()
    send.close()  # only the child writes: its end closing is how a death shows up here
    watched = psutil.Process(proc.pid)
    checked = 0.0
    try:
        while True:
            if receive.poll(POLL_S):
                try:
                    message = receive.recv()
                except EOFError:  # the process ended without a result
                    proc.join(STOP_GRACE_S)
                    raise _died(proc.exitcode) from None
                if message[0] != "event":
                    break
                on_event(message[1])
            if time.monotonic() - checked >= POLL_S:
                checked = time.monotonic()
                poll()
                used = _rss(watched)
                if used > max_memory_bytes:
                    proc.kill()
                    raise JobProcessError(
                        f"the job used {used / 2**20:,.0f} MB, more than this service's limit of "
                        f"{max_memory_bytes / 2**20:,.0f} MB per job (an operator raises it with "
                        "SEQATTN_JOB_MAX_MEMORY_MB); try a smaller embedding_dim, batch_size or dataset")
        proc.join(STOP_GRACE_S)
    finally:
        _stop(proc)
        receive.close()
    kind, *rest = message
    if kind == "spec_error":
        raise SpecError(rest[0], rest[1])
    if kind == "error":
        log.error("job failed in its process", extra={"job_id": task.job_id, "traceback": rest[1]})
        raise JobProcessError(rest[0])
    if kind == "feature_set":
        from pipelines.spec import FeatureSet

        return kind, FeatureSet.model_validate_json(rest[0])
    return kind, rest[0]


def _stop(proc: mp.process.BaseProcess) -> None:
    """SIGTERM, a grace period to unwind, then SIGKILL: no job process outlives its job."""
    if proc.is_alive():
        proc.terminate()
        proc.join(STOP_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
