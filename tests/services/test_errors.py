"""The bad-input table: every case gets a 4xx whose JSON body names the field and the problem,
with no stack trace, and leaves the state (jobs, versions, promotion, schedules, files) as it was.
Against a real uvicorn server with an API key and a small body limit."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from live_server import AUTH, ServerProcess, job_spec, publish_versions

pytestmark = pytest.mark.slow

MAX_BODY = 16_384


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    outside = tmp_path_factory.mktemp("outside")
    pq.write_table(pa.table({"label": [0, 1] * 50, "c": list(range(100))}), outside / "secret.parquet")
    if not (data_root / "escape").exists():
        os.symlink(outside, data_root / "escape")  # a directory symlink out of the root
        (data_root / "linked").mkdir()
        os.symlink(outside / "secret.parquet", data_root / "linked" / "part.parquet")  # a file symlink out
    home = tmp_path_factory.mktemp("errors") / "home"
    publish_versions(home, "ctr", (0.70, 0.71))
    publish_versions(home, "solo", (0.70,))  # one version: nothing to roll back to
    server = ServerProcess(home, [data_root], max_body_bytes=MAX_BODY).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client
    server.stop()


def _files(home: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(home)), p.stat().st_size) for p in home.rglob("*")
                  if p.is_file() and not p.name.startswith("seqattn.db"))


def snapshot(client: httpx.Client, home: Path) -> tuple[Any, ...]:
    served = client.get("/v1/feature-sets/ctr")
    return (client.get("/v1/jobs").json(), client.get("/v1/feature-sets").json(),
            client.get("/v1/feature-sets/ctr/versions").json(), client.get("/v1/schedules").json(),
            served.headers["ETag"], served.content, _files(home))


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 4096
        sent += 4096


GOOD = job_spec()
BAD_CRON = {"name": "s", "job": job_spec(), "window": {"path": "synth"}, "cadence": {"cron": "every day"}}

# (id, method, path, request kwargs, status, field)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("malformed-json", "POST", "/v1/jobs", {"content": b'{"name": "ctr",',
                                            "headers": {"Content-Type": "application/json"}},
     400, "body"),
    ("json-array", "POST", "/v1/jobs", {"json": [GOOD]}, 400, "body"),
    ("empty-body", "POST", "/v1/jobs", {"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("wrong-content-type", "POST", "/v1/jobs", {"content": b"name: ctr", "headers": {"Content-Type": "text/yaml"}},
     415, "Content-Type"),
    ("bad-name", "POST", "/v1/jobs", {"json": job_spec(name="Bad Name!")}, 422, "name"),
    ("missing-dataset", "POST", "/v1/jobs", {"json": {"name": "ctr"}}, 422, "dataset"),
    ("wrong-type-epochs", "POST", "/v1/jobs", {"json": job_spec(training={"epochs": "two"})}, 422, "training.epochs"),
    ("negative-batch", "POST", "/v1/jobs", {"json": job_spec(training={"batch_size": -1})}, 422, "training.batch_size"),
    ("unknown-key", "POST", "/v1/jobs", {"json": job_spec(training={"epoch": 3})}, 422, "training.epoch"),
    ("dims-not-multiple-of-4", "POST", "/v1/jobs", {"json": job_spec(selection={"embedding_dims": [4, 6]})},
     422, "selection.embedding_dims[1]"),
    ("bad-promote-mode", "POST", "/v1/jobs", {"json": job_spec(promote="sometimes")}, 422, "promote"),
    ("unknown-label", "POST", "/v1/jobs", {"json": job_spec(dataset={"label": "click"})}, 422, "dataset.label"),
    ("unknown-sparse-column", "POST", "/v1/jobs", {"json": job_spec(dataset={"sparse": ["rel_0", "nope"]})},
     422, "dataset.sparse"),
    ("too-many-features", "POST", "/v1/jobs", {"json": job_spec(selection={"features": 500})},
     422, "selection.features"),
    ("too-many-crosses", "POST", "/v1/jobs", {"json": job_spec(selection={"crosses": 5000})}, 422, "selection.crosses"),
    ("dotdot-path", "POST", "/v1/jobs", {"json": job_spec(dataset={"path": "synth/../../etc"})}, 422, "dataset.path"),
    ("absolute-outside", "POST", "/v1/jobs", {"json": job_spec(dataset={"path": "/etc"})}, 422, "dataset.path"),
    ("symlink-dir-escape", "POST", "/v1/jobs", {"json": job_spec(dataset={"path": "escape"})}, 422, "dataset.path"),
    ("symlink-file-escape", "POST", "/v1/jobs", {"json": job_spec(dataset={"path": "linked"})}, 422, "dataset.path"),
    ("missing-path", "POST", "/v1/jobs", {"json": job_spec(dataset={"path": "no-such-dir"})}, 422, "dataset.path"),
    ("oversize-body", "POST", "/v1/jobs", {"json": {**GOOD, "pad": "x" * (2 * MAX_BODY)}}, 413, "body"),
    ("oversize-chunked", "POST", "/v1/jobs", {"content": _chunks(2 * MAX_BODY),
                                              "headers": {"Content-Type": "application/json"}}, 413, "body"),
    ("missing-auth", "POST", "/v1/jobs", {"json": GOOD, "headers": {"Authorization": ""}}, 401, "Authorization"),
    ("wrong-key", "POST", "/v1/jobs", {"json": GOOD, "headers": {"Authorization": "Bearer nope"}},
     401, "Authorization"),
    ("basic-auth", "POST", "/v1/jobs", {"json": GOOD, "headers": {"Authorization": "Basic dTpw"}},
     401, "Authorization"),
    ("auth-on-promote", "POST", "/v1/feature-sets/ctr/promote",
     {"json": {"version": 1}, "headers": {"Authorization": ""}}, 401, "Authorization"),
    ("auth-on-cancel", "DELETE", "/v1/jobs/j-0000000000000000", {"headers": {"Authorization": ""}},
     401, "Authorization"),
    ("long-idempotency-key", "POST", "/v1/jobs", {"json": GOOD, "headers": {"Idempotency-Key": "k" * 300}},
     400, "Idempotency-Key"),
    ("unknown-job", "GET", "/v1/jobs/j-0000000000000000", {}, 404, "id"),
    ("malformed-job-id", "GET", "/v1/jobs/../../etc", {}, 404, "path"),
    ("garbage-job-id", "GET", "/v1/jobs/not-a-job", {}, 404, "id"),
    ("cancel-unknown-job", "DELETE", "/v1/jobs/j-0000000000000000", {}, 404, "id"),
    ("bad-state-filter", "GET", "/v1/jobs", {"params": {"state": "done"}}, 422, "state"),
    ("bad-limit", "GET", "/v1/jobs", {"params": {"limit": 0}}, 422, "limit"),
    ("bad-feature-set-name", "GET", "/v1/feature-sets/Bad_Name", {}, 422, "name"),
    ("unknown-feature-set", "GET", "/v1/feature-sets/nope", {}, 404, "name"),
    ("unknown-version", "GET", "/v1/feature-sets/ctr/versions/99", {}, 404, "version"),
    ("non-integer-version", "GET", "/v1/feature-sets/ctr/versions/abc", {}, 422, "version"),
    ("bad-export-format", "GET", "/v1/feature-sets/ctr/versions/1/export", {"params": {"format": "onnx"}},
     422, "format"),
    ("promote-unknown-version", "POST", "/v1/feature-sets/ctr/promote", {"json": {"version": 99}}, 404, "version"),
    ("promote-string-version", "POST", "/v1/feature-sets/ctr/promote", {"json": {"version": "two"}}, 422, "version"),
    ("promote-missing-version", "POST", "/v1/feature-sets/ctr/promote", {"json": {}}, 422, "version"),
    ("promote-extra-field", "POST", "/v1/feature-sets/ctr/promote", {"json": {"version": 1, "force": True}},
     422, "force"),
    ("promote-stale-expected", "POST", "/v1/feature-sets/ctr/promote", {"json": {"version": 1, "expected_version": 1}},
     409, "expected_version"),
    ("promote-unknown-name", "POST", "/v1/feature-sets/nope/promote", {"json": {"version": 1}}, 404, "name"),
    ("rollback-without-history", "POST", "/v1/feature-sets/solo/rollback", {}, 409, "name"),
    ("schedule-job-as-file", "POST", "/v1/schedules", {"json": {**BAD_CRON, "job": "/etc/passwd"}}, 422, "job"),
    ("schedule-bad-cron", "POST", "/v1/schedules", {"json": BAD_CRON}, 422, "cadence.cron"),
    ("schedule-window-outside", "POST", "/v1/schedules",
     {"json": {**BAD_CRON, "cadence": {"interval": "1d"}, "window": {"path": "/etc"}}}, 422, "window.path"),
    ("delete-unknown-schedule", "DELETE", "/v1/schedules/nope", {}, 404, "name"),
    ("unknown-route", "GET", "/v1/nothing-here", {}, 404, "path"),
    ("method-not-allowed", "PUT", "/v1/jobs", {"json": GOOD}, 405, "method"),
]


# What the message must say, for cases where the field alone could hide the wrong reason.
MESSAGES = {
    "symlink-dir-escape": "through a symlink",
    "symlink-file-escape": "a symlink to a place outside the data roots",
    "absolute-outside": "outside the data roots",
    "dotdot-path": "'..'",
    "unknown-label": "column 'click' not found",
    "unknown-key": "did you mean 'epochs'",
    "too-many-features": "more than the 21 candidate features",
    "oversize-body": "the limit is 16384 bytes",
    "wrong-key": "wrong",
    "promote-stale-expected": "is 2, not 1",
    "rollback-without-history": "v1 is the only promoted version",
}


def test_every_status_in_the_table_is_declared_by_its_operation(setup: tuple[ServerProcess, httpx.Client]) -> None:
    """OpenAPI lists, per route, the error statuses it can return: each one this table gets is there."""
    _, client = setup
    paths = client.get("/openapi.json").json()["paths"]
    checked = 0
    for case, method, path, _, status, field in CASES:
        if field in ("path", "method"):  # no route matched: nothing to declare it
            continue
        template = next(t for t in paths if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(t)), path))
        assert str(status) in paths[template][method.lower()]["responses"], (case, template, status)
        checked += 1
    assert checked >= 40


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, method, path, kwargs, status, field", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_naming_the_field_and_changes_nothing(
        setup: tuple[ServerProcess, httpx.Client], case: str, method: str, path: str, kwargs: dict[str, Any],
        status: int, field: str) -> None:
    server, client = setup
    before = snapshot(client, server.home)
    kwargs = dict(kwargs)
    kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["field"] == field, body
    assert isinstance(body["message"], str) and len(body["message"]) > 5, body
    assert MESSAGES.get(case, "") in body["message"], body
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert snapshot(client, server.home) == before
