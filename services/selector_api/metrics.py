"""Prometheus metrics: request latency per route, jobs by state, served feature-set requests.

Request latency is measured by a pure ASGI middleware (no per-request task or body copy, which
``BaseHTTPMiddleware`` would add to the serving path) and labelled by the route's path template
(``/v1/feature-sets/{name}``), never by the raw path, so label cardinality stays bounded. Jobs by
state are read from the database when ``/metrics`` is scraped, so every instance reports the same
truth.

Example::

    registry = CollectorRegistry()
    app = RequestMetrics(app, registry)
    registry.register(JobStateCollector(store))
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily

from services.selector_api.store import Store

# Sub-millisecond buckets: the serving goal is p99 <= 2 ms.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
