"""The dashboard's pages in process (HTTP level): empty states, what each page shows for published
versions, jobs and schedules in the store, and 4xx pages for unknown or invalid names. The browser
tests (test_dashboard_browser.py) run it for real on a live server with real jobs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live_server import job_spec, publish_versions

from pipelines.registry import Registry
from pipelines.spec import Candidate, FeatureSet, JobSpec, LatencyTrim, SelectedCross, SelectedFeature
from services.selector_api.app import create_app
from services.selector_api.dashboard import charts
from services.selector_api.settings import Settings
from services.selector_api.store import Store

PAGES = ("/dashboard", "/dashboard/jobs", "/dashboard/schedules")


def _client(home: Path) -> TestClient:
    """Without the lifespan (no ``with``): no worker takes the queued jobs these tests plant."""
    return TestClient(create_app(Settings(home=home, scheduler_enabled=False, data_roots=str(home))))


def _rich(name: str = "ctr-main") -> FeatureSet:
    """A version with crosses, dimensions, budgets and candidates not kept."""
    spec = JobSpec(name=name, dataset={"path": "synth", "label": "label"},
                   selection={"features": 3, "crosses": 1, "embedding_dims": [4, 8, 16]},
                   constraints={"max_embedding_mb": 2.0, "max_inference_ms": 1.0})
    kept = [SelectedFeature(name="rel_0", kind="sparse", rank=1, score=0.41, embedding_dim=16),
            SelectedFeature(name="dense_0", kind="dense", rank=2, score=0.22),
            SelectedFeature(name="rel_1", kind="sparse", rank=3, score=0.12, embedding_dim=4)]
    cands = [Candidate(name=f.name, kind=f.kind, score=f.score, selected=True) for f in kept]
    cands += [Candidate(name="noise_07", kind="sparse", score=0.031, selected=False),
              Candidate(name="rel_0_X_rel_1", kind="cross", score=0.2, selected=True)]
    return FeatureSet(name=name, spec=spec, job_id="seed-rich", features=kept, candidates=cands,
                      crosses=[SelectedCross(features=("rel_0", "rel_1"), rank=1, score=0.2, buckets=4096,
                                             embedding_dim=8)],
                      metrics={"val_auc": 0.752, "val_auc_all_features": 0.760, "val_logloss": 0.51,
                               "embedding_mb": 1.5, "embedding_mb_all_features": 6.0, "inference_ms": 1.4,
                               "inference_ms_all_features": 2.5},
                      timings={"selection_s": 3.5, "retrain_s": 1.25})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    publish_versions(tmp_path, "ctr-main", (0.70, 0.71))  # v1 keeps f0, v2 keeps f1
    assert Registry(tmp_path).publish(_rich()).decision == "rejected"  # v3: over its latency budget
    Store(tmp_path).promote("ctr-main", 3)  # served anyway, by hand
    return tmp_path


def test_every_page_has_an_empty_state_that_says_what_to_do(tmp_path: Path) -> None:
    c = _client(tmp_path)
    for path, hint in zip(PAGES, ("Submit a JobSpec", "Submit a JobSpec", "POST /v1/schedules")):
        r = c.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert 'id="empty-state"' in r.text and hint in r.text, path
        assert "default-src 'none'" in r.headers["content-security-policy"]
        # Only our own files are referenced: nothing from elsewhere.
        assert "http://" not in r.text and "https://" not in r.text
    assert c.get("/dashboard/static/dashboard.css").status_code == 200
    assert c.get("/dashboard/static/dashboard.js").status_code == 200
    assert c.get("/dashboard/jobs/live").text.count('id="empty-state"') == 1


def test_feature_sets_page_lists_the_promoted_version_auc_and_budget_use(home: Path) -> None:
    c = _client(home)
    html = c.get("/dashboard").text
    assert "ctr-main" in html and ">v3<" in html
    assert "0.7520" in html and "0.7600" in html and "-0.0080" in html  # AUC, all-features AUC, their gap
    assert "75%" in html and "of 2 MB" in html  # 1.5 of the 2 MB budget
    assert "140%" in html  # 1.4 of the 1 ms budget: over


def test_version_page_shows_selection_order_scores_crosses_dims_budgets_and_the_rest(home: Path) -> None:
    c = _client(home)
    html = c.get("/dashboard/feature-sets/ctr-main/versions/3").text
    kept = html.index('id="kept"')
    order = [html.index(f"{i}. {n}", kept) for i, n in ((1, "rel_0"), (2, "dense_0"), (3, "rel_1"))]
    assert order == sorted(order)  # selection order
    assert 'class="chart bars"' in html and "0.4100" in html
    assert "rel_0 × rel_1" in html and "4,096" in html  # the cross
    dims = html[html.index('id="dims"'):html.index('id="budgets"')]
    assert "<svg" in dims and ">16<" in dims and ">4<" in dims and ">8<" in dims
    budgets = html[html.index('id="budgets"'):html.index('id="others"')]
    assert "budget 2 MB" in budgets and 'class="bar over"' in budgets  # 1.4 ms > 1 ms
    others = html[html.index('id="others"'):html.index('id="timings"')]
    assert "noise_07" in others and ">0.031<" in others and "rel_0" not in others
    assert "selection_s" in html and "3.50 s" in html and "&#34;max_embedding_mb&#34;: 2.0" in html


def test_a_kept_version_page_follows_a_promotion(home: Path) -> None:
    c = _client(home)

    def header() -> str:
        return c.get("/dashboard/feature-sets/ctr-main/versions/3").text.split("</h1>")[0]

    assert "badge served" in header() and "badge served" in header()  # the second from the kept page
    Store(home).promote("ctr-main", 2)
    assert "badge served" not in header()


def test_history_page_charts_versions_and_diffs_each_with_the_previous(home: Path) -> None:
    c = _client(home)
    html = c.get("/dashboard/feature-sets/ctr-main").text
    assert "<polyline" in html and "validation AUC" in html and "kept features" in html
    rows = {int(r.split('data-version="')[1].split('"')[0]): r for r in html.split('<tr class="')[1:]}
    assert "+f1" in rows[2] and "−f0" in rows[2] and "0.00" in rows[2]
    assert "+rel_0" in rows[3] and "−f1" in rows[3] and "served" in rows[3]
    assert 'class="promote" data-version="1"' in html and 'data-version="3">Promote' not in html
    assert 'id="rollback"' in html and "promoted" in html


def test_jobs_page_groups_jobs_by_state_with_progress_and_errors(tmp_path: Path) -> None:
    store = Store(tmp_path)
    spec = json.dumps(job_spec("ctr"))
    failed, _ = store.create_job("job", "ctr", spec)
    running, _ = store.create_job("job", "ctr", spec)
    queued, _ = store.create_job("job", "later", spec)
    store.claim_next_job("me")
    store.finish_job(failed.id, "failed", error_message="ValueError: the planted data broke")
    store.claim_next_job("me")
    store.set_progress(running.id, {"stage": "selection", "stages": ["load", "selection"], "epoch": 0, "step": 3,
                                    "total_steps": 8, "loss": 0.61, "picks": {"features": 2}})
    c = _client(tmp_path)
    page, live = c.get("/dashboard/jobs").text, c.get("/dashboard/jobs/live").text
    assert 'data-poll="/dashboard/jobs/live"' in page and 'id="job-form"' in page
    for html in (page, live):
        running_part = html[html.index('id="running"'):html.index('id="queued"')]
        assert running.id in running_part and "selection" in running_part and 'value="3"' in running_part
        assert queued.id in html[html.index('id="queued"'):html.index('id="done"')]
        assert "ValueError: the planted data broke" in html[html.index('id="failed"'):]


def test_the_polled_jobs_list_is_304_until_a_job_changes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job, _ = store.create_job("job", "ctr", json.dumps(job_spec("ctr")))
    c = _client(tmp_path)
    first = c.get("/dashboard/jobs/live")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and job.id in first.text and "<time datetime=" in first.text
    again = c.get("/dashboard/jobs/live", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    store.claim_next_job("me")
    store.set_progress(job.id, {"stage": "load", "stages": ["load"]})
    moved = c.get("/dashboard/jobs/live", headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["ETag"] != etag and "load" in moved.text


def test_schedules_page_shows_cadence_last_and_next_run_and_outcome(tmp_path: Path) -> None:
    store = Store(tmp_path)
    body = {"name": "daily", "job": job_spec("daily-fs"), "window": {"path": "daily", "size": 2},
            "cadence": {"cron": "0 3 * * *"}}
    store.create_schedule("daily", json.dumps(body), datetime.now(timezone.utc) + timedelta(hours=5))
    c = _client(tmp_path)
    html = c.get("/dashboard/schedules").text
    assert "cron 0 3 * * *" in html and "in 5 h" in html and "not run yet" in html and "never" in html
    job = store.queue_schedule_run("daily")
    store.claim_next_job("me")
    store.finish_job(job.id, "failed", error_message="no partitions under daily")
    html = c.get("/dashboard/schedules").text
    assert "no partitions under daily" in html and 'class="badge failed"' in html


def test_unknown_or_invalid_names_are_4xx_pages_with_the_apis_message(home: Path) -> None:
    c = _client(home)
    r = c.get("/dashboard/feature-sets/nope")
    assert r.status_code == 404 and "no feature set &#39;nope&#39;" in r.text and "<html" in r.text
    r = c.get("/dashboard/feature-sets/ctr-main/versions/9")
    assert r.status_code == 404 and "has no version 9" in r.text
    assert c.get("/dashboard/feature-sets/nope/versions/1").status_code == 404
    assert c.get("/dashboard/feature-sets/Bad%20Name").status_code == 422
    assert c.get("/dashboard/feature-sets/ctr-main/versions/0").status_code == 422
    assert c.post("/dashboard").status_code == 405  # the pages never write


def test_charts_escape_labels() -> None:
    svg = charts.bars([("<script>", 1.0)])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert charts.budget(None, 1.0, None, "MB") == '<p class="muted">not measured</p>'
    assert "<polyline" in charts.line_chart([1], [("auc", [0.7], "{:.2f}")])


def _section(html: str, start: str, end: str) -> str:
    return html[html.index(f'id="{start}"'):html.index(f'id="{end}"')]


def _trimmed(name: str = "ctr-main", removed: bool = True) -> FeatureSet:
    """_rich's choice as the latency stage left it: rel_2 and the cross rel_0 × rel_2 picked, then
    removed to fit the 1 ms budget (or nothing removed)."""
    fs = _rich(name)
    cands = list(fs.candidates) + [Candidate(name="rel_2", kind="sparse", score=0.09, selected=False),
                                   Candidate(name="rel_0_X_rel_2", kind="cross", score=0.15, selected=False)]
    latency = (LatencyTrim(budget_ms=1.0, ms_before=1.9, ms_after=0.95, removed_features=["rel_2"],
                           removed_crosses=[("rel_0", "rel_2")]) if removed else
               LatencyTrim(budget_ms=1.0, ms_before=0.8, ms_after=0.8))
    return fs.model_copy(update={"candidates": cands, "latency": latency,
                                 "metrics": fs.metrics.model_copy(update={"inference_ms": latency.ms_after})})


def test_version_page_shows_what_the_latency_stage_removed(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish(_trimmed())  # v1: rel_2 and a cross removed
    registry.publish(_trimmed(removed=False))  # v2: fitted as chosen
    registry.publish(_rich())  # v3: no latency stage recorded
    c = _client(tmp_path)
    html = c.get("/dashboard/feature-sets/ctr-main/versions/1").text
    latency = _section(html, "latency", "others")
    assert "1 ms" in latency and "1.9 ms" in latency and "0.95 ms" in latency  # budget, before, after
    assert "rel_2" in latency and "rel_0 × rel_2" in latency and "choice fitted" not in latency
    others = html[html.index('id="others"'):html.index('id="timings"')]
    bars = {r.split("<title>")[1].split(":")[0]: r for r in others.split('<g class="bar-row">')[1:]}
    for name in ("rel_2", "rel_0_X_rel_2"):  # picked, then removed: marked so, not an ordinary loser
        assert 'class="bar latency-bar"' in bars[name] and "(removed by the latency budget)</title>" in bars[name]
    assert 'class="bar muted-bar"' in bars["noise_07"] and "(not kept)</title>" in bars["noise_07"]
    marked = others[others.index('id="others-removed"'):]
    assert "rel_2" in marked and "rel_0_X_rel_2" in marked and "noise_07" not in marked
    assert marked.count("removed by the latency budget") == 2
    fitted = c.get("/dashboard/feature-sets/ctr-main/versions/2").text
    assert "nothing removed: the choice fitted" in _section(fitted, "latency", "others").lower()
    assert "removed by the latency budget" not in fitted
    assert 'id="latency"' not in c.get("/dashboard/feature-sets/ctr-main/versions/3").text


def test_version_page_explains_scores_and_shows_each_score_beside_its_rank(home: Path) -> None:
    html = _client(home).get("/dashboard/feature-sets/ctr-main/versions/3").text
    kept = _section(html, "kept", "crosses")
    note = kept[kept.index('id="score-note"'):kept.index("</p>", kept.index('id="score-note"'))]
    assert "softmax gate at the end of the phase" in note and "not monotone in rank" in note
    assert "compare picks by rank" in note.lower()
    for rank, score in ((1, "0.4100"), (2, "0.2200"), (3, "0.1200")):
        assert f'<td class="num">{rank}</td><td class="num">{score}</td>' in kept
    assert '<td class="num">1</td><td class="num">0.2000</td>' in _section(html, "crosses", "dims")


def test_inputs_of_a_kept_cross_are_shown_as_inputs_not_as_not_kept(tmp_path: Path) -> None:
    fs = _rich()
    cands = list(fs.candidates) + [Candidate(name="rel_9", kind="sparse", score=0.02, selected=False),
                                   Candidate(name="rel_0_X_rel_9", kind="cross", score=0.3, selected=True)]
    crosses = list(fs.crosses) + [SelectedCross(features=("rel_0", "rel_9"), rank=2, score=0.3, buckets=512)]
    Registry(tmp_path).publish(fs.model_copy(update={"candidates": cands, "crosses": crosses}))
    html = _client(tmp_path).get("/dashboard/feature-sets/ctr-main/versions/1").text
    inputs = _section(html, "crosses", "dims")
    assert "input of cross rel_0 × rel_9" in inputs and "not dropped" in inputs
    assert "rel_0" not in inputs.split('id="cross-inputs"')[1].split("input of")[0]  # rel_0 is a kept feature
    others = html[html.index('id="others"'):html.index('id="timings"')]
    assert "rel_9" not in others and "noise_07" in others
    assert "of 5 features" in html  # rel_0, dense_0, rel_1, noise_07, rel_9


def test_history_diff_shows_crosses_added_and_removed_and_embedding_dim_changes(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v1 = _rich()
    registry.publish(v1)
    features = [f.model_copy(update={"embedding_dim": 8}) if f.name == "rel_0" else f for f in v1.features]
    crosses = [SelectedCross(features=("rel_1", "noise_07"), rank=1, score=0.2, buckets=1024, embedding_dim=4)]
    registry.publish(v1.model_copy(update={"features": features, "crosses": crosses}))
    registry.publish(v1.model_copy(update={"features": features, "crosses": crosses}))
    html = _client(tmp_path).get("/dashboard/feature-sets/ctr-main").text
    rows = {int(r.split('data-version="')[1].split('"')[0]): r for r in html.split('<tr class="')[1:]}
    added, removed, dims = [c.split("</td>")[0] for c in rows[2].split('class="diff')[1:4]]
    assert "+rel_1 × noise_07" in added and "−rel_0 × rel_1" in removed
    assert "rel_0 16→8" in dims and "rel_1" not in dims  # rel_1 kept its 4
    added, removed, dims = [c.split("</td>")[0] for c in rows[3].split('class="diff')[1:4]]
    assert "×" not in added + removed and "unchanged" in dims
    assert "first" in rows[1]


def test_version_page_shows_the_data_window(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    rows = {"train_rows": 8000, "valid_rows": 2000}
    plain = _rich()
    registry.publish(plain.model_copy(update={"metrics": plain.metrics.model_copy(update=rows)}))
    window = tmp_path / "windows" / "nightly" / "2026-01-01_2026-01-07"
    spec = plain.spec.model_copy(update={"dataset": plain.spec.dataset.model_copy(update={"path": str(window)})})
    run = plain.model_copy(update={"spec": spec, "metrics": plain.metrics.model_copy(update=rows)})
    days = [f"2026-01-0{d}" for d in range(1, 8)]
    registry.publish(run, source=json.dumps({"schedule": "nightly", "partition": "day", "window": days,
                                             "warm_start_from": 1}))
    registry.publish(run)  # a window folder without a recorded source: read from the path
    c = _client(tmp_path)
    data = _section(c.get("/dashboard/feature-sets/ctr-main/versions/1").text, "data", "kept")
    assert ">synth<" in data and "8,000 train" in data and "2,000 validation" in data and "window" not in data
    data = _section(c.get("/dashboard/feature-sets/ctr-main/versions/2").text, "data", "kept")
    assert "day=2026-01-01 … 2026-01-07 (7 partitions)" in data and "nightly" in data
    assert "warm-started from v1" in data and str(window) in data and "8,000 train" in data
    data = _section(c.get("/dashboard/feature-sets/ctr-main/versions/3").text, "data", "kept")
    assert "2026-01-01 … 2026-01-07 (2 partitions)" not in data and "2026-01-01 … 2026-01-07" in data
    assert "nightly" in data


def test_a_disabled_rollback_says_why_as_the_api_would(tmp_path: Path) -> None:
    from services.selector_api.errors import Conflict

    publish_versions(tmp_path, "ctr-main", (0.70, 0.60))  # v1 promoted, v2 rejected
    c, store = _client(tmp_path), Store(tmp_path)

    def button() -> str:
        html = c.get("/dashboard/feature-sets/ctr-main").text
        return html[html.index('id="rollback"') - 30:html.index('<output id="action-result"')]

    disabled = button()
    assert ("disabled" in disabled
            and "has no earlier promotion to roll back to: v1 is the only promoted version" in disabled)
    assert 'id="rollback-why"' in disabled and "Rollback unavailable: feature set" in disabled
    with pytest.raises(Conflict):
        store.rollback("ctr-main")  # the API has nothing to roll back to either
    store.promote("ctr-main", 2)
    enabled = button()
    assert "disabled" not in enabled and "Roll back to v1" in enabled and "rollback-why" not in enabled
    assert store.rollback("ctr-main").version == 1  # where the page said
    assert "Roll back to v2" in button()  # v1's last promotion (the rollback) replaced v2
    assert store.rollback("ctr-main").version == 2
