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
from pipelines.spec import Candidate, FeatureSet, JobSpec, SelectedCross, SelectedFeature
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
