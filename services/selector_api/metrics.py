"""Prometheus metrics: request latency per route, jobs by state, served feature-set requests, the
jobs this process ran (how long, how they ended) and the process itself (memory, CPU, open files).

Request latency is measured by a pure ASGI middleware (no per-request task or body copy, which
``BaseHTTPMiddleware`` would add to the serving path) and labelled by the route's path template
(``/v1/feature-sets/{name}``), never by the raw path, so label cardinality stays bounded. Jobs by
state are read from the database when ``/metrics`` is scraped, so every instance reports the same
truth. The jobs this process ran are counted where its workers finish them
(:class:`JobMetrics`, fed by :class:`~services.selector_api.worker.JobWorkers`): a counter and a
duration histogram, both by final state.

Example::

    registry = service_registry(store)
    jobs = JobMetrics(registry)               # handed to JobWorkers
    app = RequestMetrics(app, registry)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from services.selector_api.store import Store

# Sub-millisecond buckets: the serving goal is p99 <= 2 ms.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Jobs run from seconds (a tiny spec) to hours (a large one on a cluster).
JOB_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0)


def service_registry(store: Store) -> CollectorRegistry:
    """The service's own registry (not the global one, so that several apps in one process, as in
    tests, do not clash): jobs by state, and the process, platform and GC collectors that
    prometheus_client's default registry would have (``process_resident_memory_bytes``, ...)."""
    registry = CollectorRegistry()
    registry.register(JobStateCollector(store))
    ProcessCollector(registry=registry)
    registry.register(PLATFORM_COLLECTOR)
    registry.register(GC_COLLECTOR)
    return registry


class JobMetrics:
    """``seqattn_jobs_finished_total{state}`` and ``seqattn_job_duration_seconds{state}``: the jobs
    this process's workers ran, by how they ended (succeeded, failed, cancelled, interrupted),
    and how long each ran (claimed to finished)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.finished = Counter("seqattn_jobs_finished", "Jobs this process ran to an end, by final state",
                                ["state"], registry=registry)
        self.duration = Histogram("seqattn_job_duration_seconds", "Run time of the jobs this process ran, "
                                  "by final state", ["state"], buckets=JOB_BUCKETS, registry=registry)

    def observe(self, state: str, seconds: float) -> None:
        self.finished.labels(state).inc()
        self.duration.labels(state).observe(seconds)


class RequestMetrics:
    """ASGI middleware observing ``seqattn_http_request_seconds{method,route,status}``."""

    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        self.latency = Histogram("seqattn_http_request_seconds", "HTTP request latency (to the last body byte)",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.latency.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)


class JobStateCollector:
    """``seqattn_jobs{state}``: jobs in each state, read from the database at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("seqattn_jobs", "Jobs by state", labels=["state"])
        for state, count in self.store.count_jobs_by_state().items():
            family.add_metric([state], count)
        yield family

    def describe(self) -> list[Any]:
        return []
