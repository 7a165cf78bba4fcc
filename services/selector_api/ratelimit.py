"""Per-client rate limits: job submission, the list routes, and failed authentications.

One process keeps its counters in memory (the ``limits`` package's sliding-window counter, O(1) per
client and window), keyed by the client's IP address as uvicorn reports it (``X-Forwarded-For`` is
only honoured from the proxies in uvicorn's ``--forwarded-allow-ips``, loopback by default). Each
limit is a string in the ``limits`` notation (``"60/minute"``, ``"10/second;300/hour"``); an empty
string turns it off. They come from the ``SEQATTN_RATE_LIMIT_*`` settings.

- ``submit``: requests that queue a job or scan data (``POST /v1/jobs``, ``.../resubmit``,
  ``POST /v1/schedules``, ``.../run``), one per request.
- ``list``: the list routes, charged by the rows they return (at least one per request), since a
  list's cost grows with its length: a client may fetch ``5000`` rows a minute by default, as many
  small pages or a few large ones.
- ``auth_failures``: 401s. Once a client has used them up, every request of it that needs the key
  is answered 429 (even with the right key) until the window moves on, so a key cannot be guessed
  at wire speed.

The serving route (``GET /v1/feature-sets/{name}``) has no limit: it is answered from memory.

Example::

    >>> limits = RateLimits(submit="2/minute", lists="", auth_failures="1/minute")
    >>> limits.hit("submit", "10.0.0.1"); limits.hit("submit", "10.0.0.1")
    >>> try:
    ...     limits.hit("submit", "10.0.0.1")
    ... except TooManyRequests as exc:
    ...     print(exc.field, exc.retry_after > 0)
    request True
    >>> limits.hit("submit", "10.0.0.2")  # another client has its own budget
    >>> limits.hit("list", "10.0.0.1", cost=10_000)  # "" is no limit
"""

from __future__ import annotations

import math
import time
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from services.selector_api.errors import TooManyRequests

Kind = Literal["submit", "list", "auth_failures"]

_WHAT = {"submit": "job submissions", "list": "list rows", "auth_failures": "failed authentications"}


def parse_limits(text: str) -> list[RateLimitItem]:
    """``"60/minute;1000/hour"`` as ``limits`` items; ``[]`` for an empty string (no limit). A
    ``ValueError`` names the bad text (pydantic turns it into the setting's error)."""
    if not text.strip():
        return []
    try:
        return parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit; write e.g. '60/minute' or '10/second;300/hour' "
                         "(an empty value turns the limit off)") from None


class RateLimits:
    """The service's three limits; :meth:`hit` raises :class:`TooManyRequests` (429) when one is spent."""

    def __init__(self, submit: str, lists: str, auth_failures: str) -> None:
        self._items: dict[str, list[RateLimitItem]] = {
            "submit": parse_limits(submit), "list": parse_limits(lists), "auth_failures": parse_limits(auth_failures)}
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def check(self, kind: Kind, client: str) -> None:
        """Raise :class:`TooManyRequests` when ``client`` has nothing left of ``kind``; uses nothing."""
        for item in self._items[kind]:
            if not self._limiter.test(item, kind, client):
                raise self._refusal(kind, item, client)

    def hit(self, kind: Kind, client: str, cost: int = 1) -> None:
        """Use ``cost`` of ``client``'s ``kind`` budget; :class:`TooManyRequests` when it is spent."""
        for item in self._items[kind]:
            if not self._limiter.hit(item, kind, client, cost=cost):
                raise self._refusal(kind, item, client)

    def charge(self, kind: Kind, client: str, cost: int) -> None:
        """Use ``cost`` after the fact (the rows a list returned): never refuses, but what goes over
        the budget empties it, so the next :meth:`check` refuses."""
        for item in self._items[kind]:
            if not self._limiter.hit(item, kind, client, cost=cost):
                left = self._limiter.get_window_stats(item, kind, client).remaining
                if left > 0:
                    self._limiter.hit(item, kind, client, cost=left)

    def _refusal(self, kind: Kind, item: RateLimitItem, client: str) -> TooManyRequests:
        reset = self._limiter.get_window_stats(item, kind, client).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        field = "Authorization" if kind == "auth_failures" else "request"
        return TooManyRequests(field, f"too many {_WHAT[kind]} from this client (limit {item}); retry in {wait} s",
                               retry_after=wait)
