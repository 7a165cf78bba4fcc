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
from dataclasses import fields
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.limits import JobLimits
from services.selector_api.job_process import default_memory_bytes


def _rate_limit(text: str) -> str:
    """A rate limit in the ``limits`` notation, or "" for none (checked when the settings load)."""
    from limits import parse_many

    if text.strip():
        try:
            parse_many(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a rate limit; write e.g. '60/minute' or '10/second;300/hour', "
                             "or leave it empty for no limit") from None
    return text


RateLimitText = Annotated[str, AfterValidator(_rate_limit)]


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
    # The request line and headers together (uvicorn's parser; larger: 431 JSON, connection closed).
    max_header_bytes: int = Field(65_536, ge=1024, le=16_777_216,
                                  description="largest request line plus headers, in bytes; larger gets 431")
    # Per client IP, in the `limits` notation ("60/minute", "10/second;300/hour"); "" turns one off.
    rate_limit_submit: RateLimitText = Field(
        "60/minute", description="requests that queue a job or scan data, per client; more get 429")
    rate_limit_list_rows: RateLimitText = Field(
        "5000/minute", description="rows the list routes return to one client (a request costs at least 1)")
    rate_limit_auth_failures: RateLimitText = Field(
        "10/minute", description="401s per client; then its requests needing the key get 429 until the window passes")
    rate_limit_delay_s: float = Field(
        1.0, ge=0, le=60, description="how long a 429 is held before it is sent (a looping client then sends little)")
    job_concurrency: int = Field(1, ge=1, le=64)
    max_queued_jobs: int = Field(100, ge=1)
    # Scheduler: how often due schedules are looked for, and how often running jobs prove they live.
    schedule_tick_s: float = Field(5.0, gt=0)
    heartbeat_s: float = Field(2.0, gt=0)
    # A running job whose heartbeat is older than this is marked interrupted (its process died).
    stale_after_s: float = Field(30.0, gt=0)
    scheduler_enabled: bool = True
    # The largest job this service runs (pipelines.limits.JobLimits; each refusal names its setting).
    max_epochs: int = Field(JobLimits.max_epochs, ge=1)
    max_batch_size: int = Field(JobLimits.max_batch_size, ge=1)
    max_embedding_dim: int = Field(JobLimits.max_embedding_dim, ge=4)
    max_workers: int = Field(JobLimits.max_workers, ge=1)
    max_table_rows: int = Field(JobLimits.max_table_rows, ge=1)
    max_features: int = Field(JobLimits.max_features, ge=1)
    # Each job runs in its own worker process, stopped (the job fails) when its resident memory goes
    # over this many MB; unset: half of this machine's memory. The API process never trains.
    job_max_memory_mb: int | None = Field(None, ge=64)

    def roots(self) -> list[Path]:
        """The data roots as given (not resolved); the working directory when none is set."""
        parts = [p for p in self.data_roots.split(os.pathsep) if p.strip()]
        return [Path(p) for p in parts] if parts else [Path.cwd()]

    def limits(self) -> JobLimits:
        """The job size limits from the ``max_*`` settings."""
        return JobLimits(**{f.name: getattr(self, f.name) for f in fields(JobLimits)})

    def job_memory_bytes(self) -> int:
        """A job process's memory ceiling in bytes: ``job_max_memory_mb``, or half the machine's memory."""
        if self.job_max_memory_mb is not None:
            return self.job_max_memory_mb * 2**20
        return default_memory_bytes()

    def key(self) -> str | None:
        """The API key, or None when mutating routes are open."""
        if self.api_key is None or not self.api_key.get_secret_value():
            return None
        return self.api_key.get_secret_value()
