"""The distributed path beyond one process: the API, three Ray nodes, and a node lost mid-job.

A head node that only coordinates (``--num-cpus=0``, as the KubeRay manifest's head) and two worker
nodes are ``ray start --block`` processes on 127.0.0.1 (:mod:`ray_nodes`); ``seqattn serve`` runs
in a process of its own with ``RAY_ADDRESS`` naming the head (:mod:`live_server`), as the
docker-compose ``selector-api`` service does. A job with ``training.num_workers: 2`` is submitted
over HTTP and runs one Ray Train worker on each node (``SEQATTN_RAY_PLACEMENT=SPREAD``); once it
has checkpointed, one worker node is killed whole (SIGKILL to its process group: raylet, workers,
object store). Ray Train's failure policy
(``FailureConfig(max_failures=2)`` in :mod:`pipelines.ray_job`) must start a new worker group on
the surviving node, resume, and publish; the versions published before stay byte-for-byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from live_server import API_KEY as AUTH_KEY, AUTH, ServerProcess, job_spec, publish_versions, wait_job
from ray_nodes import RayNodes, free_port

from pipelines.synth import write_synth

pytestmark = pytest.mark.slow

NAME = "ctr-multi"
TRAIN_WORKER = "RayTrainWorker"  # the process title Ray gives a Ray Train worker actor


@pytest.fixture(scope="module")
def nodes():
    """A coordinating head and two worker nodes with 4 logical CPUs each: one node alone must hold
    both Ray Train workers and Ray Data's tasks beside them (2 real cores here)."""
    cluster = RayNodes(Path(tempfile.mkdtemp(prefix="sa-mn-", dir="/tmp")))
    try:
        cluster.start_head(num_cpus=0)
        cluster.add_worker(num_cpus=4, wait=True)
        cluster.add_worker(num_cpus=4, wait=True)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)


def _train_workers(cluster: RayNodes) -> dict[int, set[int]]:
    """Worker node index -> the pids of the Ray Train workers living on it."""
    return {i: {pid for pid, cmd in cluster.processes(p).items() if TRAIN_WORKER in cmd}
            for i, p in enumerate(cluster.procs) if i > 0 and p.poll() is None}


def _checkpointed(home: Path, job_id: str) -> bool:
    """Ray Train registered a checkpoint of this job's run (its index lists one)."""
    return any("checkpoint_" in f.read_text()
               for f in (home / "ray").glob(f"{NAME}-{job_id}-*/checkpoint_manager_snapshot.json"))


def test_a_job_from_the_api_survives_losing_a_worker_node(nodes, tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_synth(root / "synth", rows=30_000, seed=0, n_noise=4, files=3)
    home = tmp_path / "home"
    before = publish_versions(home, NAME, aucs=(0.70,))
    v1 = home / "artifacts" / NAME / str(before[0]) / "featureset.json"
    v1_bytes = v1.read_bytes()

    monkeypatch.setenv("RAY_ADDRESS", nodes.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # SPREAD, as docker-compose.yml and the Kubernetes API set it: one Ray Train worker per node.
    server = ServerProcess(home, [root], ray_placement="SPREAD").start(timeout=120)
    try:
        client = httpx.Client(base_url=server.url, timeout=30)
        spec = job_spec(NAME, selection={"features": 4},
                        training={"epochs": 2, "batch_size": 512, "num_workers": 2})
        created = client.post("/v1/jobs", json=spec, headers=AUTH)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        # Mid-job: the run has a registered checkpoint and each worker node holds a Ray Train worker.
        deadline, seen = time.monotonic() + 240, set()
        while not seen:
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["state"] in ("queued", "running"), (f"job ended before a node could be killed: {job}\n"
                                                           f"{server.log()}")
            assert time.monotonic() < deadline, (f"no checkpointed run with a worker on each node: "
                                                 f"{_train_workers(nodes)} {job}\n{server.log()}")
            workers = _train_workers(nodes)
            if _checkpointed(home, job_id) and len(workers) == 2 and all(workers.values()):
                seen = set().union(*workers.values())
            else:
                time.sleep(0.2)
        victim, survivor = 2, 1
        nodes.kill(nodes.procs[victim])

        # The failure policy starts a new worker group, on the one node left.
        restarted: set[int] = set()

        def watch() -> None:
            end = time.monotonic() + 240
            while time.monotonic() < end and not restarted:
                restarted.update(_train_workers(nodes).get(survivor, set()) - seen)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        job = wait_job(client, job_id, timeout=300)
        watcher.join(1)
        assert job["state"] == "succeeded", f"{job}\n{server.log()}"
        assert restarted, "no new Ray Train worker started on the surviving node"
        # A restarted worker group replays the stages, skipping those its checkpoint holds.
        stages = job["progress"]["stages"]
        assert stages[0] == "load" and stages[-2:] == ["reference", "done"]

        # Nothing lost: the earlier version untouched, the new one published once, readable, served.
        versions = client.get(f"/v1/feature-sets/{NAME}/versions").json()
        numbers = sorted(v["version"] for v in versions["versions"])
        assert numbers == [before[0], before[0] + 1]
        assert job["feature_set"]["version"] == before[0] + 1
        assert v1.read_bytes() == v1_bytes
        fs = client.get(f"/v1/feature-sets/{NAME}/versions/{before[0] + 1}").json()
        assert fs["job_id"] == job_id and len(fs["features"]) == 4
        on_disk = json.loads((home / "artifacts" / NAME / str(before[0] + 1) / "featureset.json").read_text())
        assert on_disk["job_id"] == job_id
        assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job_id]
    finally:
        server.stop()
    with sqlite3.connect(home / "seqattn.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.sh"


def _entrypoint_env(home: Path, address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQATTN_")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "RAY_ADDRESS": address,
                "RAY_AUTH_MODE": "disabled", "SEQATTN_HOME": str(home), "SEQATTN_API_KEY": AUTH_KEY})
    return env


def test_the_images_entrypoint_joins_the_cluster_without_cpus_then_serves(nodes, tmp_path):
    """deploy/entrypoint.sh as the images run it (here with the venv's `ray` and `seqattn`)."""
    env = _entrypoint_env(tmp_path / "home", nodes.address)
    synth = subprocess.run(["sh", str(ENTRYPOINT), "synth", "--out", str(tmp_path / "synth"), "--rows", "1000"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert synth.returncode == 0 and (tmp_path / "synth" / "data.parquet").exists(), synth.stderr
    before = nodes.alive_cpus()
    port = free_port()
    log = (tmp_path / "entrypoint.log").open("w")
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "entrypoint.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "entrypoint.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert sorted(before + [0.0]) == nodes.alive_cpus()  # one more node, and it offers no CPU
    finally:
        # `seqattn serve` (exec'd: the session's leader), then what `ray start` left in the session
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid in nodes.session_pids(proc):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 15
        while nodes.session_pids(proc) and time.monotonic() < end:
            time.sleep(0.5)
        for pid in nodes.session_pids(proc):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
