"""Feature-set routes in process: the Feast export of a version, checked against Feast's documented
``FeatureService`` schema (the ``feast`` package cannot be installed here: feast 0.67 requires
pandas<3 and this project pins pandas 3.1), and immutable versions' cache headers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live_server import publish_versions

from services.selector_api.app import create_app
from services.selector_api.settings import Settings


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    publish_versions(tmp_path, "ctr-main", (0.70, 0.71))
    with TestClient(create_app(Settings(home=tmp_path, scheduler_enabled=False, data_roots=str(tmp_path)))) as c:
        yield c


def _feature_service(source: str) -> tuple[str, dict[str, ast.expr]]:
    """The (variable, keyword arguments) of the one ``FeatureService(...)`` the module defines."""
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "feast"]
    assert imports and any(a.name == "FeatureService" for a in imports[0].names)
    calls = [n for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
             and getattr(n.value.func, "id", None) == "FeatureService"]
    assert len(calls) == 1
    target = calls[0].targets[0]
    assert isinstance(target, ast.Name) and target.id.isidentifier()
    assert not calls[0].value.args  # Feast takes keyword arguments only
    return target.id, {k.arg: k.value for k in calls[0].value.keywords if k.arg}


def test_feast_export_is_a_feature_service_pinned_to_the_version(client: TestClient) -> None:
    r = client.get("/v1/feature-sets/ctr-main/versions/1/export", params={"format": "feast"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-python")
    assert r.headers["content-disposition"] == 'attachment; filename="ctr-main-v1.py"'
    compile(r.text, "feature_service.py", "exec")
    variable, kwargs = _feature_service(r.text)
    # FeatureService(name: str, features: list[FeatureView | FeatureViewProjection], tags: dict[str, str], ...)
    assert set(kwargs) <= {"name", "features", "tags", "description", "owner", "logging_config"}
    assert variable == "ctr_main_v1" and ast.literal_eval(kwargs["name"]) == "ctr-main-v1"
    tags = ast.literal_eval(kwargs["tags"])
    assert tags == {"seqattn_feature_set": "ctr-main", "seqattn_version": "1"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    features = kwargs["features"]
    assert isinstance(features, ast.List) and len(features.elts) == 1
    projection = features.elts[0]  # feature_view[["f0", ...]]: a FeatureViewProjection
    assert isinstance(projection, ast.Subscript) and isinstance(projection.value, ast.Name)
    kept = [f["name"] for f in client.get("/v1/feature-sets/ctr-main/versions/1").json()["features"]]
    assert ast.literal_eval(projection.slice) == kept
    other = client.get("/v1/feature-sets/ctr-main/versions/2/export", params={"format": "feast"}).text
    assert _feature_service(other)[0] == "ctr_main_v2" and other != r.text


def test_versions_are_immutable_and_cacheable(client: TestClient) -> None:
    r = client.get("/v1/feature-sets/ctr-main/versions/1")
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert client.get("/v1/feature-sets/ctr-main/versions/1",
                      headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    served = client.get("/v1/feature-sets/ctr-main")
    assert served.headers["cache-control"] == "no-cache" and served.json()["version"] == 2
