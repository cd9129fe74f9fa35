"""A real multi-node Ray cluster on one machine, for the multi-node, fault and scale checks.

Each node is a `ray start --block` process in its own session (process group), with its own temp
dir, free ports and a custom resource naming it. Stopping kills exactly those process groups, so
other Ray instances on the machine (other users, the test session's local Ray) are never touched.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = [
    "--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
    "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port",
]
# Token auth is for real clusters; loopback test nodes and their drivers agree on "off".
BASE_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Process titles of Ray workers that are not running user work (`ray::_...`: Ray's own actors).
IDLE_TITLES = ("ray::IDLE", "ray::RuntimeEnvAgent", "ray::DashboardAgent", "ray::JobSupervisor", "ray::_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session: leader of its own group

    def processes(self) -> list[int]:
        """The node's processes: its group (gcs, raylet, agents) and the workers its raylet forked
        (Ray puts each worker in a group of its own)."""
        group = _group_members(self.pgid)
        raylets = {pid for pid in group if "/raylet/raylet" in _cmdline(pid)}
        return group + [pid for pid in _all_pids() if _parent(pid) in raylets and pid not in group]

    def worker_titles(self) -> list[str]:
        """Titles of the Ray worker processes of this node now running a task or an actor."""
        titles = [_cmdline(pid) for pid in self.processes()]
        return [t for t in titles if t.startswith("ray::") and not t.startswith(IDLE_TITLES)]

    def worker_pids(self, title_prefix: str) -> list[int]:
        return [pid for pid in self.processes() if _cmdline(pid).startswith(title_prefix)]

    def kill(self) -> None:
        """SIGKILL every process of the node (raylet, object store, agents, its workers)."""
        for pid in self.processes():
            _kill(pid)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LocalRayCluster:
    root: Path
    address: str = ""
    dashboard_url: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver that joins this cluster through RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, **BASE_ENV, "RAY_ADDRESS": self.address, **extra}

    def start_node(self, name: str, num_cpus: int, object_store_mb: int = 300, dashboard: bool = False,
                   cwd: Path | None = None) -> RayNode:
        """Start a node (the first is the head; `dashboard` gives it the job submission API) in
        `cwd`, its workers' working directory: where a relative path leads on that node."""
        head = not self.nodes
        log = self.root / f"{name}.log"
        args = [
            RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps({name: 1})}",
            f"--object-store-memory={object_store_mb * 1024 * 1024}",
            f"--temp-dir={self.root / name}",
        ]
        args += [f"{flag}={free_port()}" for flag in PORT_FLAGS]
        if head:
            port = free_port()
            dashboard_port = free_port()
            args += ["--head", f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
                     f"--port={port}", f"--dashboard-port={dashboard_port}"]
            self.address = f"127.0.0.1:{port}"
            self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        else:
            args.append(f"--address={self.address}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | BASE_ENV
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # as in an image: the CLI on PATH
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                       start_new_session=True)
        node = RayNode(name, process, log)
        self.nodes.append(node)
        self.wait_for_nodes(len(self.nodes))
        return node

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        """Block until `count` nodes are alive, probing from a separate driver process."""
        probe = (
            "import ray, sys; ray.init(log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.log.read_text()[-3000:]}")
            try:
                result = subprocess.run([sys.executable, "-c", probe], env=self.env(), capture_output=True,
                                        text=True, timeout=45)
                if result.returncode == 0 and int(result.stdout.split()[-1]) >= count:
                    return
                problem = result.stderr[-2000:]
            except subprocess.TimeoutExpired:
                problem = "the probe driver could not connect"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} ray nodes not alive: {problem}")
            time.sleep(1)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()


@contextmanager
def local_ray_cluster(cpus_per_node: list[int], dashboard: bool = False,
                      node_dirs: list[Path] | None = None) -> Iterator[LocalRayCluster]:
    """Nodes `node0`, `node1`, ... with the given CPUs, each started in its `node_dirs` entry when
    given; the first is the head."""
    root = Path(tempfile.mkdtemp(prefix="pfray-", dir="/tmp"))  # short: Ray's socket paths are bounded
    cluster = LocalRayCluster(root)
    # if this process is killed before the `finally` runs, the watchdog stops the nodes
    watchdog = subprocess.Popen([sys.executable, __file__, str(os.getpid()), str(root)], start_new_session=True)
    try:
        for index, cpus in enumerate(cpus_per_node):
            cluster.start_node(f"node{index}", cpus, dashboard=dashboard and index == 0,
                               cwd=node_dirs[index] if node_dirs else None)
        yield cluster
    finally:
        cluster.stop()
        watchdog.kill()
        watchdog.wait()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def kill_nodes_under(root: Path) -> None:
    """SIGKILL every process started for nodes under `root`, and the workers of their raylets."""
    mine = [pid for pid in _all_pids() if str(root) in _cmdline(pid) and pid != os.getpid()]
    raylets = {pid for pid in mine if "/raylet/raylet" in _cmdline(pid)}
    for pid in mine + [pid for pid in _all_pids() if _parent(pid) in raylets]:
        _kill(pid)


class WorkSampler:
    """Samples, in the background, which nodes have Ray workers running user work."""

    def __init__(self, cluster: LocalRayCluster, period_s: float = 0.1) -> None:
        self.cluster = cluster
        self.period_s = period_s
        self.seen: dict[str, set[str]] = {node.name: set() for node in cluster.nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.cluster.nodes:
                self.seen[node.name].update(node.worker_titles())
            time.sleep(self.period_s)


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _stat(pid: int) -> list[str]:
    """state, ppid, pgrp, ... of a live process; empty when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return [] if fields[0] == "Z" else fields


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else -1


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if (fields := _stat(pid)) and int(fields[2]) == pgid]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":  # the watchdog: python ray_nodes.py OWNER_PID ROOT
    owner, watched = int(sys.argv[1]), Path(sys.argv[2])
    while Path(f"/proc/{owner}").exists() and _stat(owner):
        time.sleep(1)
    kill_nodes_under(watched)
    subprocess.run(["rm", "-rf", str(watched)], check=False)
