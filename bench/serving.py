"""Serving latency of ``GET /v1/feature-sets/{name}``: a real uvicorn server, a real load generator.

The server is ``seqattn serve`` (one uvicorn worker process) on 127.0.0.1 with a published
FeatureSet; the load generator (:mod:`bench.loadgen`) runs in this process on raw keep-alive
HTTP/1.1 sockets (asyncio), so the two share nothing but the loopback interface.

- **Open loop at a fixed rate** (the goal: p99 <= 2 ms at 1,000 req/s): request ``i`` is due at
  ``t0 + i / rate`` whether or not earlier answers came back, and its latency is measured from that
  due time, so a stall shows up in every request that queued behind it (no coordinated omission).
  Requests are spread over a few connections, as a pool of clients would send them.
- **Closed loop** (maximum throughput): every connection sends its next request as soon as the
  previous answer arrives, for a fixed time.
- **Dashboard open** (issue 6): the goal-rate open loop without and with a dashboard client polling
  the same server (:func:`poll_dashboard`, in its own process: what the jobs page's script fetches
  each second plus one page view each second), in alternating pairs, so both sides see the same
  machine load.
- **A flooded jobs list** (:func:`flood_runs`): the goal-rate open loop alone and beside 16
  connections of another process looping on the largest jobs page, on a server with the rate
  limits as shipped and on one with the list limit off.

Everything is bounded: a fixed number of requests per run, a fixed time, loopback only.

Example::

    cfg = ServingBench(rate=1000, seconds=10)
    markdown = run(cfg, Path("/tmp/work"), print)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.loadgen import LoadResult, closed_loop, open_loop
from pipelines.registry import Registry
from pipelines.spec import Candidate, FeatureSet, JobSpec, SelectedCross, SelectedFeature
from services.selector_api.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "ctr-main"


@dataclass(frozen=True)
class ServingBench:
    """What to measure: open-loop rates, their duration, connections, and the closed-loop run."""

    rates: tuple[int, ...] = (1000, 2000)
    repeats: int = 3  # runs at the goal rate (the machine is shared: report each)
    seconds: float = 10.0
    connections: int = 8
    warmup_requests: int = 2000
    closed_loop_seconds: float = 5.0
    features: int = 40
    candidates: int = 120
    goal_rate: int = 1000
    goal_p99_ms: float = 2.0
    dashboard_pairs: int = 5  # (closed, open) runs at the goal rate, in alternating order
    dashboard_jobs: int = 60  # finished jobs in the store, so the jobs page has rows to render
    flood_clients: int = 16  # clients listing jobs in a loop beside the serving load
    flood_jobs: int = 1000  # jobs in the flooded service's store (a full page is 200 of them)


def sample_feature_set(features: int, candidates: int) -> FeatureSet:
    """A FeatureSet the size of a production one: ``features`` kept, ``candidates`` raced, 5 crosses."""
    spec = JobSpec(name=NAME, dataset={"path": "data/ctr", "label": "click"}, selection={"features": features})
    rng = np.random.default_rng(0)
    scores = np.sort(rng.random(candidates))[::-1]
    kept = [SelectedFeature(name=f"C{i}", kind="sparse", rank=i + 1, score=float(scores[i]), embedding_dim=16)
            for i in range(features)]
    crosses = [SelectedCross(features=(f"C{i}", f"C{i + 1}"), rank=i + 1, score=0.01, buckets=65536, embedding_dim=8)
               for i in range(5)]
    cands = [Candidate(name=f"C{i}", kind="sparse", score=float(scores[i]), selected=i < features)
             for i in range(candidates)]
    return FeatureSet(name=NAME, spec=spec, features=kept, crosses=crosses, candidates=cands,
                      metrics={"val_auc": 0.79, "val_logloss": 0.45, "embedding_mb": 12.5},
                      timings={"selection_s": 40.1, "retrain_s": 20.3})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BARE_BODY = b"x" * int(os.environ.get("SEQATTN_BENCH_BARE_BYTES", "1"))


async def bare_app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
    """The floor: a bare ASGI app sending fixed bytes, on the same uvicorn (a reference, not the service)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_BARE_BODY)).encode())]})
    await send({"type": "http.response.body", "body": _BARE_BODY})


