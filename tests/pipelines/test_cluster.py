"""Which cluster a job gets: RAY_ADDRESS unset -> a local one with more logical CPUs than cores.
(RAY_ADDRESS set is covered by test_ray_job.py, against two `ray start` nodes.)"""

import os
import subprocess
import sys

import pytest

from pipelines.cluster import MIN_LOCAL_CPUS, local_cpus

# In a child process: Ray Data keeps per-cluster state in module globals, so a process that used
# one cluster and then joins another fails its reads (OwnerDiedError); the test suite must not do it.
PROBE = """
import os, ray
from pipelines.cluster import connect, disconnect, local_cpus
os.environ.pop("RAY_ADDRESS", None)
started = connect()
again = connect()
cpus = ray.cluster_resources()["CPU"]
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
    assert out.stdout.strip().splitlines()[-1] == "True False True False"
