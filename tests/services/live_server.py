"""Helpers for the service tests: a real ``seqattn serve`` (uvicorn) on 127.0.0.1, tiny specs.

:class:`ServerProcess` starts the server as a child process on a free loopback port and stops it
by its own pid (SIGTERM, or SIGKILL for the restart test); it never touches other processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pipelines.registry import Registry
from pipelines.spec import Candidate, FeatureSet, JobSpec, SelectedFeature

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``seqattn serve`` in a child process; ``url`` once :meth:`start` returned."""

    def __init__(self, home: Path, data_roots: list[Path], api_key: str | None = API_KEY, **settings: Any) -> None:
        self.home, self.data_roots, self.api_key, self.settings = home, data_roots, api_key, settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = home.parent / f"{home.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEQATTN_")}
        env.update({"SEQATTN_HOME": str(self.home), "SEQATTN_DATA_ROOTS": os.pathsep.join(map(str, self.data_roots)),
                    "SEQATTN_HEARTBEAT_S": "0.5", "SEQATTN_STALE_AFTER_S": "10", "SEQATTN_SCHEDULE_TICK_S": "1",
                    "PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR"})
        if self.api_key:
            env["SEQATTN_API_KEY"] = self.api_key
        env.update({f"SEQATTN_{k.upper()}": str(v) for k, v in self.settings.items()})
        self.port = free_port()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL our own child (a crash: no shutdown code runs) and reap it."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def job_spec(name: str = "ctr", **over: Any) -> dict[str, Any]:
    """A tiny job on the planted data (1 epoch of 4 batches): a few seconds in-process."""
    spec: dict[str, Any] = {"name": name, "dataset": {"path": "synth", "label": "label"},
                            "selection": {"features": 4}, "training": {"epochs": 1, "batch_size": 4096}}
    for key, value in over.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return spec


def publish_versions(home: Path, name: str = "ctr", aucs: tuple[float, ...] = (0.70, 0.71)) -> list[int]:
    """Publish FeatureSets straight into the registry (state for tests that need versions without
    running jobs); returns their version numbers."""
    registry = Registry(home)
    spec = JobSpec(name=name, dataset={"path": "synth", "label": "label"})
    out = []
    for i, auc in enumerate(aucs):
        fs = FeatureSet(name=name, spec=spec, job_id=f"seed-{i}",
                        features=[SelectedFeature(name=f"f{i}", kind="sparse", rank=1, score=0.5, embedding_dim=8)],
                        candidates=[Candidate(name=f"f{i}", kind="sparse", score=0.5, selected=True)],
                        metrics={"val_auc": auc})
        out.append(registry.publish(fs).version)
    return out


def wait_job(client: httpx.Client, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled",
                                                                            "interrupted"),
             timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {json.dumps(job)[:500]}")
