"""The in-process scheduler: APScheduler drives three periodic tasks; their state is in the database.

- ``tick``: queue a run for every schedule whose ``next_run_at`` has passed. The claim is a
  compare-and-set on ``next_run_at`` inside one SQLite write transaction
  (:meth:`~services.selector_api.store.Store.claim_due_schedules`), so when two service instances
  share ``SEQATTN_HOME`` and tick at the same moment, exactly one of them queues the run. The run
  itself is a job of kind ``schedule``: it has progress, can be cancelled, and calls
  :func:`pipelines.continual.run_step`.
- ``heartbeat``: running jobs prove they are alive, and pick up cancellations from other instances.
- ``sweep``: running jobs whose process died are marked ``interrupted``.

APScheduler (3.x, ``BackgroundScheduler``) only keeps time here; what is due, and who ran it, lives
in the ``schedules`` and ``jobs`` tables, so a restart (or a second instance) carries on from the
database, and a missed run is made once when the service comes back (runs coalesce).

Example::

    scheduler = ServiceScheduler(store, workers, tick_s=5, heartbeat_s=2, stale_after_s=30)
    scheduler.start()
    scheduler.tick()        # what the timer calls; returns the jobs it queued
    scheduler.stop()
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from services.selector_api.store import JobRow, Store
from services.selector_api.worker import JobWorkers

log = logging.getLogger("seqattn.service.scheduler")


def next_run(spec_json: str, after: datetime) -> datetime:
    """The schedule's next run time strictly after ``after`` (its cadence: cron or interval)."""
    from pipelines.continual import Cadence

    return Cadence.model_validate(json.loads(spec_json)["cadence"]).next_run(after)


class ServiceScheduler:
    """Timer for schedules, heartbeats and the orphan sweep; see the module docstring."""

    def __init__(self, store: Store, workers: JobWorkers, *, tick_s: float = 5.0, heartbeat_s: float = 2.0,
                 stale_after_s: float = 30.0, schedules_enabled: bool = True) -> None:
        self.store, self.workers = store, workers
        self.tick_s, self.heartbeat_s, self.stale_after_s = tick_s, heartbeat_s, stale_after_s
        self.schedules_enabled = schedules_enabled
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)

    def start(self) -> None:
        opts = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        self._scheduler.add_job(self._safe(self.workers.heartbeat), "interval", seconds=self.heartbeat_s,
                                id="heartbeat", **opts)
        self._scheduler.add_job(self._safe(self.sweep), "interval", seconds=max(1.0, self.stale_after_s / 3),
                                id="sweep", **opts)
        if self.schedules_enabled:
            self._scheduler.add_job(self._safe(self.tick), "interval", seconds=self.tick_s, id="schedules",
                                    next_run_time=datetime.now(timezone.utc), **opts)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def tick(self, now: datetime | None = None) -> list[JobRow]:
        """Queue the due schedules' runs (those this instance won); returns them."""
        queued = self.store.claim_due_schedules(now or datetime.now(timezone.utc), next_run)
        for job in queued:
            log.info("schedule run queued", extra={"schedule": job.schedule, "job_id": job.id})
        if queued:
            self.workers.wake()
        return queued

    def sweep(self) -> list[str]:
        dead = self.store.interrupt_orphans(self.stale_after_s)
        for job_id in dead:
            log.warning("job interrupted: its process is gone", extra={"job_id": job_id})
        return dead

    @staticmethod
    def _safe(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except Exception:  # a failed tick must not stop the timer
                log.exception("periodic task %s failed", getattr(fn, "__name__", fn))

        return run
