"""Exports name a FeatureSet honestly (a published one by its version, an unpublished one as
``{name}-unpublished``, never a made-up version 1) and refuse to export ids they do not have."""

from __future__ import annotations

import ast
import doctest
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import pipelines.export
from pipelines.dataset import Columns, encode_table
from pipelines.errors import SpecError
from pipelines.export import (
    about,
    export_feature_set,
    feast_definition,
    find_artifacts,
    release_name,
    to_embedding_bag_configs,
    torchrec_config,
)
from pipelines.preprocessing import write_preprocessing
from pipelines.spec import FeatureSet, JobSpec, SelectedCross, SelectedFeature


def _fs(name: str = "ctr-main", **over: object) -> FeatureSet:
    return FeatureSet(
        name=name, spec=JobSpec(name=name, dataset={"path": "d", "label": "y"}),
        features=[SelectedFeature(name="user", kind="sparse", rank=1, score=0.5, embedding_dim=8),
                  SelectedFeature(name="price", kind="dense", rank=2, score=0.3)],
        crosses=[SelectedCross(features=("user", "item"), rank=1, score=0.2, buckets=64, embedding_dim=4)],
        **over)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Preprocessing of a small table (no model): users u0..u9, items i0..i5, a price."""
    rng = np.random.default_rng(0)
    n = 400
    table = pa.table({"y": rng.integers(0, 2, n), "user": [f"u{k}" for k in rng.integers(0, 10, n)],
                      "item": [f"i{k}" for k in rng.integers(0, 6, n)], "price": rng.normal(5, 2, n)})
    data = encode_table(table, Columns("y", ("price",), ("user", "item")), seed=0)
    write_preprocessing(tmp_path / "a", data, _fs())
    return tmp_path / "a"


def _service(source: str) -> tuple[str, dict[str, object]]:
    """(variable, literal keyword arguments but ``features``) of the one FeatureService assigned."""
    tree = ast.parse(source)
    [call] = [n for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.value.keywords if k.arg != "features"}
    return call.targets[0].id, kwargs  # type: ignore[attr-defined]


def test_unpublished_feast_service_has_no_made_up_version() -> None:
    source = feast_definition(_fs(job_id="job-7"))
    compile(source, "fs.py", "exec")
    variable, kwargs = _service(source)
    assert variable == "ctr_main_unpublished" and kwargs["name"] == "ctr-main-unpublished"
    assert kwargs["tags"] == {"seqattn_feature_set": "ctr-main", "seqattn_job_id": "job-7"}
    assert "version 1" not in source and "-v1" not in source and "_v1" not in source
    assert "never published" in source.splitlines()[1]
    assert "from seqattn_features import ctr_main_unpublished_features, ctr_main_unpublished_crosses" in source


def test_published_feast_service_is_pinned_to_its_version() -> None:
    variable, kwargs = _service(feast_definition(_fs(version=3, job_id="job-7")))
    assert variable == "ctr_main_v3" and kwargs["name"] == "ctr-main-v3"
    assert kwargs["tags"] == {"seqattn_feature_set": "ctr-main", "seqattn_version": "3"}


def test_a_name_starting_with_a_digit_is_still_a_python_variable() -> None:
    source = feast_definition(_fs("3p-ctr", version=1))
    compile(source, "fs.py", "exec")  # was `3p_ctr_v1 = FeatureService(...)`: a SyntaxError
    variable, kwargs = _service(source)
    assert variable.isidentifier() and kwargs["name"] == "3p-ctr-v1"


def test_the_manifest_says_when_a_set_is_unpublished(artifacts: Path) -> None:
    info = torchrec_config(_fs(job_id="job-7"), artifacts)["feature_set"]
    assert info["version"] is None and info["published"] is False and info["job_id"] == "job-7"
    assert "never published" in info["note"]
    assert about(_fs(version=2)) == {"name": "ctr-main", "version": 2}


def test_every_table_has_its_rows_and_the_cross_its_constants(artifacts: Path) -> None:
    cfg = json.loads(export_feature_set(_fs(), "torchrec", artifacts))
    tables = {t["name"]: t for t in cfg["tables"]}
    assert tables["t_user"]["num_embeddings"] == 11 and tables["t_user"]["pooling"] == "SUM"
    assert tables["t_user_X_item"]["num_embeddings"] == 64 and tables["t_user_X_item"]["embedding_dim"] == 4
    [cross] = cfg["crosses"]
    assert (cross["card_a"], cross["card_b"], cross["buckets"]) == (11, 7, 64)
    assert cfg["dense"]["names"] == ["price"] and 4 < cfg["dense"]["mean"][0] < 6
    assert cfg["label"] == "y" and cfg["model"] is None and cfg["weights"] is None
    assert [(t.name, t.num_embeddings, t.embedding_dim) for t in to_embedding_bag_configs(cfg)] == [
        ("t_user", 11, 8), ("t_user_X_item", 64, 4)]
    assert {s["name"] for s in cfg["sparse"]} == {"user", "item"}  # item: a cross's input, not kept itself


def test_no_artifacts_is_an_error_naming_them_not_a_table_without_rows(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="artifacts: .*no preprocessing artifacts"):
        torchrec_config(_fs(), None)
    fs_json = tmp_path / "fs.json"
    fs_json.write_text(_fs().model_dump_json())
    assert find_artifacts(fs_json) is None
    with pytest.raises(SpecError, match="--artifacts"):
        find_artifacts(fs_json, tmp_path)
    with pytest.raises(ValueError, match="format"):
        export_feature_set(_fs(), "onnx")
    assert release_name(_fs()) == "ctr-main-unpublished" and release_name(_fs(version=4)) == "ctr-main-v4"


def test_artifacts_are_found_beside_the_json_or_in_its_registry_folder(tmp_path: Path, artifacts: Path) -> None:
    beside = tmp_path / "fs.artifacts"
    artifacts.rename(beside)
    assert find_artifacts(tmp_path / "fs.json") == beside
    version = tmp_path / "home" / "artifacts" / "ctr-main" / "3"
    version.mkdir(parents=True)
    (version / "preprocessing.json").write_text((beside / "preprocessing.json").read_text())
    assert find_artifacts(version / "featureset.json") == version


def test_docstring_examples() -> None:
    assert doctest.testmod(pipelines.export).failed == 0
