"""The load generator of bench section e: raw keep-alive HTTP/1.1 sockets on asyncio (uvloop when
installed), in the open loop (requests due at a fixed rate, latency counted from the due time when
the server is behind: no coordinated omission) or the closed loop (each connection sends its next
request when the answer arrives). Loopback only, bounded in requests and time.

Example::

    r = open_loop(port, "/v1/feature-sets/ctr-main", rate=1000, seconds=10, connections=8, scenario="200")
    r.ms(0.99), r.statuses
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """Latencies (seconds) of the answered requests, and what went wrong."""

    scenario: str
    target_rate: float | None
    latencies: np.ndarray
    elapsed_s: float
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def ms(self, q: float) -> float:
        return float(np.quantile(self.latencies, q) * 1e3) if len(self.latencies) else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0



async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request on a keep-alive connection and read the whole answer; returns its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


def _request(port: int, path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


async def _open_loop(port: int, request: bytes, rate: float, total: int,
                     connections: int) -> tuple[np.ndarray, int, dict[int, int], float]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    latencies = np.full(total, np.nan)
    statuses: dict[int, int] = {}
    errors = 0
    # perf_counter, not loop.time(): uvloop's clock has millisecond steps.
    t0 = time.perf_counter() + 0.05

    async def lane(k: int) -> None:
        nonlocal errors
        reader, writer = conns[k]
        last_done = 0.0
        for i in range(k, total, connections):
            due = t0 + i / rate
            now = time.perf_counter()
            if now < due:
                # An idle lane: the event loop's timer wakes it up to ~1 ms late (epoll's resolution),
                # which is the generator's artefact, so the clock starts at the actual send.
                await asyncio.sleep(due - now)
                start = time.perf_counter()
            elif last_done > due:
                start = due  # the previous answer was still awaited at the due time: the server's delay counts
            else:
                start = now  # the lane was idle but the generator itself ran late (descheduled): not the server's
            try:
                status = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                continue
            last_done = time.perf_counter()
            latencies[i] = last_done - start
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(lane(k) for k in range(connections)))
    elapsed = time.perf_counter() - t0
    for _, writer in conns:
        writer.close()
    return latencies[~np.isnan(latencies)], errors, statuses, elapsed


async def _closed_loop(port: int, request: bytes, seconds: float, connections: int,
                       max_requests: int) -> tuple[np.ndarray, int, dict[int, int], float]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    start = time.perf_counter()
    end = start + seconds

    async def lane(k: int) -> None:
        nonlocal errors
        reader, writer = conns[k]
        while time.perf_counter() < end and len(latencies) < max_requests:
            sent = time.perf_counter()
            try:
                status = await _exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(lane(k) for k in range(connections)))
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return np.array(latencies), errors, statuses, elapsed


def _run(coro):  # type: ignore[no-untyped-def]
    """uvloop when installed (less generator overhead in the measured latency), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def open_loop(port: int, path: str, rate: float, seconds: float, connections: int, scenario: str,
              headers: dict[str, str] | None = None) -> LoadResult:
    """``rate`` requests/s for ``seconds`` (``rate * seconds`` requests in all) on ``connections``."""
    total = int(rate * seconds)
    lat, errors, statuses, elapsed = _run(
        _open_loop(port, _request(port, path, headers or {}), rate, total, connections))
    return LoadResult(scenario, rate, lat, elapsed, errors, statuses)


def closed_loop(port: int, path: str, seconds: float, connections: int, scenario: str,
                max_requests: int = 200_000, headers: dict[str, str] | None = None) -> LoadResult:
    lat, errors, statuses, elapsed = _run(
        _closed_loop(port, _request(port, path, headers or {}), seconds, connections, max_requests))
    return LoadResult(scenario, None, lat, elapsed, errors, statuses)
