"""JobSpec / FeatureSet validation: good specs parse, every bad field gets one message naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipelines.errors import SpecError
from pipelines.spec import DatasetSpec, FeatureSet, JobSpec, SelectionSpec, as_spec_error, load_spec

DESIGN_YAML = """\
name: ctr-main                 # feature-set name
dataset:
  path: data/ctr/
  label: label
  dense: [I1, I2]
  sparse: [C1, C2]
  validation_fraction: 0.2
selection:
  features: 10
  crosses: 3
  embedding_dims: [4, 8, 16, 32]
constraints:
  max_embedding_mb: 64
  max_inference_ms: null
promote: auto
training:
  epochs: 2
  batch_size: 2048
  learning_rate: 0.01
  embedding_dim: 16
  num_workers: 2
  seed: 0
"""

MINIMAL: dict[str, Any] = {"name": "ctr-main", "dataset": {"path": "data/ctr", "label": "click"}}


def with_(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with ``a.b.c`` set to ``value``."""
    spec = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def test_design_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(DESIGN_YAML)
    spec = JobSpec.from_yaml(path)
    assert spec.name == "ctr-main"
    assert spec.dataset.dense == ["I1", "I2"] and spec.dataset.sparse == ["C1", "C2"]
    assert spec.selection.embedding_dims == [4, 8, 16, 32]
    assert spec.constraints.max_embedding_mb == 64 and spec.constraints.max_inference_ms is None
    assert spec.training.num_workers == 2
    assert load_spec(str(path)) == spec


def test_json_file_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(MINIMAL))
    spec = load_spec(path)
    assert spec.dataset.dense is None and spec.dataset.sparse is None
    assert spec.dataset.validation_fraction == 0.2
    assert spec.selection.features is None and spec.selection.crosses == 0 and spec.selection.embedding_dims == []
    assert spec.constraints.max_embedding_mb is None
    assert spec.promote == "auto"
    t = spec.training
    got = (t.epochs, t.batch_size, t.learning_rate, t.embedding_dim, t.num_workers, t.seed)
    assert got == (2, 2048, 0.01, 16, 1, 0)


def test_empty_yaml_sections_mean_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: a\ndataset: {path: d, label: y}\nselection:\ntraining:\n")
    spec = load_spec(path)
    assert spec.selection == SelectionSpec() and spec.training.epochs == 2


def test_embedding_dims_sorted_unique() -> None:
    assert load_spec(with_("selection.embedding_dims", [32, 8, 8, 4])).selection.embedding_dims == [4, 8, 32]


def test_path_objects_and_passthrough(tmp_path: Path) -> None:
    spec = JobSpec(name="a", dataset=DatasetSpec(path=tmp_path, label="y"))
    assert spec.dataset.path == str(tmp_path)
    assert load_spec(spec) is spec