class Server:
    """``seqattn serve`` (or, ``bare_bytes`` given, :func:`bare_app` under uvicorn) in a child process
    on a free loopback port; stopped by its own pid."""

    def __init__(self, home: Path, log_path: Path, bare_bytes: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.home, self.log_path, self.bare_bytes = home, log_path, bare_bytes
        self.settings = settings or {}
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQATTN_")}
        env.update({"SEQATTN_HOME": str(self.home), "SEQATTN_API_KEY": "bench-key", "PYTHONWARNINGS": "ignore"})
        env.update(self.settings)
        argv = [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning"]
        if self.bare_bytes is not None:
            env["SEQATTN_BENCH_BARE_BYTES"] = str(self.bare_bytes)
            argv = [sys.executable, "-m", "uvicorn", "bench.serving:bare_app", "--host", "127.0.0.1", "--port",
                    str(self.port), "--log-level", "warning"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


# --- a dashboard client ------------------------------------------------------------------------

FLOOD_PATH = "/v1/jobs?limit=200"
DASHBOARD_PAGES = ("/dashboard", f"/dashboard/feature-sets/{NAME}", f"/dashboard/feature-sets/{NAME}/versions/1",
                   "/dashboard/jobs", "/dashboard/schedules")


def poll_dashboard(port: int, seconds: float, out: str) -> None:
    """An open dashboard for ``seconds``: each second, the jobs page's poll (``/dashboard/jobs/live``
    with the last ETag, as ``dashboard.js`` does) and one full page view (cycling through every
    page). Prints ``ready`` after the first round; writes the page views' latencies (seconds) to
    ``out`` as JSON."""
    latencies: list[float] = []
    etag = ""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        start, i = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            due = start + i
            live = client.get("/dashboard/jobs/live", headers={"If-None-Match": etag} if etag else {})
            assert live.status_code in (200, 304), live.status_code
            etag = live.headers.get("ETag", etag)
            sent = time.perf_counter()
            client.get(DASHBOARD_PAGES[i % len(DASHBOARD_PAGES)]).raise_for_status()
            latencies.append(time.perf_counter() - sent)
            if i == 0:
                print("ready", flush=True)
            i += 1
            time.sleep(max(0.0, due + 1.0 - time.monotonic()))
    Path(out).write_text(json.dumps(latencies))


def flood_jobs_list(port: int, seconds: float, connections: int, out: str) -> None:
    """A careless script: ``connections`` clients listing jobs as fast as answers come back, the
    largest page each time; prints ``ready``, then writes the statuses it got to ``out`` (JSON)."""
    print("ready", flush=True)
    r = closed_loop(port, FLOOD_PATH, seconds, connections, "flood", max_requests=10**9)
    Path(out).write_text(json.dumps({"requests": len(r.latencies), "statuses": r.statuses}))


class ChildClient:
    """``bench.serving.<target>(port, seconds, *args, out)`` in a child process, started (once it
    printed ``ready``) and waited for by the ``with`` block; :meth:`result` reads ``out``."""

    def __init__(self, target: str, port: int, seconds: float, out: Path, *args: object) -> None:
        self.target, self.port, self.seconds, self.out, self.args = target, port, seconds, out, args
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ChildClient:
        call = ", ".join(map(repr, (self.port, self.seconds, *self.args, str(self.out))))
        code = f"from bench.serving import {self.target}; {self.target}({call})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {self.target} client did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=self.seconds + 60)

    def result(self) -> object:
        return json.loads(self.out.read_text())


def plant_jobs(home: Path, n: int) -> None:
    """``n`` finished jobs (every 10th failed), so the jobs page renders a realistic list."""
    store = Store(home)
    spec = JobSpec(name=NAME, dataset={"path": "data/ctr", "label": "click"}).model_dump_json()
    for i in range(n):
        job, _ = store.create_job("job", NAME, spec)
        store.claim_next_job("bench")
        if i % 10 == 9:
            store.finish_job(job.id, "failed", error_message="ValueError: a planted failure")
        else:
            store.finish_job(job.id, "succeeded")


# --- the section ---------------------------------------------------------------------------------


def server_buckets(port: int, route: str = "/v1/feature-sets/{name}", status: str = "200") -> dict[float, float]:
    """The server's own latency histogram for ``route`` (cumulative counts by upper bound, seconds)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("seqattn_http_request_seconds_bucket{") and f'route="{route}"' in line \
                and f'status="{status}"' in line and 'method="GET"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def _row(r: LoadResult) -> str:
    rate = f"{r.target_rate:,.0f}" if r.target_rate else "as fast as possible"
    codes = ", ".join(f"{k}: {v:,}" for k, v in sorted(r.statuses.items()))
    return (f"| {r.scenario} | {rate} | {len(r.latencies):,} | {r.ms(0.5):.3f} | {r.ms(0.9):.3f} | {r.ms(0.99):.3f} | "
            f"{r.ms(0.999):.3f} | {r.latencies.max() * 1e3 if len(r.latencies) else float('nan'):.2f} | "
            f"{r.throughput:,.0f} | {codes}; errors {r.errors} |")


def run(cfg: ServingBench, work: Path, log: Callable[[str], None]) -> str:
    """Publish a FeatureSet, start the server, measure; returns the report's section e."""
    home = work / "serving-home"
    fs = sample_feature_set(cfg.features, cfg.candidates)
    Registry(home).publish(fs)
    plant_jobs(home, cfg.dashboard_jobs)
    path = f"/v1/feature-sets/{NAME}"
    results: list[LoadResult] = []
    with Server(home, work / "serving-server.log") as server:
        first = httpx.get(f"http://127.0.0.1:{server.port}{path}")
        body_bytes, etag = len(first.content), first.headers["ETag"]
        log(f"serving: {body_bytes} byte FeatureSet on port {server.port}; warming up")
        closed_loop(server.port, path, 5.0, cfg.connections, "warm-up", max_requests=cfg.warmup_requests)
        load_before = os.getloadavg()[0]
        before = server_buckets(server.port)
        for rate in cfg.rates:
            for k in range(cfg.repeats if rate == cfg.goal_rate else 1):
                log(f"serving: open loop at {rate} req/s for {cfg.seconds} s (run {k + 1})")
                results.append(open_loop(server.port, path, rate, cfg.seconds, cfg.connections, "200, full body"))
        after = server_buckets(server.port)
        log(f"serving: open loop with If-None-Match at {cfg.goal_rate} req/s")
        results.append(open_loop(server.port, path, cfg.goal_rate, cfg.seconds, cfg.connections, "304, If-None-Match",
                                 headers={"If-None-Match": etag}))
        log(f"serving: closed loop for {cfg.closed_loop_seconds} s")
        results.append(closed_loop(server.port, path, cfg.closed_loop_seconds, cfg.connections, "200, full body"))
        pairs = [dashboard_pair(server.port, path, cfg, k, work, log) for k in range(cfg.dashboard_pairs)]
    with Server(home, work / "serving-bare.log", bare_bytes=body_bytes) as bare:
        log(f"serving: the floor, a bare ASGI app at {cfg.goal_rate} req/s")
        closed_loop(bare.port, path, 5.0, cfg.connections, "warm-up", max_requests=cfg.warmup_requests)
        results.append(open_loop(bare.port, path, cfg.goal_rate, cfg.seconds, cfg.connections,
                                 "reference: bare ASGI app, same bytes"))
    floods = flood_runs(cfg, work, log)
    load_after = os.getloadavg()[0]
    served = {le: after[le] - before.get(le, 0.0) for le in after}
    n_served = served.get(float("inf"), 0.0)
    in_app = ", ".join(f"{served[le] / n_served:.2%} within {le * 1e3:g} ms" for le in (0.0005, 0.001, 0.002, 0.005)
                       if le in served) if n_served else "n/a"
    goals = sorted((r for r in results if r.target_rate == cfg.goal_rate and r.scenario.startswith("200")),
                   key=lambda r: r.ms(0.99))
    goal = goals[len(goals) // 2]  # the median run by p99
    met = goal.ms(0.99) <= cfg.goal_p99_ms and goal.errors == 0
    try:
        import httptools  # noqa: F401
        parser = "httptools"
    except ImportError:
        parser = "h11"
    try:
        import uvloop  # noqa: F401
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    lines = [
        "## e. Serving the promoted FeatureSet",
        "",
        f"`GET /v1/feature-sets/{{name}}` against a real `seqattn serve` (uvicorn, **one worker process**) on "
        f"127.0.0.1, answering a {body_bytes:,}-byte FeatureSet ({cfg.features} features, {cfg.candidates} "
        "candidates, 5 crosses) from memory with its ETag. The load generator (`bench/serving.py`) runs in another "
        f"process on {cfg.connections} keep-alive HTTP/1.1 connections. Open loop: request *i* is due at "
        "*t0 + i/rate*; when its connection is still waiting for the previous answer at that time, its latency "
        "counts from the due time (queueing behind a slow answer is counted: no coordinated omission), otherwise "
        "from the send (a late send is the generator's delay: its timer wakes up to ~1 ms late, and it can be "
        "descheduled on this shared machine); the figures include the generator's own Python overhead. Closed loop: "
        "each connection sends its next request when the answer arrives.",
        "",
        f"**Goal: p99 <= {cfg.goal_p99_ms:g} ms at {cfg.goal_rate:,} req/s: "
        f"{'met' if met else 'NOT met'}** (median of {len(goals)} runs by p99: p99 {goal.ms(0.99):.3f} ms, "
        f"p50 {goal.ms(0.5):.3f} ms; the runs' p99: {', '.join(f'{r.ms(0.99):.3f}' for r in goals)} ms).",
        "",
        "| answer | target req/s | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | achieved req/s "
        "| statuses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[_row(r) for r in results],
        "",
        f"Inside the server (its own `/metrics` histogram over the open-loop 200 runs above, {n_served:,.0f} "
        f"requests; from the app receiving the request to the last body byte handed to uvicorn): {in_app}. "
        "The difference to the generator's figures is time spent outside the app: the kernel, uvicorn's parser, "
        "the generator itself, and waiting for a CPU. The last row is the floor this machine and generator allow: "
        "a bare ASGI app (no routing, no cache, no metrics) returning the same number of bytes on the same uvicorn.",
        "",
        f"Machine: {os.cpu_count()} cores shared by the server and the generator (and by whatever else ran: "
        f"1-minute load average {load_before:.1f} before the runs, {load_after:.1f} after). Server: uvicorn with "
        f"{parser} and {loop_name}. Warm-up: {cfg.warmup_requests:,} requests before measuring.",
        "",
        *dashboard_lines(cfg, pairs),
        "",
        *flood_lines(cfg, floods),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class FloodRun:
    """The serving open loop on one server without and then with the jobs-list flood beside it."""

    label: str
    quiet: LoadResult
    flooded: LoadResult
    flood: dict  # what the flooding clients got: requests, statuses


def flood_runs(cfg: ServingBench, work: Path, log: Callable[[str], None]) -> list[FloodRun]:
    """The same store served with the rate limits as shipped and with the list limit turned off."""
    home = work / "flood-home"
    Registry(home).publish(sample_feature_set(cfg.features, cfg.candidates))
    plant_jobs(home, cfg.flood_jobs)
    path = f"/v1/feature-sets/{NAME}"
    runs = []
    for k, (label, settings) in enumerate((("rate limits as shipped", {}),
                                           ("list rate limit off", {"SEQATTN_RATE_LIMIT_LIST_ROWS": ""}))):
        with Server(home, work / f"flood-{k}.log", settings=settings) as server:
            closed_loop(server.port, path, 5.0, cfg.connections, "warm-up", max_requests=cfg.warmup_requests)
            log(f"serving: {cfg.goal_rate} req/s without and with {cfg.flood_clients} clients listing jobs ({label})")
            quiet = open_loop(server.port, path, cfg.goal_rate, cfg.seconds, cfg.connections, "no flood")
            with ChildClient("flood_jobs_list", server.port, cfg.seconds + 1.0, work / f"flood-{k}.json",
                             cfg.flood_clients) as flood:
                flooded = open_loop(server.port, path, cfg.goal_rate, cfg.seconds, cfg.connections, "flood")
            runs.append(FloodRun(label, quiet, flooded, flood.result()))  # type: ignore[arg-type]
    return runs


def flood_lines(cfg: ServingBench, runs: list[FloodRun]) -> list[str]:
    """The report's part on a client flooding the list route."""
    rows = [f"| {r.label} | {r.quiet.ms(0.5):.3f} | {r.quiet.ms(0.99):.3f} | {r.flooded.ms(0.5):.3f} | "
            f"{r.flooded.ms(0.99):.3f} | {r.flooded.ms(0.99) / r.quiet.ms(0.99):.2f} | {r.flood['requests']:,} | "
            f"{', '.join(f'{k}: {v:,}' for k, v in sorted(r.flood['statuses'].items()))} |" for r in runs]
    return [
        "### With a client flooding the jobs list",
        "",
        f"The open loop at {cfg.goal_rate:,} req/s for {cfg.seconds:g} s on a service holding {cfg.flood_jobs:,} jobs, "
        f"first alone, then beside {cfg.flood_clients} connections of another process that ask for "
        f"`GET {FLOOD_PATH}` (the largest page) as fast as answers come back. Once with the rate limits as shipped "
        "(`SEQATTN_RATE_LIMIT_LIST_ROWS`: rows listed per client and minute), once on a second server of the "
        "same store with that limit turned off. All clients are on 127.0.0.1, so they are one client to the limit.",
        "",
        "| server | alone p50 ms | alone p99 ms | flooded p50 ms | flooded p99 ms | p99 flooded / alone "
        "| flood requests | flood statuses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


@dataclass
class DashboardPair:
    """One goal-rate run with the dashboard closed and one with it open; the server's own share of
    serving answers within 1 ms in each; the dashboard's page-view latencies (seconds)."""

    closed: LoadResult
    opened: LoadResult
    closed_in_app: float
    opened_in_app: float
    pages: np.ndarray


def _within(port: int, run: Callable[[], LoadResult], le: float = 0.001) -> tuple[LoadResult, float]:
    """``run()`` and the share of the serving route's answers the server itself made within ``le`` s."""
    before = server_buckets(port)
    result = run()
    after = server_buckets(port)
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return result, (after.get(le, 0.0) - before.get(le, 0.0)) / total if total else float("nan")


def dashboard_pair(port: int, path: str, cfg: ServingBench, k: int, work: Path,
                   log: Callable[[str], None]) -> DashboardPair:
    """Pair ``k``: closed then open for even ``k``, open then closed for odd (a trend in the
    machine's load then favours neither side)."""
    log(f"serving: {cfg.goal_rate} req/s with the dashboard closed and open (pair {k + 1})")

    def closed() -> tuple[LoadResult, float]:
        return _within(port, lambda: open_loop(port, path, cfg.goal_rate, cfg.seconds, cfg.connections,
                                               "dashboard closed"))

    def opened() -> tuple[tuple[LoadResult, float], np.ndarray]:
        with ChildClient("poll_dashboard", port, cfg.seconds + 1.0, work / f"dashboard-{k}.json") as dashboard:
            out = _within(port, lambda: open_loop(port, path, cfg.goal_rate, cfg.seconds, cfg.connections,
                                                  "dashboard open"))
        return out, np.array(dashboard.result())

    if k % 2 == 0:
        c, (o, pages) = closed(), opened()
    else:
        (o, pages), c = opened(), closed()
    return DashboardPair(c[0], o[0], c[1], o[1], pages)


def dashboard_lines(cfg: ServingBench, pairs: list[DashboardPair]) -> list[str]:
    """The report's part on the dashboard's load: p99 without and with it, pair by pair."""
    ratios = [p.opened.ms(0.99) / p.closed.ms(0.99) for p in pairs]
    pages = np.concatenate([p.pages for p in pairs]) * 1e3
    pooled = [np.quantile(np.concatenate([getattr(p, side).latencies for p in pairs]), 0.99) * 1e3
              for side in ("closed", "opened")]
    quiet = min(range(len(pairs)), key=lambda k: pairs[k].closed.ms(0.99) + pairs[k].opened.ms(0.99))
    rows = [f"| {k + 1}{' (open first)' if k % 2 else ''} | {p.closed.ms(0.5):.3f} | {p.closed.ms(0.99):.3f} | "
            f"{p.opened.ms(0.5):.3f} | {p.opened.ms(0.99):.3f} | {r:.2f} | {p.closed_in_app:.2%} | "
            f"{p.opened_in_app:.2%} | {p.closed.errors + p.opened.errors} |"
            for k, (p, r) in enumerate(zip(pairs, ratios))]
    return [
        "### With the dashboard open",
        "",
        f"The same open loop at {cfg.goal_rate:,} req/s for {cfg.seconds:g} s, in {len(pairs)} pairs on the same "
        "server in the same run, once with no dashboard and once with a dashboard client polling "
        "(`bench.serving.poll_dashboard`, its own process: each second the jobs page's poll, "
        f"`GET /dashboard/jobs/live` with its last ETag ({cfg.dashboard_jobs} jobs listed), plus one full page view "
        "cycling through every page, the version page included, which draws all its candidates: more than one "
        "open dashboard does, whose script polls only the jobs list). The order alternates from pair to pair.",
        "",
        f"**p99 of `GET /v1/feature-sets/{{name}}` with the dashboard open / closed: median ratio "
        f"{float(np.median(ratios)):.2f}** over the pairs ({', '.join(f'{r:.2f}' for r in ratios)}); over all "
        f"requests of each side: p99 {pooled[0]:.3f} ms closed, {pooled[1]:.3f} ms open "
        f"(ratio {pooled[1] / pooled[0]:.2f}).",
        "",
        "| pair | closed p50 ms | closed p99 ms | open p50 ms | open p99 ms | p99 open / closed "
        "| in app <= 1 ms, closed | in app <= 1 ms, open | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"The quietest pair (lowest p99 of its two runs together, pair {quiet + 1}) gives a ratio of "
        f"{ratios[quiet]:.2f}. " + (
            "The pairs disagree widely (their ratios differ by more than 3x): on this shared machine the load of "
            "other processes comes and goes within seconds and moves a 10 s run's p99 by itself, so no single pair "
            "decides; read the median and the quietest pair. "
            if max(ratios) / min(ratios) > 3 else "") +
        "The in-app columns are the server's own histogram of the serving route (request received to last byte "
        "handed to uvicorn) over each run.",
        "",
        f"The dashboard's own {len(pages):,} full page views during the runs: p50 {np.quantile(pages, 0.5):.1f} ms, "
        f"p99 {np.quantile(pages, 0.99):.1f} ms, max {pages.max():.1f} ms. Its pages are rendered in FastAPI's "
        "thread pool from the store and the serving cache; the serving route is answered by `ServePromoted` on "
        "the event loop, so the two share only the CPU and the GIL.",
    ]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(run(ServingBench(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 5.0), Path(tmp),
                  lambda m: print(m, file=sys.stderr)))
