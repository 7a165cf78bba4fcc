"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a
real ``seqattn serve`` holding real jobs run on planted data.

One server for the module: its pages are first seen empty, then two jobs run on the planted data
(the first promoted, the second ``promote: manual``, so pending), a schedule whose job names a
missing label fails, and a long job is submitted through the page's own form. The tests check what
an engineer looks for (selected features, charts, diffs, live progress, the API's message for a bad
spec, promote and rollback with the API key) and take screenshots at 1280×800 and 390 wide, into a
temporary folder, or into ``$SEQATTN_SCREENSHOTS``: ``make screenshots`` refreshes docs/dashboard.md's
``docs/img/dashboard-*.png`` this way (a plain test run leaves the tracked images alone).

Chromium comes from ``make setup`` (apt). Without it these tests skip on a developer's machine and
FAIL in CI (``CI`` set), so a missing browser can never pass as green.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import API_KEY, AUTH, ServerProcess, job_spec, wait_job

from pipelines.synth import write_partitioned_synth, write_synth

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the fixture below fails (CI) or skips
    expect = sync_playwright = None

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# As the machine's probe runs it: no sandbox as root, and no background connections to the internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
SHOTS = Path(os.environ.get("SEQATTN_SCREENSHOTS") or Path(tempfile.gettempdir()) / "seqattn-screenshots")
NAME = "ctr-main"


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"dashboard browser tests cannot run in CI: {why} (make setup installs chromium)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Planted data of our own (20k rows): enough for the jobs below to find the planted features, so
    the pages and screenshots show a real selection rather than near-uniform scores."""
    root = tmp_path_factory.mktemp("dashboard-data")
    write_synth(root / "synth", rows=20_000, seed=3, n_noise=6)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("dashboard") / "home", [data_root]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def page(chromium: Any, server: ServerProcess) -> Iterator[Any]:
    """A fresh tab at 1280×800 that fails the test on any request to another host, any script error
    or any Content-Security-Policy violation."""
    context = chromium.new_context(viewport=WIDE)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    outside: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    # A blocked resource or inline code shows as a console error naming the Content Security Policy.
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Content Security" in m.text else None)
    yield tab
    context.close()
    assert not outside, f"the dashboard fetched from elsewhere: {outside}"
    assert not errors, f"script errors: {errors}"


def _shot(tab: Any, name: str, narrow: bool = True) -> None:
    """Screenshots at 1280×800 (the whole page) and, with ``narrow``, 390 wide; the narrow page
    must not scroll sideways (wide tables scroll inside their own box)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=True)
    if narrow:
        tab.set_viewport_size(NARROW)
        overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name}: the page is {overflow}px wider than a 390px screen"
        tab.screenshot(path=str(SHOTS / f"dashboard-{name}-narrow.png"), full_page=True)
        tab.set_viewport_size(WIDE)


@pytest.fixture(scope="module")
def jobs_run(api: httpx.Client, data_root: Path) -> dict[str, Any]:
    """Real jobs on the planted data: versions 1 (promoted, the first) and 2 (``promote: manual``,
    so pending, with a latency budget it fits) of ctr-main, and a scheduled run that fails."""
    shape = {"selection": {"features": 4, "crosses": 1, "embedding_dims": [4, 8, 16]},
             "constraints": {"max_embedding_mb": 8}, "training": {"epochs": 2, "batch_size": 512}}
    specs = [job_spec(NAME, **shape),
             job_spec(NAME, **{**shape, "selection": {**shape["selection"], "features": 5},
                               "constraints": {**shape["constraints"], "max_inference_ms": 10_000},
                               "training": {**shape["training"], "seed": 1}}, promote="manual")]
    done = []
    for spec in specs:  # one at a time: each version's diff is against the one before
        r = api.post("/v1/jobs", json=spec, headers=AUTH)
        assert r.status_code == 202, r.text
        done.append(wait_job(api, r.json()["id"], timeout=180))
        assert done[-1]["state"] == "succeeded", done[-1]
    write_partitioned_synth(data_root / "dash-daily", days=2, rows_per_day=500, drift_day=None, seed=0, n_noise=2)
    schedule = {"name": "nightly", "job": job_spec("nightly-fs", dataset={"label": "no-such-label"}),
                "window": {"path": "dash-daily", "size": 1}, "cadence": {"cron": "0 3 * * *"}}
    assert api.post("/v1/schedules", json=schedule, headers=AUTH).status_code == 201
    run = api.post("/v1/schedules/nightly/run", headers=AUTH).json()
    failed = wait_job(api, run["id"])
    assert failed["state"] == "failed" and failed["error"]["field"] == "dataset.label", failed
    return {"jobs": done, "failed": failed, "versions": api.get(f"/v1/feature-sets/{NAME}/versions").json()}


def test_pages_without_data_say_what_to_do(page: Any, server: ServerProcess) -> None:
    for path, name in (("/dashboard", "empty-feature-sets"), ("/dashboard/jobs", "empty-jobs"),
                       ("/dashboard/schedules", "empty-schedules")):
        page.goto(server.url + path)
        assert page.locator("#empty-state").is_visible()
        assert "yet" in page.locator("#empty-state h2").inner_text()
        if name == "empty-feature-sets":
            _shot(page, name, narrow=False)


