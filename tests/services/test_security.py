"""The service's limits and hardening (docs/security.md): bounded request heads, JSON answers to
requests uvicorn's parser refuses, per-client rate limits, paged lists, 4xx (never 500) for
overflowing numbers and deeply nested bodies, an OpenAPI document the answers conform to, the
``Allow`` header of a 405, and the headers that forbid MIME sniffing and framing."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from live_server import API_KEY, AUTH, ServerProcess, publish_versions

from services.selector_api.app import create_app
from services.selector_api.settings import Settings
from services.selector_api.store import Store


def _app(home: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(home=home, scheduler_enabled=False, data_roots=str(home), api_key=API_KEY,
                                          **settings)))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("security")
    publish_versions(home, "ctr", (0.70, 0.71))
    with _app(home) as c:
        yield c


# -- the request head and uvicorn's own refusals (a real server: they happen in its protocol) --

MAX_HEADER = 8192


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("head") / "home"
    publish_versions(home, "ctr", (0.70,))
    started = ServerProcess(home, [home.parent], max_header_bytes=MAX_HEADER).start()
    yield started
    started.stop()


def _raw(server: ServerProcess, request: bytes, chunk: int = 65536) -> bytes:
    """Send ``request`` on a new connection and read the answer until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        try:
            for i in range(0, len(request), chunk):
                s.sendall(request[i:i + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole request was sent
        out = b""
        try:
            while part := s.recv(65536):
                out += part
                if b"\r\n\r\n" in out and b"connection: close" not in out.lower():
                    break
        except ConnectionResetError:
            pass
    return out


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def test_a_request_head_over_the_limit_gets_a_json_431_before_it_is_read_whole(server: ServerProcess) -> None:
    # 64 MB of header: before the limit, uvicorn (httptools) buffered and answered all of it.
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 2**20) + b"\r\n\r\n"
    status, headers, body = _answer(_raw(server, big))
    assert status == 431 and headers["content-type"] == "application/json", (status, headers)
    assert body["field"] == "headers" and str(MAX_HEADER) in body["message"], body
    # A head under the limit is served as before; the server is still up.
    ok = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fine: " + b"a" * (MAX_HEADER // 2) +
              b"\r\nConnection: close\r\n\r\n")
    assert _answer(ok)[0] == 200


