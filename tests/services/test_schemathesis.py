"""The API against its own OpenAPI document: Schemathesis (every phase: examples, coverage, fuzzing,
stateful; ``--checks all``) on a real ``seqattn serve``, a bounded number of examples per operation.
It must find no server error, no answer that violates its schema, no undocumented status or
header, and no request the schema allows that the service refuses, beyond the two exceptions below.

Two checks are narrowed, each for a reason OpenAPI cannot express:

- ``positive_data_acceptance`` on ``submitJob`` and ``createSchedule`` also accepts 422: a JobSpec
  can be valid by the schema and still name a dataset that does not exist under the data roots, or
  a label that is not one of its columns (the service reads the Parquet footers to know);
- ``use_after_free`` is left out (``--exclude-checks``): ``DELETE /v1/jobs/{id}`` cancels a job,
  and the job stays readable (state ``cancelled``), which is what a client polling it needs. (An
  ``enabled = false`` for one operation in the config file is overridden by ``--checks all``;
  that ``DELETE /v1/schedules/{name}`` is followed by a 404 is tested in test_jobs.py.)

The queue is large enough that no submission meets the deliberate 503 of a full queue (a
back-pressure answer, with ``Retry-After``, which Schemathesis counts as a server error).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_server import API_KEY, ServerProcess, publish_versions

from pipelines.synth import write_synth

pytestmark = pytest.mark.slow

EXAMPLES = 10  # per operation and phase: ~15 s of requests on this project's 2-core machine
SEED = 20261207

CONFIG = f"""
[auth.openapi.bearer]
bearer = "{API_KEY}"

[[operations]]
include-operation-id = ["submitJob", "createSchedule"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synth(data / "synth", rows=2_000, seed=3, n_noise=2)  # jobs it queues finish in seconds
    home = tmp_path / "home"
    publish_versions(home, "ctr", (0.70, 0.71))  # something to read, promote and roll back
    # Rate limits up: the run sends hundreds of requests, many unauthenticated on purpose.
    server = ServerProcess(home, [data], scheduler_enabled="false", max_queued_jobs=10_000,
                           rate_limit_submit="10000/minute", rate_limit_auth_failures="10000/minute",
                           rate_limit_list_rows="1000000/minute").start()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    started = time.monotonic()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config), "run",
             f"{server.url}/openapi.json", "--checks", "all", "--exclude-checks", "use_after_free",
             "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1", "--no-shrink",
             "--request-timeout", "30"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    finally:
        server.stop()
    errors = [line for line in server.log_path.read_text(errors="replace").splitlines() if '"ERROR"' in line]
    report = run.stdout[-12_000:] + run.stderr[-2_000:] + "\nserver errors:\n" + "\n".join(errors[:3])[:6_000]
    assert run.returncode == 0, report
    assert "19/19" in run.stdout or "Tested: 19" in run.stdout, report  # every operation was exercised
    assert time.monotonic() - started < 180, report