def test_specs_are_frozen() -> None:
    spec = load_spec(MINIMAL)
    with pytest.raises(ValidationError):
        spec.training.epochs = 5  # type: ignore[misc]
    assert spec.model_copy(update={"promote": "manual"}).promote == "manual"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (with_("name", "Ctr Main"), "name", "not a valid name"),
        (with_("name", "x" * 64), "name", "1-63 characters"),
        (with_("name", "-ctr"), "name", "starting with a letter or digit"),
        ({"dataset": MINIMAL["dataset"]}, "name", "required"),
        ({"name": "a"}, "dataset", "required"),
        (with_("dataset", "data/ctr"), "dataset", "mapping"),
        (with_("dataset.path", ""), "dataset.path", "must not be empty"),
        (with_("dataset.label", " "), "dataset.label", "must not be empty"),
        ({"name": "a", "dataset": {"path": "d"}}, "dataset.label", "required"),
        (with_("dataset.validation_fraction", 0), "dataset.validation_fraction", "greater than 0"),
        (with_("dataset.validation_fraction", 1.0), "dataset.validation_fraction", "less than 1"),
        (with_("dataset.dense", ["a", "a"]), "dataset.dense", "listed twice"),
        (with_("dataset.dense", ["click"]), "dataset.dense", "is the label"),
        (with_("dataset.sparse", ["click"]), "dataset.sparse", "is the label"),
        (
            {"name": "a", "dataset": {"path": "d", "label": "y", "dense": ["x"], "sparse": ["x"]}},
            "dataset.sparse",
            "both dataset.dense and dataset.sparse",
        ),
        (with_("dataset.dense", "I1"), "dataset.dense", "valid list"),
        (with_("selection.features", 0), "selection.features", "greater than or equal to 1"),
        (with_("selection.features", "ten"), "selection.features", "integer"),
        (with_("selection.crosses", -1), "selection.crosses", "greater than or equal to 0"),
        (with_("selection.embedding_dims", [4, 6]), "selection.embedding_dims[1]", "6 is not a multiple of 4"),
        (with_("selection.embedding_dims", [0]), "selection.embedding_dims[0]", "not positive"),
        (with_("selection.embedding_dims", [-8]), "selection.embedding_dims[0]", "not positive"),
        (with_("selection.gate_holdout", 0.5), "selection.gate_holdout", "less than 0.5"),
        (with_("selection.gate_holdout", -0.1), "selection.gate_holdout", "greater than or equal to 0"),
        (with_("constraints.max_embedding_mb", 0), "constraints.max_embedding_mb", "greater than 0"),
        (with_("constraints.max_inference_ms", -1), "constraints.max_inference_ms", "greater than 0"),
        (with_("promote", "always"), "promote", "'auto' or 'manual'"),
        (with_("training.epochs", 0), "training.epochs", "greater than or equal to 1"),
        (with_("training.batch_size", 0), "training.batch_size", "greater than or equal to 1"),
        (with_("training.learning_rate", 0), "training.learning_rate", "greater than 0"),
        (with_("training.embedding_dim", 10), "training.embedding_dim", "10 is not a multiple of 4"),
        (with_("training.num_workers", 0), "training.num_workers", "greater than or equal to 1"),
        (with_("training.seed", -1), "training.seed", "greater than or equal to 0"),
        (with_("training.seed", 2**32), "training.seed", "less than or equal to 4294967295"),
        (with_("training.learning_rate", 1e309), "training.learning_rate", "finite number"),
        (with_("training.learning_rate", float("nan")), "training.learning_rate", "finite number"),
        (with_("constraints.max_inference_ms", float("inf")), "constraints.max_inference_ms", "finite number"),
        (with_("constraints.max_embedding_mb", float("inf")), "constraints.max_embedding_mb", "finite number"),
        (with_("dataset.validation_fraction", float("nan")), "dataset.validation_fraction", "finite number"),
        (with_("training.epoch", 3), "training.epoch", "did you mean 'epochs'"),
        (with_("selection.feature", 3), "selection.feature", "did you mean 'features'"),
        (with_("dataset.labels", "y"), "dataset.labels", "did you mean 'label'"),
        (with_("nmae", "y"), "nmae", "unknown field"),
        (with_("pruning.sparsity", 1.0), "pruning.sparsity", "less than 1"),
        (with_("pruning.method", "random"), "pruning.method", "'attention' or 'magnitude'"),
        (with_("pruning.block", 0), "pruning.block", "greater than or equal to 1"),
        (with_("pruning.rank_by", "norm"), "pruning.rank_by", "'weight' or 'logits'"),
        (with_("pruning.weight_decay", -0.1), "pruning.weight_decay", "greater than or equal to 0"),
        (with_("pruning.cycles", 0), "pruning.cycles", "greater than or equal to 1"),
        (with_("pruning.heads", 2), "pruning.heads", "needs training.interaction: autoint"),
        (with_("training.interaction", "dlrm"), "training.interaction", "'dcn' or 'autoint'"),
        ({**MINIMAL, "training": {"interaction": "autoint", "attention_heads": 2}, "pruning": {"heads": 3}},
         "pruning.heads", "3 is more than training.attention_heads (2)"),
    ],
)
def test_bad_field_names_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    err = info.value
    assert err.field == field
    assert words in err.message
    assert str(err).startswith(f"{field}: ")
    assert "\n" not in str(err)


def test_fbgemm_message_exactly() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(with_("selection.embedding_dims", [4, 6]))
    assert str(info.value) == (
        "selection.embedding_dims[1]: 6 is not a multiple of 4 (FBGEMM's fused kernels need multiples of 4)"
    )


