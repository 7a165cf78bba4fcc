"""Which Ray cluster a job runs on: ``RAY_ADDRESS`` set -> that cluster; unset -> a local one.

A local cluster is started in this process with more logical CPUs than the machine has cores:
a TorchTrainer run holds one CPU per worker for its whole life, and Ray Data's read and split
tasks need CPUs of their own while it runs. With ``num_cpus`` equal to 2 real cores a 2-worker run
leaves no CPU for the reads and waits for ever (measured; see docs/architecture.md, "The engine").

The local cluster is bound to loopback (127.0.0.1): GCS, raylet, object manager, workers and
agents listen on no other interface, so ``seqattn serve --host 127.0.0.1`` exposes nothing beyond
its own port. (Ray binds its servers to the node's IP address, and ``ray.init`` resolves a
``_node_ip_address`` of 127.0.0.1 to the machine's outward address unless multi-node clusters are
off: :func:`_loopback_only` turns them off for the start.)

Example::

    started = connect()          # a local cluster, or the one RAY_ADDRESS names
    ...
    if started:
        disconnect()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

log = logging.getLogger(__name__)

MIN_LOCAL_CPUS = 4
LOOPBACK = "127.0.0.1"
# Ray's switch for "this node never joins others" (on by default on macOS and Windows): with it,
# Ray takes loopback as the node's address instead of resolving it to an outward one.
SINGLE_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
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
    runtime_env: dict[str, Any] = {"env_vars": dict(WORKER_ENV),
                   "worker_process_setup_hook": "pipelines.ray_data.forget_broken_http_filesystem"}
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        return False
    cpus = num_cpus or local_cpus()
    log.info("starting a local Ray cluster with %d logical CPUs on %s", cpus, LOOPBACK)
    runtime_env["env_vars"].update(SINGLE_NODE_ENV)  # workers agree with the driver on the address
    with _loopback_only():
        ray.init(num_cpus=cpus, include_dashboard=False, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                 log_to_driver=False, runtime_env=runtime_env)
    return True


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local cluster starts: Ray's single-node mode, so that the node's address, which
    every Ray server binds to, is loopback. In this process (``ray_constants`` read the variable
    when Ray was imported) and in the GCS, raylet and agents it spawns (they inherit the
    environment); both are put back afterwards, so a later ``RAY_ADDRESS`` join is unaffected."""
    from ray._private import ray_constants

    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    saved_env = {k: os.environ.get(k) for k in SINGLE_NODE_ENV}
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ.update(SINGLE_NODE_ENV)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def disconnect() -> None:
    """Leave the cluster (and stop it if this process started it)."""
    if ray.is_initialized():
        ray.shutdown()