def test_feature_sets_page(page: Any, server: ServerProcess, jobs_run: dict[str, Any]) -> None:
    page.goto(server.url + "/dashboard")
    promoted = jobs_run["versions"]["promoted_version"]
    row = page.locator("#feature-sets tbody tr", has_text=NAME)
    assert f"v{promoted}" in row.inner_text()
    fs = httpx.get(f"{server.url}/v1/feature-sets/{NAME}").json()
    assert f"{fs['metrics']['val_auc']:.4f}" in row.inner_text()
    assert f"{fs['metrics']['val_auc_all_features']:.4f}" in row.inner_text()
    assert "% of 8 MB" in row.inner_text()  # the memory budget's use
    assert page.locator("#feature-sets tbody tr", has_text="nightly-fs").count() == 0  # its only run failed
    _shot(page, "feature-sets")


def test_version_page_shows_the_selection(page: Any, server: ServerProcess, jobs_run: dict[str, Any]) -> None:
    fs = httpx.get(f"{server.url}/v1/feature-sets/{NAME}/versions/1").json()
    page.goto(f"{server.url}/dashboard/feature-sets/{NAME}/versions/1")
    kept = page.locator("#kept svg.chart .bar-row .label").all_text_contents()
    expected = [f"{f['rank']}. {f['name']}" for f in sorted(fs["features"], key=lambda f: f["rank"])]
    assert kept == [t if len(t) <= 22 else t[:21] + "…" for t in expected]  # selection order, one bar each
    assert page.locator("#kept svg .bar").count() == len(fs["features"])
    for cross in fs["crosses"]:
        assert " × ".join(cross["features"]) in page.locator("#crosses").inner_text()
    with_tables = [f for f in fs["features"] if f["embedding_dim"]] + [c for c in fs["crosses"] if c["embedding_dim"]]
    assert page.locator("#dims svg .bar").count() == len(with_tables)
    assert "budget 8 MB" in page.locator("#budgets svg").first.inner_html()
    inputs = {n for c in fs["crosses"] for n in c["features"]} - {f["name"] for f in fs["features"]}
    for name in inputs:  # a kept cross's input is not a loser: it is listed with its cross
        assert f"{name}: input of cross" in page.locator("#cross-inputs").inner_text()
    not_kept = [c for c in fs["candidates"] if not c["selected"] and c["name"] not in inputs]
    assert page.locator("#others svg .bar").count() == len(not_kept) > 0
    # Scores: explained next to the picks, each beside its rank.
    assert "not monotone in rank" in page.locator("#score-note").inner_text()
    first = min(fs["features"], key=lambda f: f["rank"])
    assert page.locator("#kept table tbody tr").first.locator("td").all_inner_texts()[:3] == [
        "1", f"{first['score']:.4f}", first["name"]]
    data = page.locator("#data").inner_text()
    assert fs["spec"]["dataset"]["path"] in data
    assert f"{fs['metrics']['train_rows']:,} train" in data and f"{fs['metrics']['valid_rows']:,} validation" in data
    assert page.locator("#latency").count() == 0  # no latency budget, no latency stage
    assert f'"{NAME}"' in page.locator("#spec pre").inner_text()
    assert "selection_s" in page.locator("#timings").inner_text()
    _shot(page, "version")


def test_version_page_shows_the_latency_stage(page: Any, server: ServerProcess, jobs_run: dict[str, Any]) -> None:
    fs = httpx.get(f"{server.url}/v1/feature-sets/{NAME}/versions/2").json()
    page.goto(f"{server.url}/dashboard/feature-sets/{NAME}/versions/2")
    latency = page.locator("#latency").inner_text()
    assert "10000 ms" in latency and f"{fs['latency']['ms_before']:.4g} ms" in latency
    assert fs["latency"]["removed_features"] == [] and "Nothing removed: the choice fitted" in latency
    assert page.locator("#others svg .latency-bar").count() == 0 and page.locator("#others-removed").count() == 0