@pytest.mark.parametrize("header, field", [
    (b"Content-Length: abc", "Content-Length"),
    (b"Content-Length: 5\r\nContent-Length: 6", "Content-Length"),
    (b"Transfer-Encoding: chunked, gzip", "Transfer-Encoding"),
])
def test_a_request_the_parser_refuses_gets_a_json_400_naming_the_header(server: ServerProcess, header: bytes,
                                                                        field: str) -> None:
    status, headers, body = _answer(_raw(server, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n{}"))
    assert status == 400 and headers["content-type"] == "application/json", (status, headers)  # was text/plain
    assert body["field"] == field and body["message"], body


# -- rate limits ----------------------------------------------------------------------------------


def test_submissions_over_the_limit_get_429_with_retry_after_per_client(tmp_path: Path) -> None:
    with _app(tmp_path, rate_limit_submit="2/minute") as c:
        codes = [c.post("/v1/jobs", json={"name": "x"}, headers=AUTH).status_code for _ in range(3)]
        assert codes == [422, 422, 429]  # invalid specs still cost a submission: the check runs first
        r = c.post("/v1/jobs", json={"name": "x"}, headers=AUTH)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["field"] == "request" and "limit" in r.json()["message"]
    with TestClient(c.app, client=("10.9.8.7", 1234)) as other:  # another client has its own budget
        assert other.post("/v1/jobs", json={"name": "x"}, headers=AUTH).status_code == 422


def test_a_refusal_is_held_for_the_delay_so_a_looping_client_sends_little(tmp_path: Path) -> None:
    import time

    with _app(tmp_path, rate_limit_submit="1/minute", rate_limit_delay_s=0.4) as c:
        c.post("/v1/jobs", json={"name": "x"}, headers=AUTH)
        started = time.perf_counter()
        assert c.post("/v1/jobs", json={"name": "x"}, headers=AUTH).status_code == 429
        assert time.perf_counter() - started >= 0.4
        assert c.get("/healthz").status_code == 200  # others are not held


def test_lists_are_charged_by_the_rows_they_return_and_serving_is_not_limited(tmp_path: Path) -> None:
    publish_versions(tmp_path, "ctr", (0.70, 0.71, 0.72))
    with _app(tmp_path, rate_limit_list_rows="5/minute") as c:
        assert c.get("/v1/feature-sets/ctr/versions").status_code == 200  # 3 rows
        assert c.get("/v1/feature-sets").status_code == 200  # 1 row
        assert c.get("/v1/schedules").status_code == 200  # 0 rows: costs 1
        r = c.get("/v1/jobs")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
        for _ in range(50):  # the serving route has no limit
            assert c.get("/v1/feature-sets/ctr").status_code == 200


def test_after_too_many_401s_a_client_gets_429_even_with_the_right_key(tmp_path: Path) -> None:
    with _app(tmp_path, rate_limit_auth_failures="3/minute") as c:
        wrong = {"Authorization": "Bearer nope"}
        assert [c.post("/v1/feature-sets/ctr/rollback", headers=wrong).status_code for _ in range(3)] == [401] * 3
        r = c.post("/v1/feature-sets/ctr/rollback", headers=AUTH)
        assert r.status_code == 429 and r.json()["field"] == "Authorization" and int(r.headers["Retry-After"]) >= 1
        assert c.get("/healthz").status_code == 200  # routes without the key are not affected
    with TestClient(c.app, client=("10.9.8.7", 1234)) as other:
        assert other.post("/v1/feature-sets/ctr/rollback", headers=AUTH).status_code == 404


def test_a_bad_rate_limit_setting_names_it() -> None:
    with pytest.raises(ValueError, match="rate_limit_submit"):
        Settings(rate_limit_submit="lots")
    assert Settings(rate_limit_submit="").rate_limit_submit == ""  # off


# -- paging -----------------------------------------------------------------------------------------


def test_jobs_are_listed_a_page_at_a_time_with_a_next_link(tmp_path: Path) -> None:
    store = Store(tmp_path)
    made = [store.create_job("job", "a" if i % 2 else "b", json.dumps({"name": "x"}))[0].id for i in range(7)]
    with _app(tmp_path) as c:
        seen, url = [], "/v1/jobs?limit=3"
        while url:
            page = c.get(url).json()
            assert len(page["jobs"]) <= 3
            seen += [j["id"] for j in page["jobs"]]
            url = page["next"]
            assert (url is None) == (page["next_cursor"] is None)
        assert seen == made[::-1]  # newest first, each job once
        named = c.get("/v1/jobs", params={"limit": 2, "name": "a"}).json()
        assert [j["name"] for j in named["jobs"]] == ["a", "a"] and "name=a" in named["next"]
        assert len(c.get(named["next"]).json()["jobs"]) == 1
        r = c.get("/v1/jobs", params={"limit": 1000})
        assert r.status_code == 422 and r.json()["field"] == "limit"


def test_versions_and_feature_sets_are_listed_a_page_at_a_time(tmp_path: Path) -> None:
    made = publish_versions(tmp_path, "ctr", tuple(0.6 + i / 100 for i in range(5)))
    for name in ("a1", "b2", "c3"):
        publish_versions(tmp_path, name, (0.7,))
    with _app(tmp_path) as c:
        seen, url = [], "/v1/feature-sets/ctr/versions?limit=2"
        while url:
            page = c.get(url).json()
            assert len(page["versions"]) <= 2 and page["promoted_version"] is not None
            seen += [v["version"] for v in page["versions"]]
            url = page["next"]
        assert seen == made  # oldest first, each version once
        names, url = [], "/v1/feature-sets?limit=3"
        while url:
            page = c.get(url).json()
            names += [f["name"] for f in page["feature_sets"]]
            url = page["next"]
        assert names == ["a1", "b2", "c3", "ctr"]
        assert c.get("/v1/feature-sets/ctr/versions", params={"limit": 201}).json()["field"] == "limit"


# -- bodies that used to answer 500 ---------------------------------------------------------------


def test_a_version_too_large_for_sqlite_is_a_422_naming_it(client: TestClient) -> None:
    for body, field in (({"version": 9223372036854775808}, "version"),
                        ({"version": 1, "expected_version": 2**64}, "expected_version")):
        r = client.post("/v1/feature-sets/ctr/promote", json=body, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == field, r.text  # was a 500 (OverflowError in SQLite)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/schedules", "/v1/feature-sets/ctr/promote"])
def test_a_body_nested_10000_deep_is_a_400_naming_body(client: TestClient, path: str) -> None:
    deep = b'{"version": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    r = client.post(path, content=deep, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body", r.text
    shallow_but_deep = b"[" * 100 + b"]" * 100  # parses, but deeper than any spec
    r = client.post(path, content=shallow_but_deep, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body", r.text


def test_invalid_json_on_promote_names_the_body_not_a_character_offset(client: TestClient) -> None:
    r = client.post("/v1/feature-sets/ctr/promote", content=b'{"version": 1,,}',
                    headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body", r.text  # was "[14]"
    r = client.post("/v1/feature-sets/ctr/promote", content=b"version: 1",
                    headers={**AUTH, "Content-Type": "text/yaml"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text


# -- OpenAPI ----------------------------------------------------------------------------------------


def _resolve(api: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = api["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_promotion_answer_matches_its_own_schema(client: TestClient) -> None:
    import jsonschema

    api = client.get("/openapi.json").json()
    r = client.post("/v1/feature-sets/ctr/promote", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    schema = api["paths"]["/v1/feature-sets/{name}/promote"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    out = _resolve(api, schema)
    entry = _resolve(api, out["properties"]["history"]["items"])
    assert set(entry["properties"]) == {"version", "previous_version", "source", "at"}  # not a schedule's policy
    for item in r.json()["history"]:
        jsonschema.validate(item, entry)


def test_names_declare_their_pattern_and_promote_its_400_and_415(client: TestClient) -> None:
    api = client.get("/openapi.json").json()
    names = [p for ops in api["paths"].values() for op in ops.values() for p in op.get("parameters", [])
             if p["name"] == "name"]
    assert len(names) >= 10
    for param in names:
        assert param["schema"]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,62}$", param
    for model in ("JobSpec", "ScheduleSpec"):
        assert api["components"]["schemas"][model]["properties"]["name"]["pattern"].startswith("^[a-z0-9]")
    promote = api["paths"]["/v1/feature-sets/{name}/promote"]["post"]
    assert {"400", "415", "422", "429"} <= set(promote["responses"])
    assert promote["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromoteRequest"}
    submitted = api["paths"]["/v1/jobs"]["post"]["responses"]["200"]
    assert "Idempotent-Replayed" in submitted["headers"] and "schema" in submitted["content"]["application/json"]


@pytest.mark.parametrize("path, allowed", [("/v1/jobs", "GET, POST"), ("/v1/jobs/j-0000000000000000", "DELETE, GET"),
                                           ("/v1/schedules", "GET, POST"), ("/v1/feature-sets/ctr/promote", "POST")])
def test_a_405_lists_every_method_of_the_path(client: TestClient, path: str, allowed: str) -> None:
    r = client.options(path)
    assert r.status_code == 405 and r.headers["Allow"] == allowed, r.headers  # /v1/jobs said "POST"
    assert r.json()["field"] == "method"


# -- headers and files --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/feature-sets/ctr", "/v1/feature-sets/nope", "/docs", "/redoc",
                                  "/healthz", "/openapi.json"])
def test_answers_forbid_sniffing_and_framing(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.headers["X-Content-Type-Options"] == "nosniff", path
    assert r.headers["X-Frame-Options"] == "DENY", path
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path


def test_published_artifacts_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """The decision in docs/security.md: FeatureSet files are 0600 (the service's user reads them;
    everyone else reads them through the API, which needs no key for reading)."""
    publish_versions(tmp_path, "ctr", (0.70,))
    files = list((tmp_path / "artifacts").rglob("featureset.json"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
