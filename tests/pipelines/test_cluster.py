"""Which cluster a job gets: RAY_ADDRESS unset -> a local one with more logical CPUs than cores,
listening on loopback only. (RAY_ADDRESS set is covered by test_ray_job.py, against two `ray start`
nodes.)"""

import json
import os
import subprocess
import sys

import pytest

from pipelines.cluster import MIN_LOCAL_CPUS, local_cpus

# In a child process: Ray Data keeps per-cluster state in module globals, so a process that used
# one cluster and then joins another fails its reads (OwnerDiedError); the test suite must not do it.
PROBE = """
import json, os, ray
import psutil  # after ray: Ray ships its own copy (ray/thirdparty_files) and puts it on the path
from pipelines.cluster import connect, disconnect, local_cpus
os.environ.pop("RAY_ADDRESS", None)
started = connect()
again = connect()
cpus = ray.cluster_resources()["CPU"]
# What the cluster listens on: every TCP listener of this process and the Ray processes it started.
listening = sorted({c.laddr.ip for p in [psutil.Process(), *psutil.Process().children(recursive=True)]
                    for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN})
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                  "listening": listening, "env_after": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}))
disconnect()
print(started, again, cpus == local_cpus(), ray.is_initialized())
"""


def test_local_cpus_leave_room_for_ray_data_beside_the_workers():
    assert local_cpus() >= MIN_LOCAL_CPUS and local_cpus() >= 2 * (os.cpu_count() or 1)


@pytest.mark.slow
def test_without_ray_address_a_local_cluster_is_started_and_stopped():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    *_, seen, last = out.stdout.strip().splitlines()
    assert last == "True False True False"
    seen = json.loads(seen)
    assert seen["gcs"].startswith("127.0.0.1:") and seen["nodes"] == ["127.0.0.1"]
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert seen["env_after"] is None  # the single-node switch was only on while the cluster started
