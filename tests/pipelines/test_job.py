"""run_job end to end on planted data: the acceptance items of the LEM issue, at test size."""

import pytest

from pipelines.job import run_job
from pipelines.spec import load_spec
from pipelines.synth import write_synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    truth = write_synth(out, rows=60_000, seed=0, n_noise=10)
    return out, truth


def _spec(path, truth, **over):
    spec = {"name": "t", "dataset": {"path": str(path), "label": "label"},
            "selection": {"features": len(truth["relevant_alone"]), "crosses": len(truth["pairs"]),
                          "embedding_dims": [4, 8, 16]},
            "training": {"epochs": 2, "batch_size": 512}}
    for k, v in over.items():
        spec[k] = {**spec.get(k, {}), **v}
    return load_spec(spec)


@pytest.fixture(scope="module")
def result(planted):
    path, truth = planted
    events = []
    return run_job(_spec(path, truth), on_event=events.append), truth, events


def test_relevant_features_are_kept_and_one_of_the_duplicates(result):
    fs, truth, _ = result
    kept = {f.name for f in fs.features}
    (dup, original), = truth["duplicate_of"].items()
    assert len(kept & {dup, original}) == 1
    kept_as_original = {original if k == dup else k for k in kept}
    assert set(truth["relevant_alone"]) <= kept_as_original


def test_planted_crosses_rank_first(result):
    fs, truth, _ = result
    top = [set(c.features) for c in sorted(fs.crosses, key=lambda c: c.rank)[: len(truth["pairs"])]]
    assert sorted(map(sorted, top)) == sorted(map(sorted, truth["pairs"]))


def test_final_model_is_at_least_as_good_as_all_features(result):
    fs, _, _ = result
    assert fs.metrics.val_auc >= fs.metrics.val_auc_all_features
    assert fs.metrics.embedding_mb > 0 and fs.metrics.inference_ms > 0


def test_every_candidate_is_reported_and_progress_was_streamed(result):
    fs, truth, events = result
    names = {c.name for c in fs.candidates}
    assert set(truth["dense"]) | set(truth["sparse"]) <= names
    stages = [e["stage"] for e in events if e["kind"] == "stage"]
    assert stages[:2] == ["load", "selection"] and stages[-1] == "done"
    assert any(e["kind"] == "progress" and e["picks"].get("features", 0) > 0 for e in events)


def test_budgets_hold(planted):
    path, truth = planted
    fs = run_job(_spec(path, truth, constraints={"max_embedding_mb": 0.5, "max_inference_ms": 6.0},
                       selection={"features": 6, "crosses": 1}))
    assert fs.metrics.embedding_mb <= 0.5
    assert fs.metrics.inference_ms <= 6.0
