"""``/metrics`` after real jobs through the API (in process, small planted data): the finished-jobs
counter and the job-duration histogram by final state, and the process collector's metrics."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live_server import API_KEY, AUTH, job_spec

from services.selector_api.app import create_app
from services.selector_api.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _wait(client: TestClient, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of the samples called ``name`` in a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name):].rpartition(" ")
            out[labels] = float(value)
    return out


def test_finished_jobs_are_counted_and_timed_by_final_state(tmp_path: Path, data_root: Path) -> None:
    roots = tmp_path / "roots"
    shutil.copytree(data_root / "synth", roots / "synth")
    shutil.copytree(data_root / "synth", roots / "gone")
    settings = Settings(home=tmp_path / "home", data_roots=str(roots), api_key=API_KEY, scheduler_enabled=False)
    with TestClient(create_app(settings)) as c:
        ok = c.post("/v1/jobs", json=job_spec(), headers=AUTH).json()
        # Valid when submitted, queued behind the first job (one worker), and its data gone by the time it runs.
        doomed = c.post("/v1/jobs", json=job_spec(name="doomed", dataset={"path": "gone"}), headers=AUTH).json()
        shutil.rmtree(roots / "gone")
        started = time.monotonic()
        assert _wait(c, ok["id"])["state"] == "succeeded"
        assert _wait(c, doomed["id"])["state"] == "failed"
        took = time.monotonic() - started
        text = c.get("/metrics").text

    assert _samples(text, "seqattn_jobs_finished_total") == {'{state="succeeded"}': 1.0, '{state="failed"}': 1.0}
    assert "# TYPE seqattn_jobs_finished_total counter" in text
    assert "# TYPE seqattn_job_duration_seconds histogram" in text
    counts = _samples(text, "seqattn_job_duration_seconds_count")
    assert counts == {'{state="succeeded"}': 1.0, '{state="failed"}': 1.0}
    sums = _samples(text, "seqattn_job_duration_seconds_sum")
    assert 0 < sums['{state="failed"}'] < sums['{state="succeeded"}'] <= took
    buckets = _samples(text, "seqattn_job_duration_seconds_bucket")
    assert buckets['{le="+Inf",state="succeeded"}'] == 1.0 and buckets['{le="3600.0",state="failed"}'] == 1.0
    # The process collector (a custom registry does not get it by default).
    assert _samples(text, "process_resident_memory_bytes")[""] > 10e6
    assert "process_cpu_seconds_total" in text and "process_open_fds" in text and "python_info" in text
