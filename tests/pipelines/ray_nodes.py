"""Real Ray nodes for the multi-node tests: ``ray start --block`` processes on 127.0.0.1.

Each node is a child process in a session of its own, so the Ray processes it starts (raylet,
workers) can be told apart from any other cluster's and stopped, or killed as a whole node, by
that session's process group. Nothing here stops a process by name (``ray stop`` would).

Token authentication is off for these throwaway clusters (``RAY_AUTH_MODE=disabled`` in
:attr:`RayNodes.env`): a driver that imported Ray before the nodes existed could not read a token.

Example::

    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")))
    address = nodes.start_head(num_cpus=0)        # a head that only coordinates, as on KubeRay
    worker = nodes.add_worker(num_cpus=4)
    nodes.wait_alive(2)
    ...
    nodes.kill(worker)                           # the whole node dies at once
    nodes.stop()
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

RAY = str(Path(sys.executable).with_name("ray"))

ALIVE_PROBE = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + float(sys.argv[3])
while len([n for n in ray.nodes() if n["Alive"]]) < int(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.5)
print(len([n for n in ray.nodes() if n["Alive"]]))
"""


CPUS_PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps(sorted(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNodes:
    """A head and worker nodes under ``temp`` (short: Ray's socket paths live under it)."""

    def __init__(self, temp: Path, object_store_bytes: int = 400_000_000) -> None:
        self.temp = temp
        self.object_store_bytes = object_store_bytes
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, args: list[str], log_name: str, num_cpus: int) -> subprocess.Popen:
        log = (self.temp / log_name).open("w")
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 f"--num-cpus={num_cpus}", f"--object-store-memory={self.object_store_bytes}",
                                 f"--dashboard-agent-listen-port={free_port()}", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        name = "head.log" if proc is self.procs[0] else f"worker-{self.procs.index(proc)}.log"
        path = self.temp / name
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def start_head(self, num_cpus: int = 2, timeout: float = 60.0) -> str:
        """Start the head node and wait until its GCS port answers; returns ``127.0.0.1:PORT``."""
        port = free_port()
        head = self._start(["--head", f"--port={port}", f"--temp-dir={self.temp}", "--include-dashboard=false"],
                           "head.log", num_cpus)
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError as exc:
                if time.time() > deadline or head.poll() is not None:
                    raise RuntimeError(f"the head node did not start: {self.log(head)}") from exc
                time.sleep(0.5)
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_worker(self, num_cpus: int = 2, wait: bool = False) -> subprocess.Popen:
        """Start a worker node joining the head; ``wait``: until it is alive, starting it once more
        if it gave up (seen here: on a loaded 2-core box a node can miss Ray's fixed 30 s for its raylet
        to register, and its ``ray start`` exits)."""
        assert self.address, "start the head first"
        log = f"worker-{len(self.procs)}.log"
        proc = self._start([f"--address={self.address}"], log, num_cpus)
        if wait and not self.wait_alive(len(self.procs), watch=proc):
            self.procs.remove(proc)
            proc = self._start([f"--address={self.address}"], log, num_cpus)
            self.wait_alive(len(self.procs), watch=proc)
        return proc

    def wait_alive(self, n: int, timeout: float = 90.0, watch: subprocess.Popen | None = None) -> bool:
        """Wait until ``n`` nodes are alive, asked from a child process: a test process that joins a
        cluster keeps Ray Data state that breaks its next cluster (see test_cluster.py). Returns
        False at once if the ``watch``ed node process exits meanwhile; raises on a time-out."""
        probe = subprocess.Popen([sys.executable, "-c", ALIVE_PROBE, self.address, str(n), str(timeout)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        deadline = time.time() + timeout + 60
        while probe.poll() is None and time.time() < deadline:
            if watch is not None and watch.poll() is not None:
                probe.kill()  # our own child
                probe.communicate()
                return False
            time.sleep(0.5)
        if probe.poll() is None:
            probe.kill()
        out, err = probe.communicate()
        alive = out.strip().splitlines()[-1:] if probe.returncode == 0 else []
        if not alive or int(alive[0]) < n:
            logs = "\n".join(self.log(p) for p in self.procs[1:])
            raise RuntimeError(f"{alive} of {n} nodes alive: {err[-1000:]}\n{logs}")
        return True

    def alive_cpus(self) -> list[float]:
        """The logical CPUs of each alive node, sorted (asked from a child process, as above)."""
        out = subprocess.run([sys.executable, "-c", CPUS_PROBE, self.address], capture_output=True, text=True,
                             env=self.env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def session_pids(self, proc: subprocess.Popen) -> list[int]:
        """The processes of a node: those in the session that its ``ray start`` leads."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # field 6 of /proc/PID/stat is the session id; the command name may hold spaces
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == proc.pid:
                    pids.append(int(entry.name))
        return pids

    def processes(self, proc: subprocess.Popen) -> dict[int, str]:
        """pid -> command line (Ray puts its process titles there) of a node's processes."""
        out = {}
        for pid in self.session_pids(proc):
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
        return out

    def kill(self, proc: subprocess.Popen) -> None:
        """The whole node dies at once (SIGKILL to its session's group), as a lost machine would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """Stop the nodes we started, workers first: SIGTERM (``ray start --block`` stops what it
        started), then SIGKILL to the session's group of any that outlives 10 s."""
        procs = list(reversed(self.procs))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                # Measured: one of two nodes often outlives SIGTERM; its raylet's workers exit with it.
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
