"""Exports name a FeatureSet honestly: a published one by its version, an unpublished one (version
None, as ``seqattn select --out`` writes it) as ``{name}-unpublished``, never as a made-up version 1."""

from __future__ import annotations

import ast
import doctest
import json

import pytest

import pipelines.export
from pipelines.export import (
    export_feature_set,
    feast_definition,
    release_name,
    to_embedding_bag_configs,
    torchrec_config,
)
from pipelines.spec import FeatureSet, JobSpec, SelectedCross, SelectedFeature


def _fs(name: str = "ctr-main", **over: object) -> FeatureSet:
    return FeatureSet(
        name=name, spec=JobSpec(name=name, dataset={"path": "d", "label": "y"}),
        features=[SelectedFeature(name="user", kind="sparse", rank=1, score=0.5, embedding_dim=8),
                  SelectedFeature(name="price", kind="dense", rank=2, score=0.3)],
        crosses=[SelectedCross(features=("user", "item"), rank=1, score=0.2, buckets=64, embedding_dim=4)],
        **over)


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


def test_published_feast_service_is_pinned_to_its_version() -> None:
    variable, kwargs = _service(feast_definition(_fs(version=3, job_id="job-7")))
    assert variable == "ctr_main_v3" and kwargs["name"] == "ctr-main-v3"
    assert kwargs["tags"] == {"seqattn_feature_set": "ctr-main", "seqattn_version": "3"}


def test_a_name_starting_with_a_digit_is_still_a_python_variable() -> None:
    source = feast_definition(_fs("3p-ctr", version=1))
    compile(source, "fs.py", "exec")  # was `3p_ctr_v1 = FeatureService(...)`: a SyntaxError
    variable, kwargs = _service(source)
    assert variable.isidentifier() and kwargs["name"] == "3p-ctr-v1"


def test_torchrec_config_says_when_a_set_is_unpublished() -> None:
    about = torchrec_config(_fs(job_id="job-7"))["feature_set"]
    assert about["version"] is None and about["published"] is False and about["job_id"] == "job-7"
    assert "never published" in about["note"]
    assert torchrec_config(_fs(version=2))["feature_set"] == {"name": "ctr-main", "version": 2}


def test_torchrec_round_trip_and_release_names() -> None:
    cfg = json.loads(export_feature_set(_fs(), "torchrec"))
    assert cfg["dense"] == ["price"] and cfg["sparse"] == ["user"]
    tables = to_embedding_bag_configs(cfg, {"user": 10})
    assert ([(t.name, t.num_embeddings, t.embedding_dim) for t in tables]
            == [("t_user", 10, 8), ("t_user_X_item", 64, 4)])
    assert release_name(_fs()) == "ctr-main-unpublished" and release_name(_fs(version=4)) == "ctr-main-v4"
    with pytest.raises(ValueError, match="format"):
        export_feature_set(_fs(), "onnx")


def test_docstring_examples() -> None:
    assert doctest.testmod(pipelines.export).failed == 0