def test_unknown_field_lists_the_allowed_ones() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(with_("constraints.max_memory_mb", 5))
    assert "max_embedding_mb, max_inference_ms" in info.value.message


def test_several_problems_still_one_message() -> None:
    with pytest.raises(SpecError) as info:
        load_spec({"name": "Bad", "dataset": {"path": "d", "label": "y"}, "training": {"epochs": 0, "seed": -1}})
    assert info.value.field == "name"
    assert "2 more problems: training.epochs, training.seed" in info.value.message


def test_as_spec_error_on_a_sub_model() -> None:
    with pytest.raises(ValidationError) as info:
        SelectionSpec(embedding_dims=[3])
    err = as_spec_error(info.value, SelectionSpec)
    assert err.field == "embedding_dims[0]" and err.to_dict() == {"field": err.field, "message": err.message}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping"),
        ("", "must hold a mapping"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(path)
    assert info.value.field == "spec" and words in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec: file .* not found"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_error_is_a_value_error() -> None:
    assert isinstance(SpecError("a", "b"), ValueError)


# --- FeatureSet ---------------------------------------------------------------------------------

DESIGN_FEATURESET = {
    "name": "ctr-main", "version": 3, "job_id": "j-123", "created_at": "2026-11-25T10:00:00Z",
    "spec": MINIMAL,
    "features": [{"name": "C3", "kind": "sparse", "rank": 1, "score": 0.21, "embedding_dim": 16}],
    "crosses": [{"features": ["C1", "C7"], "rank": 1, "score": 0.05, "buckets": 65536, "embedding_dim": 8}],
    "candidates": [{"name": "C9", "kind": "sparse", "score": 0.001, "selected": False}],
    "metrics": {"val_auc": 0.79, "val_logloss": 0.45, "val_auc_all_features": 0.79,
                "embedding_mb": 12.5, "embedding_mb_all_features": 80.0, "inference_ms": 1.2},
    "timings": {"selection_s": 40.1, "retrain_s": 20.3},
}


def test_featureset_design_example_round_trips() -> None:
    fs = FeatureSet.model_validate(DESIGN_FEATURESET)
    assert fs.version == 3 and fs.crosses[0].features == ("C1", "C7") and fs.metrics.embedding_mb == 12.5
    dumped = json.loads(fs.model_dump_json())
    assert dumped["created_at"] == "2026-11-25T10:00:00Z"
    assert FeatureSet.model_validate(dumped) == fs


def test_featureset_local_run_needs_no_registry_fields() -> None:
    data = {k: v for k, v in DESIGN_FEATURESET.items() if k not in ("version", "job_id", "created_at")}
    fs = FeatureSet.model_validate(data)
    assert fs.version is None and fs.job_id is None and fs.created_at is None


def test_featureset_metrics_accept_new_keys_but_entries_do_not() -> None:
    data = copy.deepcopy(DESIGN_FEATURESET)
    data["metrics"]["val_auc_no_retrain"] = 0.78
    assert FeatureSet.model_validate(data).metrics.model_extra == {"val_auc_no_retrain": 0.78}
    data["features"][0]["weight"] = 1
    with pytest.raises(ValidationError):
        FeatureSet.model_validate(data)


def test_docstring_examples() -> None:
    import doctest

    import pipelines.errors
    import pipelines.spec

    for module in (pipelines.spec, pipelines.errors):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_pruning_section_builds_the_towers_schedule() -> None:
    assert load_spec(MINIMAL).pruning.config() is None  # no sparsity: no pruning
    spec = load_spec({**MINIMAL, "pruning": {"sparsity": 0.95, "block": 4, "cycles": 3, "rank_by": "logits"}})
    cfg = spec.pruning.config()
    assert (cfg.sparsity, cfg.block, cfg.method, cfg.rank_by) == (0.95, 4, "attention", "logits")
    assert [kind for kind, _, _ in cfg.phases()] == ["dense", "sparsify", "sparse"] * 3
    assert load_spec({**MINIMAL, "pruning": {"sparsity": 0.9}}).pruning.config().cycles == 2


def test_a_spec_file_that_is_not_utf8_names_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"name: ctr\ndataset: {path: d, label: \xff\xfe}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "spec" and "not UTF-8" in info.value.message
