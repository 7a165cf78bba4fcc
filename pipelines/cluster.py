"""Which Ray cluster a job runs on: ``RAY_ADDRESS`` set -> that cluster; unset -> a local one.

A local cluster is started in this process with more logical CPUs than the machine has cores:
a TorchTrainer run holds one CPU per worker for its whole life, and Ray Data's read and split
tasks need CPUs of their own while it runs. With ``num_cpus`` equal to 2 real cores a 2-worker run
leaves no CPU for the reads and waits for ever (measured; see DESIGN.md, "The engine").

Example::

    started = connect()          # a local cluster, or the one RAY_ADDRESS names
    ...
    if started:
        disconnect()
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)

MIN_LOCAL_CPUS = 4
# Worker processes log every TBE argument at INFO; users cannot act on any of it.
WORKER_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR", "PYTHONWARNINGS": "ignore"}


def local_cpus() -> int:
    """Logical CPUs for a local cluster: twice the cores, at least :data:`MIN_LOCAL_CPUS`."""
    return max(MIN_LOCAL_CPUS, 2 * (os.cpu_count() or 1))


def connect(num_cpus: int | None = None) -> bool:
    """Attach this process to Ray; returns True when it started a local cluster.

    Already connected: nothing changes (a service keeps one connection for all its jobs).
    ``RAY_ADDRESS`` set (``ray://...`` or ``host:port``): that cluster, ``num_cpus`` ignored.
    """
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS", "").strip()
    # Every worker process of the job (Ray Data tasks too) runs the same fsspec guard as the driver.
    runtime_env = {"env_vars": dict(WORKER_ENV),
                   "worker_process_setup_hook": "pipelines.ray_data.forget_broken_http_filesystem"}
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        return False
    cpus = num_cpus or local_cpus()
    log.info("starting a local Ray cluster with %d logical CPUs", cpus)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    return True


def disconnect() -> None:
    """Leave the cluster (and stop it if this process started it)."""
    if ray.is_initialized():
        ray.shutdown()
