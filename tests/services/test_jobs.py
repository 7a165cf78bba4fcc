"""End to end against a real uvicorn server on 127.0.0.1: jobs on planted data, live progress,
the promoted FeatureSet, promotion of an older version, rollback, ETag/304, cancellation,
idempotency, and a schedule's run through pipelines.continual."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import AUTH, ServerProcess, job_spec, publish_versions, wait_job

from pipelines.synth import write_partitioned_synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    publish_versions(home, "ctr", (0.5,))  # an older version 1 (a weak one), so the job publishes version 2
    server = ServerProcess(home, [data_root]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _watch(client: httpx.Client, job_id: str) -> tuple[dict, list[dict]]:
    """Poll until the job ends; returns the last view and every distinct progress seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"] and (not seen or seen[-1] != job["progress"]):
            seen.append(job["progress"])
        if job["state"] not in ("queued", "running"):
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_submit_poll_promote_rollback_and_etag(client: httpx.Client, server: ServerProcess) -> None:
    r = client.post("/v1/jobs", json=job_spec(), headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
    first = r.json()
    assert first["state"] in ("queued", "running") and first["spec"]["dataset"]["path"].endswith("synth")
    job, seen = _watch(client, first["id"])
    assert job["state"] == "succeeded", (job, server.log())
    # Live progress: stages in order, and training steps with a loss while it ran.
    assert job["progress"]["stages"][:2] == ["load", "selection"] and job["progress"]["stages"][-1] == "done"
    assert any("step" in p and p.get("total_steps") for p in seen), seen
    assert job["feature_set"]["version"] == 2 and job["feature_set"]["decision"] == "promoted", job
    assert "beats the promoted v1's 0.5000 by" in job["feature_set"]["reason"], job

    served = client.get("/v1/feature-sets/ctr")
    assert served.status_code == 200 and served.headers["X-Feature-Set-Version"] == "2"
    fs2 = served.json()
    assert fs2["version"] == 2 and fs2["job_id"] == first["id"] and len(fs2["features"]) == 4
    assert {c["name"] for c in fs2["candidates"]} >= {f["name"] for f in fs2["features"]}
    etag2 = served.headers["ETag"]
    assert client.get("/v1/feature-sets/ctr", headers={"If-None-Match": etag2}).status_code == 304
    assert client.get("/v1/feature-sets/ctr", headers={"If-None-Match": '"other"'}).status_code == 200

    # Promote the older version: the old ETag no longer matches, the body is version 1.
    r = client.post("/v1/feature-sets/ctr/promote", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200 and r.json()["promoted_version"] == 1 and r.json()["previous_version"] == 2
    older = client.get("/v1/feature-sets/ctr", headers={"If-None-Match": etag2})
    assert older.status_code == 200 and older.json()["version"] == 1 and older.headers["ETag"] != etag2
    etag1 = older.headers["ETag"]
    assert client.get("/v1/feature-sets/ctr", headers={"If-None-Match": etag1}).status_code == 304

    # Roll back to the version promoted before: version 2 again, with its ETag.
    r = client.post("/v1/feature-sets/ctr/rollback", headers=AUTH)
    assert r.status_code == 200 and r.json()["promoted_version"] == 2, r.text
    history = [(h["version"], h["source"]) for h in r.json()["history"]]
    assert history == [(1, "publish"), (2, "job"), (1, "manual"), (2, "rollback")]
    assert client.get("/v1/feature-sets/ctr", headers={"If-None-Match": etag2}).status_code == 304
    back = client.get("/v1/feature-sets/ctr", headers={"If-None-Match": etag1})
    assert back.status_code == 200 and back.headers["ETag"] == etag2 and back.json() == fs2

    versions = client.get("/v1/feature-sets/ctr/versions").json()
    assert [v["version"] for v in versions["versions"]] == [1, 2] and versions["promoted_version"] == 2
    assert client.get("/v1/feature-sets/ctr/versions/2").json() == fs2
    listing = client.get("/v1/feature-sets").json()["feature_sets"]
    assert listing == [{"name": "ctr", "promoted_version": 2, "latest_version": 2, "versions": 2,
                        "href": "/v1/feature-sets/ctr"}]

    feast = client.get("/v1/feature-sets/ctr/versions/2/export", params={"format": "feast"})
    assert feast.status_code == 200 and "FeatureService(" in feast.text and "'seqattn_version': '2'" in feast.text
    torchrec = client.get("/v1/feature-sets/ctr/versions/2/export", params={"format": "torchrec"}).json()
    assert torchrec["feature_set"] == {"name": "ctr", "version": 2}

    metrics = client.get("/metrics").text
    assert 'seqattn_jobs{state="succeeded"} 1.0' in metrics
    assert 'route="/v1/feature-sets/{name}",status="304"' in metrics

    # An ended job cannot be cancelled; it can be resubmitted (then we cancel that one).
    assert client.delete(f"/v1/jobs/{first['id']}", headers=AUTH).status_code == 409
    again = client.post(f"/v1/jobs/{first['id']}/resubmit", headers=AUTH)
    assert again.status_code == 202 and again.json()["resubmitted_from"] == first["id"]
    client.delete(f"/v1/jobs/{again.json()['id']}", headers=AUTH)
    assert wait_job(client, again.json()["id"])["state"] == "cancelled"


def test_cancel_stops_a_running_job(client: httpx.Client) -> None:
    before = client.get("/v1/feature-sets/ctr/versions").json()["versions"]
    r = client.post("/v1/jobs", json=job_spec(name="slow", training={"epochs": 40}), headers=AUTH)
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and (job["progress"] or {}).get("step"):
            break
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.05)
    asked = time.monotonic()
    r = client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = wait_job(client, job_id, timeout=60)
    assert job["state"] == "cancelled" and job["error"]["message"] == "cancelled by request"
    assert time.monotonic() - asked < 20  # stopped at a step, not after 40 epochs
    assert job["progress"]["step"] < job["progress"]["total_steps"] or job["progress"]["epoch"] < 39
    assert client.get("/v1/feature-sets/slow").status_code == 404
    assert client.get("/v1/feature-sets/ctr/versions").json()["versions"] == before


def test_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    spec = job_spec(name="idem", training={"epochs": 5})
    headers = {**AUTH, "Idempotency-Key": "submit-idem-1"}
    a = client.post("/v1/jobs", json=spec, headers=headers)
    b = client.post("/v1/jobs", json=spec, headers=headers)
    assert a.status_code == 202 and b.status_code == 200 and b.headers["Idempotent-Replayed"] == "true"
    assert a.json()["id"] == b.json()["id"]
    c = client.post("/v1/jobs", json={**spec, "promote": "manual"}, headers=headers)
    assert c.status_code == 409 and c.json()["field"] == "Idempotency-Key"
    assert len(client.get("/v1/jobs", params={"name": "idem"}).json()["jobs"]) == 1
    client.delete(f"/v1/jobs/{a.json()['id']}", headers=AUTH)
    assert wait_job(client, a.json()["id"])["state"] == "cancelled"


def test_schedule_crud_and_a_run_through_the_continual_runner(client: httpx.Client, data_root: Path) -> None:
    write_partitioned_synth(data_root / "daily", days=3, rows_per_day=4_000, drift_day=None, seed=1, n_noise=4)
    body = {"name": "daily", "job": job_spec(name="daily-fs"), "window": {"path": "daily", "size": 2},
            "cadence": {"cron": "0 3 * * *"}}
    r = client.post("/v1/schedules", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["window"]["path"] == str((data_root / "daily").resolve())
    assert r.json()["next_run_at"].endswith("03:00:00.000000Z")
    assert client.post("/v1/schedules", json=body, headers=AUTH).status_code == 409
    assert [s["name"] for s in client.get("/v1/schedules").json()["schedules"]] == ["daily"]

    run = client.post("/v1/schedules/daily/run", headers=AUTH)
    assert run.status_code == 202 and run.json()["kind"] == "schedule"
    assert client.post("/v1/schedules/daily/run", headers=AUTH).status_code == 409  # one run at a time
    job = wait_job(client, run.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"]["window"].startswith("day=2026-01-02..2026-01-03")
    versions = client.get("/v1/feature-sets/daily-fs/versions").json()["versions"]
    assert len(versions) == 1 and versions[0]["source"] == {  # an object, not JSON inside a string
        "schedule": "daily", "partition": "day", "window": ["2026-01-02", "2026-01-03"], "warm_start_from": None}
    assert client.get("/v1/schedules/daily").json()["last_job_id"] == job["id"]

    assert client.delete("/v1/schedules/daily", headers=AUTH).status_code == 204
    assert client.get("/v1/schedules/daily").status_code == 404


def test_openapi_documents_the_routes_and_the_shared_models(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    api = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/feature-sets/{name}", "/v1/feature-sets/{name}/promote",
            "/v1/schedules", "/healthz", "/metrics"} <= set(api["paths"])
    body = api["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobSpec"}
    schemas = api["components"]["schemas"]
    assert {"JobSpec", "DatasetSpec", "ScheduleSpec", "FeatureSet", "ErrorBody"} <= set(schemas)
    assert "Bearer" in api["info"]["description"]
    source = schemas["VersionOut"]["properties"]["source"]["anyOf"]
    assert {"type": "object", "additionalProperties": True} in source and {"type": "null"} in source
