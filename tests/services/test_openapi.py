"""The API's documentation in process: ``/docs`` and ``/redoc`` work on a host without internet (every
asset is ours), and ``/openapi.json`` says what the routes really do: the bearer scheme on the
mutating operations, the ``ETag``/``X-Feature-Set-Version`` headers, readable operationIds, and
only the error statuses each route can return."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
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
