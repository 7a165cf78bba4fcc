"""Schedules: two service instances sharing one database never run the same slot twice; the
APScheduler timer queues a due schedule's run."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from services.selector_api.scheduler import ServiceScheduler, next_run
from services.selector_api.store import Store
from services.selector_api.worker import JobWorkers

SPEC = {"name": "s", "job": {"name": "ctr", "dataset": {"path": "-", "label": "y"}},
        "window": {"path": "/data", "size": 2}, "cadence": {"interval": "1h"}}


def _schedule(store: Store, name: str, due: datetime) -> None:
    store.create_schedule(name, json.dumps({**SPEC, "name": name}), due)


def test_two_instances_ticking_together_queue_each_run_once(tmp_path: Path) -> None:
    a, b = Store(tmp_path), Store(tmp_path)
    instances = [ServiceScheduler(s, JobWorkers(s)) for s in (a, b)]
    now = datetime.now(timezone.utc)
    for i in range(20):
        _schedule(a, f"s{i}", now - timedelta(minutes=1))
    gate = threading.Barrier(2)
    queued: list[list] = [[], []]

    def tick(k: int) -> None:
        gate.wait()
        queued[k] = instances[k].tick(now)

    threads = [threading.Thread(target=tick, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = queued[0] + queued[1]
    assert sorted(j.schedule for j in runs) == sorted(f"s{i}" for i in range(20))
    assert len(a.list_jobs(limit=1000)) == 20
    row = a.get_schedule("s0")
    assert row.runs == 1 and row.next_run_at > a.get_schedule("s0").created_at

    # The next slot while the previous run is still queued: skipped, not piled up.
    later = now + timedelta(hours=2)
    assert instances[1].tick(later) == [] and len(a.list_jobs(limit=1000)) == 20
    assert b.get_schedule("s0").next_run_at > b.get_schedule("s0").last_run_at


def test_next_run_follows_the_cadence() -> None:
    at = datetime(2026, 1, 1, 10, 30, tzinfo=timezone.utc)
    assert next_run(json.dumps(SPEC), at) == at + timedelta(hours=1)
    cron = json.dumps({**SPEC, "cadence": {"cron": "0 3 * * *"}})
    assert next_run(cron, at) == datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)


def test_the_timer_queues_a_due_schedule(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _schedule(store, "due", datetime.now(timezone.utc) - timedelta(seconds=1))
    scheduler = ServiceScheduler(store, JobWorkers(store), tick_s=0.2, heartbeat_s=0.2, stale_after_s=30)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while not store.list_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    jobs = store.list_jobs()
    assert len(jobs) == 1 and jobs[0].schedule == "due" and jobs[0].kind == "schedule"
