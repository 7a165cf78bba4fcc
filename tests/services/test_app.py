"""The service as a whole, on a real uvicorn server: a crash and restart keep the state consistent
and lose no published version; 20 simultaneous submissions and reads during promotions lose no
update and never see a torn FeatureSet."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from live_server import API_KEY, AUTH, job_spec, publish_versions, wait_job

from pipelines.synth import write_partitioned_synth
from services.cli import main
from services.selector_api.app import create_app
from services.selector_api.settings import Settings

pytestmark = pytest.mark.slow


def _artifacts(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted((home / "artifacts").rglob("featureset.json"))}


def test_restart_after_a_crash_during_a_job(tmp_path: Path, data_root: Path, server_factory: Any) -> None:
    home = tmp_path / "home"
    publish_versions(home, "ctr", (0.70, 0.71))
    server = server_factory(home, [data_root])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        served = c.get("/v1/feature-sets/ctr")
        versions = c.get("/v1/feature-sets/ctr/versions").json()
        running = c.post("/v1/jobs", json=job_spec(name="long", training={"epochs": 40}), headers=AUTH).json()
        waiting = c.post("/v1/jobs", json=job_spec(name="next", training={"epochs": 40}), headers=AUTH).json()
        deadline = time.monotonic() + 120
        while not (c.get(f"/v1/jobs/{running['id']}").json()["progress"] or {}).get("step"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
    artifacts = _artifacts(home)

    server.kill()  # SIGKILL mid-training: no shutdown code runs

    db = sqlite3.connect(home / "seqattn.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT state FROM jobs WHERE id = ?", (running["id"],)).fetchone()[0] == "running"
    db.close()

    server = server_factory(home, [data_root])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        job = c.get(f"/v1/jobs/{running['id']}").json()
        assert job["state"] == "interrupted" and "resubmit" in job["error"]["message"], job
        # Nothing published was lost or changed; the same version is served with the same ETag.
        assert c.get("/v1/feature-sets/ctr/versions").json() == versions
        again = c.get("/v1/feature-sets/ctr", headers={"If-None-Match": served.headers["ETag"]})
        assert again.status_code == 304
        assert c.get("/v1/feature-sets/ctr").content == served.content
        assert _artifacts(home) == artifacts
        assert c.get("/v1/feature-sets/long").status_code == 404
        # The job that was still queued survives the restart and is run by the new process.
        deadline = time.monotonic() + 120
        while not (c.get(f"/v1/jobs/{waiting['id']}").json()["progress"] or {}).get("step"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        # The interrupted job can be resubmitted as a new job (queued behind the running one).
        new = c.post(f"/v1/jobs/{running['id']}/resubmit", headers=AUTH)
        assert new.status_code == 202 and new.json()["resubmitted_from"] == running["id"]

    server.stop()  # a graceful stop (SIGTERM) stops the running job and marks it interrupted

    db = sqlite3.connect(home / "seqattn.db")
    states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    db.close()
    assert states == {running["id"]: "interrupted", waiting["id"]: "interrupted", new.json()["id"]: "queued"}
    assert _artifacts(home) == artifacts


def test_concurrent_submissions_and_reads_during_promotions(tmp_path: Path, data_root: Path,
                                                           server_factory: Any) -> None:
    home = tmp_path / "home"
    publish_versions(home, "ctr", (0.70, 0.71))
    bodies = {int(p.parent.name): p.read_bytes() for p in (home / "artifacts" / "ctr").glob("*/featureset.json")}
    server = server_factory(home, [data_root])
    n = 20
    start = threading.Barrier(2 * n + 2 + 4)
    done = threading.Event()
    submitted: list[httpx.Response] = []
    replayed: list[httpx.Response] = []
    promoted: list[httpx.Response] = []
    reads: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def submit(i: int, out: list[httpx.Response], key: str | None) -> None:
        headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
        spec = job_spec(name=f"c{i}" if key is None else "same",
                        training={"epochs": 3, "seed": i if key is None else 0})
        with httpx.Client(base_url=server.url, timeout=60) as c:
            start.wait()
            r = c.post("/v1/jobs", json=spec, headers=headers)
        with lock:
            out.append(r)

    def promote(order: list[int]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            start.wait()
            for v in order:
                r = c.post("/v1/feature-sets/ctr/promote", json={"version": v}, headers=AUTH)
                with lock:
                    promoted.append(r)

    def read() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            start.wait()
            while not done.is_set():
                r = c.get("/v1/feature-sets/ctr")
                with lock:
                    reads.append((r.status_code, dict(r.headers), r.content))

    threads = [threading.Thread(target=submit, args=(i, submitted, None)) for i in range(n)]
    threads += [threading.Thread(target=submit, args=(i, replayed, "same-key")) for i in range(n)]
    promoters = [threading.Thread(target=promote, args=([1, 2] * 8,)),
                 threading.Thread(target=promote, args=([2, 1] * 8,))]
    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in threads + promoters + readers:
        t.start()
    for t in threads + promoters:
        t.join(120)
    done.set()
    for t in readers:
        t.join(60)

    # Submissions: 20 distinct jobs, and one job for the 20 requests sharing an Idempotency-Key.
    assert [r.status_code for r in submitted] == [202] * n, [r.text for r in submitted if r.status_code != 202]
    ids = {r.json()["id"] for r in submitted}
    assert len(ids) == n
    assert sorted(r.status_code for r in replayed) == [200] * (n - 1) + [202]
    same = {r.json()["id"] for r in replayed}
    assert len(same) == 1
    with httpx.Client(base_url=server.url, timeout=60) as c:
        listed = {j["id"]: j for j in c.get("/v1/jobs", params={"limit": 200}).json()["jobs"]}
        assert set(listed) == ids | same  # no lost insert, no duplicate

        # Reads: every answer is one whole version; body, ETag and version header agree.
        assert reads and all(status == 200 for status, _, _ in reads)
        for _, headers, content in reads:
            version = int(headers["x-feature-set-version"])
            assert content == bodies[version] and json.loads(content)["version"] == version
            assert headers["etag"].startswith(f'"ctr-{version}-')

        # Promotions: each one applied and logged exactly once, in a chain (no lost update).
        assert all(r.status_code == 200 for r in promoted) and len(promoted) == 32
        current = c.get("/v1/feature-sets/ctr/versions").json()["promoted_version"]
        final = c.post("/v1/feature-sets/ctr/promote", json={"version": current, "expected_version": current},
                       headers=AUTH)
        assert final.status_code == 200
        chain = final.json()["history"]
        # The two seeded versions' own promotions, then at most the 32 by hand.
        assert [h["source"] for h in chain[:2]] == ["publish", "publish"] and len(chain) <= 2 + 32
        assert chain[-1]["version"] == current
        assert all(b["previous_version"] == a["version"] for a, b in zip(chain, chain[1:]))
        assert c.get("/v1/feature-sets/ctr").headers["x-feature-set-version"] == str(current)

        for job_id in ids | same:
            c.delete(f"/v1/jobs/{job_id}", headers=AUTH)
        ended = [wait_job(c, job_id) for job_id in ids | same]
        published = [j for j in ended if j["state"] == "succeeded"]
        assert all(j["state"] in ("cancelled", "succeeded") for j in ended)
        assert len(c.get("/v1/feature-sets").json()["feature_sets"]) == 1 + len(published)
        assert [v["version"] for v in c.get("/v1/feature-sets/ctr/versions").json()["versions"]] == [1, 2]


def test_rollback_of_versions_promoted_by_seqattn_pipeline_run(tmp_path: Path) -> None:
    """Two ``seqattn pipeline run`` steps promote v1 and v2 (the registry, no service involved);
    the service's rollback goes back to v1, and says why when there is nothing earlier."""
    home, days = tmp_path / "home", tmp_path / "days"
    truth = write_partitioned_synth(days, days=2, rows_per_day=3_000, drift_day=None, seed=2, n_noise=2)
    schedule = {"name": "daily", "window": {"path": str(days), "size": 1}, "cadence": {"interval": "1d"},
                "job": {"name": "ctr", "dataset": {"path": "-", "label": "label"}, "selection": {"features": 3},
                        "training": {"epochs": 1, "batch_size": 1024}},
                "promotion": {"epsilon": 1.0}}  # whatever the AUCs, both steps promote
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schedule))
    for day in truth["days"]:
        assert main(["pipeline", "run", str(tmp_path / "s.yaml"), "--as-of", day, "--home", str(home)]) == 0
    publish_versions(home, "solo", (0.7,))
    settings = Settings(home=home, scheduler_enabled=False, data_roots=str(tmp_path), api_key=API_KEY)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/feature-sets/ctr").headers["X-Feature-Set-Version"] == "2"
        r = c.post("/v1/feature-sets/ctr/rollback", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["promoted_version"] == 1 and r.json()["previous_version"] == 2
        assert [(h["version"], h["previous_version"], h["source"]) for h in r.json()["history"]] == [
            (1, None, "schedule:daily"), (2, 1, "schedule:daily"), (1, 2, "rollback")]
        assert c.get("/v1/feature-sets/ctr").headers["X-Feature-Set-Version"] == "1"

        r = c.post("/v1/feature-sets/solo/rollback", headers=AUTH)
        assert r.status_code == 409 and r.json()["field"] == "name"
        assert "v1 is the only promoted version" in r.json()["message"], r.json()
