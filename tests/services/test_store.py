"""The store's invariants under concurrency, with real SQLite connections from several threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from live_server import publish_versions

from services.selector_api.errors import Conflict, NotFound, QueueFull
from services.selector_api.store import Store, instance_owner


def test_each_queued_job_is_claimed_by_exactly_one_worker(tmp_path: Path) -> None:
    store = Store(tmp_path)
    queued = {store.create_job("job", "x", "{}")[0].id for _ in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(4)

    def worker() -> None:
        own = Store(tmp_path)  # its own connections, as another worker or instance would have
        gate.wait()
        while (job := own.claim_next_job(instance_owner())) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(queued)


def test_idempotency_key_maps_to_one_job_per_body(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a, created = store.create_job("job", "x", "{}", idempotency_key="k", body_hash="h1")
    b, again = store.create_job("job", "x", "{}", idempotency_key="k", body_hash="h1")
    assert created and not again and a.id == b.id
    with pytest.raises(Conflict) as err:
        store.create_job("job", "x", "{}", idempotency_key="k", body_hash="h2")
    assert err.value.field == "Idempotency-Key"


def test_queue_limit_and_cancel_states(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first, _ = store.create_job("job", "x", "{}", max_queued=2)
    store.create_job("job", "x", "{}", max_queued=2)
    with pytest.raises(QueueFull):
        store.create_job("job", "x", "{}", max_queued=2)
    assert store.request_cancel(first.id).state == "cancelled"
    with pytest.raises(Conflict):
        store.request_cancel(first.id)
    with pytest.raises(NotFound):
        store.request_cancel("j-0000000000000000")
    running = store.claim_next_job("me")
    assert running is not None and store.request_cancel(running.id).cancel_requested
    assert store.heartbeat([running.id]) == {running.id}


def test_orphans_of_a_dead_process_are_interrupted_and_cannot_finish(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    orphan, _ = store.create_job("job", "x", "{}")
    store.claim_next_job(f"{store.host}:{dead_pid}:abcd")
    alive, _ = store.create_job("job", "x", "{}")
    store.claim_next_job(f"{store.host}:{os.getpid()}:abcd")
    assert store.interrupt_orphans(stale_after_s=60) == [orphan.id]
    assert store.get_job(orphan.id).state == "interrupted" and store.get_job(alive.id).state == "running"
    assert not store.finish_job(orphan.id, "succeeded")  # a late finish cannot overwrite it
    # Another host's job: only a stale heartbeat tells.
    remote, _ = store.create_job("job", "x", "{}")
    store.claim_next_job("elsewhere:1:abcd")
    assert store.interrupt_orphans(stale_after_s=60) == []
    assert set(store.interrupt_orphans(stale_after_s=0)) == {alive.id, remote.id}


def test_promote_rollback_history(tmp_path: Path) -> None:
    publish_versions(tmp_path, "ctr", (0.70, 0.71, 0.72))
    store = Store(tmp_path)
    assert store.promoted_version("ctr") == 3
    store.promote("ctr", 1)
    store.promote("ctr", 2)
    assert store.rollback("ctr").version == 1
    assert [(p["version"], p["previous_version"], p["source"]) for p in store.promotions("ctr")] == [
        (1, None, "publish"), (2, 1, "publish"), (3, 2, "publish"),  # the registry logs its own promotions
        (1, 3, "manual"), (2, 1, "manual"), (1, 2, "rollback")]
    with pytest.raises(Conflict) as err:
        store.promote("ctr", 2, expected=3)
    assert err.value.field == "expected_version"
    with pytest.raises(NotFound):
        store.promote("nope", 1)

