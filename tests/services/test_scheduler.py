"""Schedules: two service instances sharing one database never run the same slot twice (threads
with their own connections, and two live servers); the APScheduler timer queues a due schedule's run."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelines.synth import write_partitioned_synth
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


@pytest.mark.slow
def test_two_live_servers_sharing_a_home_run_each_slot_once(tmp_path: Path, data_root: Path,
                                                           server_factory: Any) -> None:
    write_partitioned_synth(data_root / "two-servers", days=2, rows_per_day=500, drift_day=None, seed=0, n_noise=3)
    home = tmp_path / "home"
    store = Store(home)
    spec = {"name": "every-second", "job": {"name": "ctr", "dataset": {"path": "-", "label": "no-such-label"}},
            "window": {"path": str(data_root / "two-servers"), "size": 1}, "cadence": {"interval": "1s"}}
    store.create_schedule("every-second", json.dumps(spec), datetime.now(timezone.utc))
    servers = [server_factory(home, [data_root], schedule_tick_s=0.2) for _ in range(2)]
    deadline = time.monotonic() + 120  # the first run of each server waits for torch's import
    while sum(j.state == "failed" for j in store.list_jobs(limit=1000)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # a few more slots with both servers warm
    for server in servers:
        server.stop()
    jobs = sorted(store.list_jobs(limit=1000), key=lambda j: j.created_at)
    assert len(jobs) >= 4 and all(j.schedule == "every-second" for j in jobs)
    assert store.get_schedule("every-second").runs == len(jobs)
    # Each run was claimed at or after the slot the previous claim set (one cadence later): no slot twice.
    created = [datetime.strptime(j.created_at, "%Y-%m-%dT%H:%M:%S.%fZ") for j in jobs]
    assert all((b - a).total_seconds() >= 0.99 for a, b in zip(created, created[1:])), created
    # Runs never overlapped, and each went through pipelines.continual (the bad label fails it there).
    assert {j.state for j in jobs} <= {"failed", "interrupted"}
    assert any(j.error_field == "dataset.label" for j in jobs), [(j.state, j.error_field) for j in jobs]
