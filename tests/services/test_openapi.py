"""The API's documentation in process: ``/docs`` and ``/redoc`` work on a host without internet (every
asset is ours), and ``/openapi.json`` says what the routes really do: the bearer scheme on the
mutating operations, the ``ETag``/``X-Feature-Set-Version`` headers, readable operationIds, and
only the error statuses each route can return."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.selector_api.app import create_app
from services.selector_api.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("openapi")
    with TestClient(create_app(Settings(home=home, scheduler_enabled=False, data_roots=str(home)))) as c:
        yield c


@pytest.fixture(scope="module")
def api(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _referenced(html: str) -> list[str]:
    """Every URL a docs page loads: src/href attributes and the Swagger/ReDoc spec URL."""
    found = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html)
    found += re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)
    return found


@pytest.mark.parametrize("page, assets", [
    ("/docs", {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/docs-assets/favicon.png"}),
    ("/redoc", {"/docs-assets/redoc.standalone.js", "/docs-assets/favicon.png"}),
])
def test_docs_pages_load_only_our_own_files(client: TestClient, page: str, assets: set[str]) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no fonts, no validator
    assert "img-src 'self'" in r.headers["content-security-policy"]  # ReDoc's remote logo is not fetched
    urls = _referenced(r.text)
    assert assets <= set(urls) and "/openapi.json" in urls, urls
    for url in urls:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 100, url
    js = client.get(next(u for u in urls if u.endswith(".js")))
    assert "javascript" in js.headers["content-type"] and len(js.content) > 500_000  # the real bundle


def test_swagger_ui_is_version_5_which_renders_openapi_3_1(client: TestClient, api: dict[str, Any]) -> None:
    assert api["openapi"].startswith("3.1")
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    # Swagger UI 4 (the swagger-ui-bundle package's) shows no operation at all of a 3.1 document.
    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle)
    assert '"validatorUrl": null' in client.get("/docs").text  # no badge fetched from validator.swagger.io


MUTATING = {("post", "/v1/jobs"), ("delete", "/v1/jobs/{job_id}"), ("post", "/v1/jobs/{job_id}/resubmit"),
            ("post", "/v1/feature-sets/{name}/promote"), ("post", "/v1/feature-sets/{name}/rollback"),
            ("post", "/v1/schedules"), ("delete", "/v1/schedules/{name}"), ("post", "/v1/schedules/{name}/run")}

# operationId and the error statuses each route can return (see the routes and services/selector_api/errors.py).
OPERATIONS = {
    # 429: a rate limit (services/selector_api/ratelimit.py): the submissions, the lists, and every
    # route that needs the key (too many failed authentications).
    ("post", "/v1/jobs"): ("submitJob", {400, 401, 409, 413, 415, 422, 429, 503}),
    ("get", "/v1/jobs"): ("listJobs", {422, 429}),
    ("get", "/v1/jobs/{job_id}"): ("getJob", {404}),
    ("delete", "/v1/jobs/{job_id}"): ("cancelJob", {401, 404, 409, 429}),
    ("post", "/v1/jobs/{job_id}/resubmit"): ("resubmitJob", {401, 404, 409, 422, 429, 503}),
    ("get", "/v1/feature-sets"): ("listFeatureSets", {422, 429}),
    ("get", "/v1/feature-sets/{name}"): ("getFeatureSet", {404, 422}),
    ("get", "/v1/feature-sets/{name}/versions"): ("listFeatureSetVersions", {404, 422, 429}),
    ("get", "/v1/feature-sets/{name}/versions/{version}"): ("getFeatureSetVersion", {404, 422}),
    ("get", "/v1/feature-sets/{name}/versions/{version}/export"): ("exportFeatureSetVersion", {404, 422}),
    ("post", "/v1/feature-sets/{name}/promote"): ("promoteFeatureSet", {400, 401, 404, 409, 413, 415, 422, 429}),
    ("post", "/v1/feature-sets/{name}/rollback"): ("rollbackFeatureSet", {401, 404, 409, 422, 429}),
    ("get", "/v1/schedules"): ("listSchedules", {429}),
    ("post", "/v1/schedules"): ("createSchedule", {400, 401, 409, 413, 415, 422, 429}),
    ("get", "/v1/schedules/{name}"): ("getSchedule", {404, 422}),
    ("delete", "/v1/schedules/{name}"): ("deleteSchedule", {401, 404, 422, 429}),
    ("post", "/v1/schedules/{name}/run"): ("runSchedule", {401, 404, 409, 422, 429}),
    ("get", "/healthz"): ("getHealth", set()),
    ("get", "/metrics"): ("getMetrics", set()),
}


def _operations(api: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, ops in api["paths"].items() for method, op in ops.items()}


def test_the_bearer_scheme_is_declared_on_the_mutating_operations_only(api: dict[str, Any]) -> None:
    assert api["components"]["securitySchemes"] == {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": api["components"]["securitySchemes"]["bearer"]["description"]}}
    for key, op in _operations(api).items():
        assert op.get("security") == ([{"bearer": []}] if key in MUTATING else None), key


def test_operation_ids_are_readable_and_unique(api: dict[str, Any]) -> None:
    ops = _operations(api)
    assert set(ops) == set(OPERATIONS)
    assert {key: op["operationId"] for key, op in ops.items()} == {key: v[0] for key, v in OPERATIONS.items()}


def test_each_route_lists_only_the_errors_it_can_return_with_the_error_body(api: dict[str, Any]) -> None:
    for key, op in _operations(api).items():
        errors = {int(code) for code in op["responses"] if int(code) >= 400}
        assert errors == OPERATIONS[key][1], key
        for code in errors:
            body = op["responses"][str(code)]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}, (key, code)
    assert "HTTPValidationError" not in str(api)  # FastAPI's own 422 body is never what we send
    assert "Retry-After" in op_headers(api, "post", "/v1/jobs", "503")
    assert "WWW-Authenticate" in op_headers(api, "post", "/v1/jobs", "401")


def op_headers(api: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    return api["paths"][path][method]["responses"][status].get("headers", {})


@pytest.mark.parametrize("path", ["/v1/feature-sets/{name}", "/v1/feature-sets/{name}/versions/{version}"])
def test_served_feature_sets_declare_their_etag_and_version_headers(api: dict[str, Any], path: str) -> None:
    for status in ("200", "304"):
        headers = op_headers(api, "get", path, status)
        assert {"ETag", "X-Feature-Set-Version", "Cache-Control"} <= set(headers), (path, status)
        assert headers["X-Feature-Set-Version"]["schema"] == {"type": "integer"}
    assert "Location" in op_headers(api, "post", "/v1/jobs", "202")
    assert "Idempotent-Replayed" in op_headers(api, "post", "/v1/jobs", "200")
    assert "Location" in op_headers(api, "post", "/v1/schedules", "201")


def test_the_headers_declared_are_the_ones_sent(tmp_path_factory: pytest.TempPathFactory) -> None:
    from live_server import publish_versions

    home = tmp_path_factory.mktemp("served")
    publish_versions(home, "ctr", (0.7,))
    with TestClient(create_app(Settings(home=home, scheduler_enabled=False, data_roots=str(home)))) as c:
        api = c.get("/openapi.json").json()
        for path in ("/v1/feature-sets/ctr", "/v1/feature-sets/ctr/versions/1"):
            r = c.get(path)
            declared = {h.lower() for h in op_headers(api, "get",
                                                      path.replace("ctr", "{name}").replace("/1", "/{version}"),
                                                      "200")}
            assert declared <= set(r.headers), (path, declared, r.headers)
            again = c.get(path, headers={"If-None-Match": r.headers["ETag"]})
            assert again.status_code == 304 and declared <= set(again.headers)
