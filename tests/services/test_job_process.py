"""Jobs run in a process of their own: its memory is watched, its death fails the job and not the
service, and it reads only the data roots and the sizes the service allows."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from live_server import AUTH, job_spec, wait_job

from pipelines.events import Event, Progress
from pipelines.limits import JobLimits
from pipelines.roots import DataRoots
from pipelines.spec import load_spec
from services.selector_api.job_process import JobProcessError, JobTask, run_in_process
from services.selector_api.store import Store
from services.selector_api.worker import JobWorkers

pytestmark = pytest.mark.slow


def _tiny(data_root: Path, **over: Any) -> str:
    spec = job_spec(**over)
    spec["dataset"]["path"] = str(data_root / "synth")
    return load_spec(spec).model_dump_json()


def test_a_job_over_its_memory_limit_fails_and_the_service_goes_on(tmp_path: Path, data_root: Path,
                                                                     server_factory: Any) -> None:
    server = server_factory(tmp_path / "home", [data_root], job_max_memory_mb=64)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job = wait_job(client, client.post("/v1/jobs", json=job_spec(), headers=AUTH).json()["id"])
        assert job["state"] == "failed", job
        message = job["error"]["message"]
        assert "more than this service's limit of 64 MB per job" in message and "SEQATTN_JOB_MAX_MEMORY_MB" in message
        assert client.get("/healthz").status_code == 200 and server.proc.poll() is None
        assert client.get("/v1/feature-sets/ctr").status_code == 404  # nothing published


def test_a_job_process_killed_by_the_kernel_fails_with_the_signal(data_root: Path, tmp_path: Path) -> None:
    task = JobTask("job", _tiny(data_root, training={"epochs": 20}), "j-0000000000000001", str(tmp_path))
    killed: list[int] = []

    def on_event(event: Event) -> None:
        if killed:
            return
        # The job's process is a child of the forkserver, itself a child of this process.
        me = psutil.Process()
        job = [p for p in me.children(recursive=True) if p.ppid() != me.pid]
        newest = max(job, key=lambda p: p.create_time())
        os.kill(newest.pid, signal.SIGKILL)  # what the OOM killer does
        killed.append(newest.pid)

    with pytest.raises(JobProcessError, match="killed by SIGKILL: most likely the machine ran out of memory"):
        run_in_process(task, on_event, poll=lambda: None, max_memory_bytes=2**40)
    assert killed


def test_a_cancelled_job_leaves_no_process_behind(data_root: Path, tmp_path: Path) -> None:
    task = JobTask("job", _tiny(data_root, training={"epochs": 40}), "j-0000000000000002", str(tmp_path))
    seen: list[int] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    class Stop(Exception):
        pass

    def on_event(event: Event) -> None:
        if isinstance(event, Progress) and event.step:
            seen.extend(p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before)
            raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        run_in_process(task, on_event, poll=lambda: None, max_memory_bytes=2**40)
    assert seen and time.monotonic() - started < 60
    assert all(not psutil.pid_exists(pid) for pid in seen if pid not in before)


def test_a_service_killed_mid_job_leaves_no_job_process_behind(tmp_path: Path, data_root: Path,
                                                                 server_factory: Any) -> None:
    server = server_factory(tmp_path / "home", [data_root])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = client.post("/v1/jobs", json=job_spec(training={"epochs": 40}), headers=AUTH).json()["id"]
        deadline = time.monotonic() + 120
        while not (client.get(f"/v1/jobs/{job_id}").json()["progress"] or {}).get("step"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    family = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(family) >= 2  # the forkserver and the job's process
    server.kill()  # SIGKILL: no shutdown code runs in the service
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.cmdline() for p in alive]


def test_a_queued_jobs_file_swapped_for_a_symlink_outside_the_roots_is_refused_when_read(tmp_path: Path,
                                                                                          data_root: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(data_root / "synth", outside / "synth")
    (root / "synth").mkdir()
    for f in (data_root / "synth").glob("*.parquet"):
        (root / "synth" / f.name).write_bytes(f.read_bytes())
    store = Store(tmp_path / "home")
    spec_json = _tiny(root)
    job, _ = store.create_job("job", "ctr", spec_json)
    # After the submission's check, a file of the queued job becomes a symlink to data outside the roots.
    victim = next((root / "synth").glob("*.parquet"))
    victim.unlink()
    victim.symlink_to(outside / "synth" / victim.name)
    workers = JobWorkers(store, roots=DataRoots.of([root]), limits=JobLimits())
    workers.start()
    try:
        deadline = time.monotonic() + 120
        while store.get_job(job.id).state in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        workers.stop()
    ended = store.get_job(job.id)
    assert ended.state == "failed"
    assert "outside the data roots" in (ended.error_message or "")
    assert store.registry.versions("ctr") == []


def test_job_limits_refuse_an_oversized_job_and_an_operator_raises_them(tmp_path: Path, data_root: Path,
                                                                         server_factory: Any) -> None:
    server = server_factory(tmp_path / "home", [data_root], max_epochs=3, max_embedding_dim=64)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/jobs", json=job_spec(training={"epochs": 4}), headers=AUTH)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "training.epochs" and "SEQATTN_MAX_EPOCHS" in body["message"]
        r = client.post("/v1/jobs", json=job_spec(selection={"embedding_dims": [8, 128]}), headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "selection.embedding_dims[1]"
        schedule = {"name": "daily", "job": job_spec(training={"epochs": 4}),
                    "window": {"path": str(data_root), "size": 1}, "cadence": {"interval": "1d"}}
        r = client.post("/v1/schedules", json=schedule, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "job.training.epochs", r.text
        assert client.post("/v1/jobs", json=job_spec(training={"epochs": 3}), headers=AUTH).status_code == 202
