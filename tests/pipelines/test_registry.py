"""The feature-set registry: real SQLite and files under a temporary SEQATTN_HOME."""

import json
import multiprocessing as mp
import sqlite3

import pytest

from pipelines.errors import SpecError
from pipelines.registry import PromotionConflict, Registry, promotion_decision, stability
from pipelines.spec import Candidate, FeatureSet, FeatureSetMetrics, JobSpec, SelectedFeature


def _fs(kept, auc=0.75, mb=1.0, others=(), promote="auto", constraints=None):
    spec = JobSpec(name="ctr", dataset={"path": "d", "label": "y"}, promote=promote, constraints=constraints or {})
    features = [SelectedFeature(name=n, kind="sparse", rank=i + 1, score=1.0 - i / 10) for i, n in enumerate(kept)]
    candidates = [Candidate(name=n, kind="sparse", score=1.0 - i / 10, selected=True) for i, n in enumerate(kept)]
    candidates += [Candidate(name=n, kind="sparse", score=s, selected=False) for n, s in others]
    return FeatureSet(name="ctr", spec=spec, features=features, candidates=candidates,
                      metrics=FeatureSetMetrics(val_auc=auc, embedding_mb=mb, inference_ms=1.0))


def test_versions_count_up_and_files_are_immutable_json(tmp_path):
    reg = Registry(tmp_path)
    first = reg.publish(_fs(["a", "b"]))
    second = reg.publish(_fs(["a", "c"], auc=0.7505))
    assert (first.version, second.version) == (1, 2)
    path = tmp_path / "artifacts" / "ctr" / "2" / "featureset.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 2 and [f["name"] for f in on_disk["features"]] == ["a", "c"]
    assert reg.get("ctr", 1).features[1].name == "b"
    assert not list((tmp_path / "artifacts").rglob("*.tmp"))  # written by rename, nothing left over
    with sqlite3.connect(tmp_path / "seqattn.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_first_version_is_promoted_then_the_policy_decides(tmp_path):
    reg = Registry(tmp_path)
    assert reg.publish(_fs(["a"], auc=0.750)).decision == "promoted"
    within = reg.publish(_fs(["a"], auc=0.7495))
    assert within.decision == "promoted" and within.promoted
    worse = reg.publish(_fs(["a"], auc=0.7470))
    assert worse.decision == "rejected" and "epsilon" in worse.reason and not worse.promoted
    assert reg.get("ctr").version == 2  # the rejected version is kept, the promoted one stays
    assert [v.decision for v in reg.versions("ctr")] == ["promoted", "promoted", "rejected"]


def test_budgets_and_manual_promotion(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fs(["a"], auc=0.70, mb=1.0))
    over = reg.publish(_fs(["a"], auc=0.80, mb=5.0, constraints={"max_embedding_mb": 2.0}))
    assert over.decision == "rejected" and "max_embedding_mb" in over.reason
    manual = reg.publish(_fs(["b"], auc=0.90, promote="manual"))
    assert manual.decision == "pending" and reg.get("ctr").version == 1
    assert reg.promote("ctr", 3).promoted and reg.get("ctr").features[0].name == "b"
    with pytest.raises(SpecError) as err:
        reg.promote("ctr", 9)
    assert err.value.field == "version" and "versions are 1, 2, 3" in err.value.message


def test_stability_is_recorded_against_the_previous_version(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fs(["a", "b", "c"], others=[("d", 0.1), ("e", 0.0)]))
    rec = reg.publish(_fs(["a", "b", "d"], others=[("c", 0.2), ("e", 0.0)]))
    assert rec.previous_version == 1 and rec.jaccard == pytest.approx(2 / 4)
    # orders a,b,c,d,e vs a,b,d,c,e: one swap among five -> 1 - 6*2/(5*24) = 0.9
    assert rec.rank_correlation == pytest.approx(0.9)
    same = stability(_fs(["a", "b"]), _fs(["a", "b"]), 1)
    assert same.jaccard == 1.0


def test_policy_without_a_promoted_version_and_with_nan_auc():
    assert promotion_decision(_fs(["a"]), None) == ("promoted", "first version of this name")
    assert promotion_decision(_fs(["a"], auc=float("nan")), _fs(["a"]))[0] == "rejected"


def _publish_many(home, n):
    reg = Registry(home)
    return [reg.publish(_fs(["a"])).version for _ in range(n)]


def test_concurrent_publishers_never_share_a_version(tmp_path):
    Registry(tmp_path)
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        got = pool.starmap(_publish_many, [(str(tmp_path), 4)] * 3)
    versions = sorted(v for chunk in got for v in chunk)
    assert versions == list(range(1, 13))
    assert len(list((tmp_path / "artifacts" / "ctr").iterdir())) == 12


def test_unknown_names_and_versions_are_clear(tmp_path):
    reg = Registry(tmp_path)
    assert reg.versions("nothing") == [] and reg.latest("nothing") is None
    with pytest.raises(SpecError, match="has no promoted version"):
        reg.get("nothing")


def _log(reg, name="ctr"):
    return [(p["version"], p["previous_version"], p["source"]) for p in reg.promotions(name)]


def test_every_promotion_is_logged_by_the_registry_so_rollback_works_whoever_promoted(tmp_path):
    # As `seqattn pipeline run` does: publishes straight into the registry, no service involved.
    reg = Registry(tmp_path)
    reg.publish(_fs(["a"], auc=0.75), promoted_by="schedule:daily")
    reg.publish(_fs(["a"], auc=0.76), promoted_by="schedule:daily")
    reg.publish(_fs(["a"], auc=0.60))  # rejected: not a promotion, not logged
    assert _log(reg) == [(1, None, "schedule:daily"), (2, 1, "schedule:daily")]
    assert reg.rollback("ctr").version == 1 and reg.get("ctr").version == 1
    assert reg.promote("ctr", 3).promoted
    reg.promote("ctr", 3)  # already served: no new entry
    assert _log(reg)[2:] == [(1, 2, "rollback"), (3, 1, "manual")]
    assert Registry(tmp_path).rollback("ctr").version == 1  # another process reads the same log
    with pytest.raises(PromotionConflict) as err:
        reg.promote("ctr", 2, expected=3)
    assert err.value.field == "expected_version" and "is 1, not 3" in err.value.message
    assert reg.get("ctr").version == 1


def test_rollback_of_the_only_promoted_version_says_why(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fs(["a"], auc=0.75))
    with pytest.raises(PromotionConflict) as err:
        reg.rollback("ctr")
    assert err.value.field == "name" and "v1 is the only promoted version (and the only version)" in err.value.message
    reg.publish(_fs(["a"], auc=0.60))
    reg.publish(_fs(["a"], auc=0.90, promote="manual"))
    with pytest.raises(PromotionConflict) as err:
        reg.rollback("ctr")
    assert "v1 is the only promoted version (never promoted: v2 rejected, v3 pending)" in err.value.message
    assert reg.get("ctr").version == 1 and _log(reg) == [(1, None, "publish")]


def test_a_home_from_before_the_promotion_log_is_backfilled(tmp_path):
    reg = Registry(tmp_path)
    for auc in (0.70, 0.71, 0.60, 0.72):
        reg.publish(_fs(["a"], auc=auc))
    with sqlite3.connect(tmp_path / "seqattn.db") as db:  # as an older registry left it: no log at all
        db.execute("DELETE FROM promotions")
    reopened = Registry(tmp_path)
    assert _log(reopened) == [(1, None, "backfill"), (2, 1, "backfill"), (4, 2, "backfill")]
    assert reopened.rollback("ctr").version == 2
    Registry(tmp_path)  # nothing left to backfill: the log is unchanged
    assert len(reopened.promotions("ctr")) == 4


def test_promotion_reasons_say_which_way_the_auc_went(tmp_path):
    promoted = _fs(["a"], auc=0.7891).model_copy(update={"version": 1})
    assert promotion_decision(_fs(["a"], auc=0.8464), promoted)[1] == \
        "val_auc 0.8464 beats the promoted v1's 0.7891 by 0.0573"
    assert promotion_decision(_fs(["a"], auc=0.7891), promoted)[1] == "val_auc 0.7891 ties the promoted v1's 0.7891"
    assert promotion_decision(_fs(["a"], auc=0.7886), promoted)[1] == \
        "val_auc 0.7886 is below the promoted v1's 0.7891 by 0.0005, within epsilon 0.001"
    assert promotion_decision(_fs(["a"], auc=0.7700), promoted) == (
        "rejected", "val_auc 0.7700 is worse than the promoted v1's 0.7891 by 0.0191, more than epsilon 0.001")
    budget = _fs(["a"], auc=0.80, mb=1.0, constraints={"max_embedding_mb": 2.0})
    assert promotion_decision(budget, promoted)[1].endswith("by 0.0109; budgets hold")
    assert "within epsilon" not in promotion_decision(_fs(["a"], auc=0.8464), promoted)[1]


def test_artifacts_are_published_with_the_version_whole_and_never_rewritten(tmp_path):
    staging = tmp_path / "staging"
    (staging / "vocabularies").mkdir(parents=True)
    (staging / "preprocessing.json").write_text('{"format": 1}')
    (staging / "vocabularies" / "a.parquet").write_bytes(b"PAR1")
    reg = Registry(tmp_path / "home")
    rec = reg.publish(_fs(["a"]), artifacts=staging)
    folder = tmp_path / "home" / "artifacts" / "ctr" / str(rec.version)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "featureset.json", "preprocessing.json", "vocabularies", "vocabularies/a.parquet"]
    assert reg.get("ctr", rec.version).version == 1
    # A version folder left by a publisher that died before its commit is set aside, not reused.
    (tmp_path / "home" / "artifacts" / "ctr" / "2").mkdir()
    (tmp_path / "home" / "artifacts" / "ctr" / "2" / "preprocessing.json").write_text("stale")
    second = reg.publish(_fs(["a"]))
    folder2 = tmp_path / "home" / "artifacts" / "ctr" / "2"
    assert second.version == 2 and sorted(p.name for p in folder2.iterdir()) == ["featureset.json"]
    assert [p.name for p in folder2.parent.iterdir() if p.name.startswith(".2.abandoned-")]
    assert not list((tmp_path / "home").rglob("*.tmp"))
