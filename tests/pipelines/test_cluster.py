"""Which cluster a job gets: RAY_ADDRESS unset -> a local one with more logical CPUs than cores.
(RAY_ADDRESS set is covered by test_ray_job.py, against two `ray start` nodes.)"""

import os

import pytest
import ray

from pipelines.cluster import MIN_LOCAL_CPUS, connect, disconnect, local_cpus


def test_local_cpus_leave_room_for_ray_data_beside_the_workers():
    assert local_cpus() >= MIN_LOCAL_CPUS and local_cpus() >= 2 * (os.cpu_count() or 1)


@pytest.mark.slow
def test_without_ray_address_a_local_cluster_is_started_and_stopped(monkeypatch):
    if ray.is_initialized():
        pytest.skip("this process is already attached to a cluster")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        assert connect() is True
        assert ray.cluster_resources()["CPU"] == local_cpus()
        assert connect() is False  # already attached: nothing new
    finally:
        disconnect()
    assert not ray.is_initialized()
