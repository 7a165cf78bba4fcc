"""Serving the promoted FeatureSet from memory: the hot path of online systems.

``GET /v1/feature-sets/{name}`` sits on other systems' request paths, so it must not read files
or parse JSON per request. :class:`FeatureSetCache` keeps, per name, the promoted version's
serialized body and its ETag as one immutable :class:`Served` tuple; a request either sees the
old tuple or the new one, never a mix (no torn read).

Invalidation: SQLite's ``PRAGMA data_version`` changes whenever another connection commits to the
database (a promotion by this process, by a job, or by another service instance). Each request
checks it on one long-lived read connection (a few microseconds, no lock on the writers under
WAL); when it moved, the promoted-version map is re-read and only names whose promoted version
changed are reloaded. A promotion is therefore visible to the very next request, in every
process, without a TTL.

:class:`ServePromoted` answers cache hits of that route before FastAPI's routing and dependency
machinery (about 100 us per request on this project's 2-core machine, most of the in-app cost);
anything else (an unknown or invalid name, another route) falls through to the FastAPI route,
which builds the same answer with the same :func:`answer`.

Example::

    >>> import tempfile
    >>> from pipelines.registry import Registry
    >>> from pipelines.spec import FeatureSet, JobSpec
    >>> home = tempfile.mkdtemp()
    >>> fs = FeatureSet(name="ctr", spec=JobSpec(name="ctr", dataset={"path": "d", "label": "y"}), features=[])
    >>> _ = Registry(home).publish(fs)
    >>> cache = FeatureSetCache(Registry(home))
    >>> served = cache.promoted("ctr")
    >>> served.version, served.etag.startswith('"ctr-1-'), cache.promoted("nope") is None
    (1, True, True)
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from pipelines.registry import Registry


class Served(NamedTuple):
    """One version ready to send: its number, JSON body and strong ETag."""

    name: str
    version: int
    body: bytes
    etag: str


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` header against ``etag``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def answer(served: Served, if_none_match: str | None,
           cache_control: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) for ``served``: 304 without a body when ``if_none_match`` matches."""
    headers = [(b"etag", served.etag.encode()), (b"cache-control", cache_control.encode()),
               (b"x-feature-set-version", str(served.version).encode())]
    if etag_matches(if_none_match, served.etag):
        return 304, headers, b""
    return 200, [*headers, (b"content-type", b"application/json"),
                 (b"content-length", str(len(served.body)).encode())], served.body


class _Template:
    """Stands in for the matched route in the ASGI scope, so metrics label the fast path alike."""

    path = "/v1/feature-sets/{name}"


class ServePromoted:
    """ASGI fast path for ``GET /v1/feature-sets/{name}`` when the cache holds the answer.

    Example::

        app = ServePromoted(app, cache)
    """

    PREFIX = "/v1/feature-sets/"

    def __init__(self, app: Any, cache: FeatureSetCache) -> None:
        self.app, self.cache = app, cache

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(self.PREFIX):
            name = scope["path"][len(self.PREFIX):]
            served = self.cache.promoted(name) if name and "/" not in name else None
            if served is not None:
                inm = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None)
                status, headers, body = answer(served, inm, "no-cache")
                scope["route"] = _Template
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class FeatureSetCache:
    """Promoted versions (checked against the database per request) and immutable versions (LRU)."""

    def __init__(self, registry: Registry, max_versions: int = 256) -> None:
        self.registry = registry
        self._db = sqlite3.connect(registry.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._data_version: int | None = None
        self._promoted: dict[str, int] = {}
        self._served: dict[str, Served] = {}
        self._versions: OrderedDict[tuple[str, int], Served] = OrderedDict()
        self._max_versions = max_versions

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def promoted(self, name: str) -> Served | None:
        """The promoted version of ``name``, or None when it has none."""
        self._refresh()
        version = self._promoted.get(name)
        if version is None:
            return None
        served = self._served.get(name)
        if served is None or served.version != version:
            served = self.version(name, version)
            self._served[name] = served
        return served

    def version(self, name: str, version: int) -> Served:
        """Any published version (immutable, so cached without invalidation); the registry's
        :class:`~pipelines.errors.SpecError` when it does not exist."""
        key = (name, version)
        with self._lock:
            hit = self._versions.get(key)
            if hit is not None:
                self._versions.move_to_end(key)
                return hit
        record = self.registry.record(name, version)
        body = (self.registry.home / record.path).read_bytes()
        served = Served(name, version, body, f'"{name}-{version}-{hashlib.sha256(body).hexdigest()[:16]}"')
        with self._lock:
            self._versions[key] = served
            while len(self._versions) > self._max_versions:
                self._versions.popitem(last=False)
        return served

    def invalidate(self) -> None:
        """Forget the promoted map (the next request re-reads it); for writers in this process."""
        with self._lock:
            self._data_version = None

    def _refresh(self) -> None:
        with self._lock:
            current = self._db.execute("PRAGMA data_version").fetchone()[0]
            if current == self._data_version:
                return
            self._promoted = self.registry.promoted_versions(self._db)
            self._data_version = current
