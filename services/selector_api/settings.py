"""The service's settings: one pydantic-settings model read from ``SEQATTN_*`` environment variables.

Every knob of the service lives here so that a deployment is described by its environment alone
(docs/architecture.md, "Settings").

Example::

    >>> s = Settings(home="/tmp/seqattn", data_roots="/data/a:/data/b", api_key="k")
    >>> [str(p) for p in s.roots()], s.api_key.get_secret_value(), s.job_concurrency
    (['/data/a', '/data/b'], 'k', 1)
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``SEQATTN_HOME``, ``SEQATTN_API_KEY``, ``SEQATTN_DATA_ROOTS`` and the service's limits.

    - ``api_key`` unset: mutating routes are open (a warning is logged and ``seqattn serve``
      refuses to bind anything but loopback).
    - ``data_roots``: colon-separated folders that dataset paths must lie under; unset means the
      working directory the service was started in.
    - ``job_concurrency`` jobs run at once; at most ``max_queued_jobs`` wait (then 503).
    """

    model_config = SettingsConfigDict(env_prefix="SEQATTN_", extra="ignore")

    home: Path = Path(".seqattn")
    api_key: SecretStr | None = None
    data_roots: str = ""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    job_concurrency: int = Field(1, ge=1, le=64)
    max_queued_jobs: int = Field(100, ge=1)
    # Scheduler: how often due schedules are looked for, and how often running jobs prove they live.
    schedule_tick_s: float = Field(5.0, gt=0)
    heartbeat_s: float = Field(2.0, gt=0)
    # A running job whose heartbeat is older than this is marked interrupted (its process died).
    stale_after_s: float = Field(30.0, gt=0)
    scheduler_enabled: bool = True

    def roots(self) -> list[Path]:
        """The data roots as given (not resolved); the working directory when none is set."""
        parts = [p for p in self.data_roots.split(os.pathsep) if p.strip()]
        return [Path(p) for p in parts] if parts else [Path.cwd()]

    def key(self) -> str | None:
        """The API key, or None when mutating routes are open."""
        if self.api_key is None or not self.api_key.get_secret_value():
            return None
        return self.api_key.get_secret_value()