def test_history_page_with_diffs_and_promote_rollback(page: Any, server: ServerProcess, api: httpx.Client,
                                                     jobs_run: dict[str, Any]) -> None:
    versions = jobs_run["versions"]["versions"]
    page.goto(f"{server.url}/dashboard/feature-sets/{NAME}")
    assert page.locator("#history-chart svg polyline").count() == 2  # AUC and kept count
    assert page.locator("#history-chart svg circle").count() == 2 * len(versions)
    sets = {v["version"]: api.get(f"/v1/feature-sets/{NAME}/versions/{v['version']}").json() for v in versions}
    for v in versions:
        row = page.locator(f'#versions tr[data-version="{v["version"]}"]')
        assert row.locator(f".badge.{v['decision']}").count() == 1
        if v["version"] == 1:
            continue
        old = {f["name"] for f in sets[v["version"] - 1]["features"]}
        new = {f["name"] for f in sets[v["version"]]["features"]}
        cells = row.locator("td.diff").all_inner_texts()
        assert all(f"+{n}" in cells[0] for n in new - old) and all(f"−{n}" in cells[1] for n in old - new)
        old_x = {" × ".join(c["features"]) for c in sets[v["version"] - 1]["crosses"]}
        new_x = {" × ".join(c["features"]) for c in sets[v["version"]]["crosses"]}
        assert all(f"+{n}" in cells[0] for n in new_x - old_x) and all(f"−{n}" in cells[1] for n in old_x - new_x)
        dims = {f["name"]: f["embedding_dim"] for f in sets[v["version"] - 1]["features"]}
        for f in sets[v["version"]]["features"]:
            if f["name"] in dims and dims[f["name"]] != f["embedding_dim"]:
                assert f"{f['name']} {dims[f['name']] or '—'}→{f['embedding_dim'] or '—'}" in cells[2]
        assert f"{v['jaccard']:.2f}" in row.inner_text()
    assert page.locator(".badge.pending").count() >= 1 and page.locator(".badge.promoted").count() >= 1
    _shot(page, "history")

    # v1, the first version, replaced none: the rollback button is disabled and says why.
    assert page.locator("#rollback").is_disabled()
    assert "no earlier promotion to roll back to" in page.locator("#rollback").get_attribute("title")
    assert "no earlier promotion to roll back to" in page.locator("#rollback-why").inner_text()
    assert api.post(f"/v1/feature-sets/{NAME}/rollback", headers=AUTH).status_code == 409

    # Without the key, the API's 401 message; with it, promote the pending v2, then roll back to v1.
    assert api.get(f"/v1/feature-sets/{NAME}").headers["X-Feature-Set-Version"] == "1"
    page.click('button.promote[data-version="2"]')
    assert "Authorization" in page.locator("#action-result.error").inner_text()
    page.fill("#api-key", API_KEY)
    with page.expect_navigation():
        page.click('button.promote[data-version="2"]')
    assert "served" in page.locator('#versions tr[data-version="2"]').inner_text()
    assert api.get(f"/v1/feature-sets/{NAME}").headers["X-Feature-Set-Version"] == "2"
    assert page.locator("#rollback").inner_text() == "Roll back to v1" and page.locator("#rollback-why").count() == 0
    with page.expect_navigation():
        page.click("#rollback")
    assert api.get(f"/v1/feature-sets/{NAME}").headers["X-Feature-Set-Version"] == "1"
    latest = page.locator("#promotions li").first.inner_text()
    assert latest.startswith("v1 replaced v2") and "rollback" in latest


def test_jobs_page_live_progress_form_and_errors(page: Any, server: ServerProcess, api: httpx.Client,
                                                jobs_run: dict[str, Any]) -> None:
    page.goto(server.url + "/dashboard/jobs")
    assert all(j["id"] in page.locator("#done").inner_text() for j in jobs_run["jobs"])
    assert "column 'no-such-label' not found" in page.locator("#failed").inner_text()
    page.fill("#api-key", API_KEY)

    # A bad spec: the page shows the API's own message for the same body, word for word.
    bad = '{"name": "ctr-main", "dataset": {"path": "synth", "label": "click"}}'
    expected = api.post("/v1/jobs", content=bad, headers={**AUTH, "Content-Type": "application/json"}).json()
    page.fill("#job-spec", bad)
    page.click("#job-form button[type=submit]")
    out = page.locator("#job-result.error")
    assert out.locator(".field").inner_text() == expected["field"] == "dataset.label"
    assert out.locator(".message").inner_text() == expected["message"]
    page.fill("#job-spec", "{not json")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-result .message")).to_contain_text("is not valid JSON")

    # A long job through the form: its progress moves on the page without a reload.
    page.fill("#job-spec", json.dumps(job_spec("long-run", training={"epochs": 40})))
    page.click("#job-form button[type=submit]")
    queued = page.locator("#job-result.ok").inner_text()
    job_id = queued.split()[2]
    page.evaluate("window.notReloaded = true")
    page.wait_for_selector(f'#running [data-job="{job_id}"] progress')
    step = page.locator(f'#running [data-job="{job_id}"] .step')
    expect(step).not_to_have_text(step.inner_text(), timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    _shot(page, "jobs")
    api.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert wait_job(api, job_id, timeout=60)["state"] == "cancelled"
    expect(page.locator("#failed")).to_contain_text(job_id)


def test_schedules_page(page: Any, server: ServerProcess, jobs_run: dict[str, Any]) -> None:
    page.goto(server.url + "/dashboard/schedules")
    cells = page.locator("#schedules tbody tr", has_text="nightly").locator("td").all_inner_texts()
    assert cells[2] == "cron 0 3 * * *"
    assert cells[4].endswith("ago") and cells[5].startswith("in ")  # last run, next run
    assert "failed" in cells[7] and "dataset.label" in cells[7]
    _shot(page, "schedules")


def test_unknown_name_is_a_404_page(page: Any, server: ServerProcess) -> None:
    response = page.goto(server.url + "/dashboard/feature-sets/no-such-set")
    assert response.status == 404
    assert "no feature set 'no-such-set'" in page.locator("#page-error").inner_text()
