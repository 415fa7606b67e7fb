"""Losing a node: two Ray nodes on this machine (a head and a second node, each `ray start --block`
with its own ports and temp dir, 1 CPU each), a run spread over both, and the second node killed
(SIGKILL to its `ray start`, raylet, agents and workers at once, as when a machine goes down)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from faults.kit import PYTHON, complete_epochs, start_hpe, train_config, wait_for, write_yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(PYTHON).parent / "ray")
NODE_PORTS = ("node_manager", "object_manager", "agent_grpc", "agent_listen", "metrics", "runtime_env",
              "min_worker", "max_worker")


def job_ports(job_id: int) -> dict[str, int]:
    """The ports slurm/ray_cluster.sh gives a job (`ray_job_ports`)."""
    names = ("gcs", "node_manager", "object_manager", "client", "dashboard", "agent_grpc", "agent_listen",
             "metrics", "runtime_env", "min_worker", "max_worker")
    out = subprocess.run(["bash", "-c", f"source {REPO / 'slurm' / 'ray_cluster.sh'}; ray_job_ports {job_id}"],
                         capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(names, map(int, out)))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _descendants(root: int) -> list[int]:
    """root and every process below it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class TwoNodes:
    """A head and a second node on this machine. The head takes the ports of one slurm job slot,
    the second node those of the next slot, each its own temp dir; token authentication, as
    slurm/ray_cluster.sh starts a cluster."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        slot = os.getpid() % 199
        for offset in range(0, 199):  # two neighbouring job slots whose ports are free now
            job = 400_000 + (slot + offset) % 199
            head, second = job_ports(job), job_ports(job + 1)
            if all(_port_free(p) for ports in (head, second) for name, p in ports.items() if name != "max_worker"):
                break
        self.job, self.ports = job, (head, second)
        self.address = f"127.0.0.1:{head['gcs']}"
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
        self.nodes: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        self.second: subprocess.Popen | None = None
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, capture_output=True, check=True)

    def _start(self, args: list[str], ports: dict[str, int], temp_dir: str, name: str) -> subprocess.Popen:
        self.temp_dirs.append(temp_dir)
        node_args = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                     f"--temp-dir={temp_dir}", "--object-store-memory=200000000",
                     *(f"--{name.replace('_', '-')}-port={ports[name]}" for name in
                       ("node_manager", "object_manager", "min_worker", "max_worker")),
                     f"--runtime-env-agent-port={ports['runtime_env']}",
                     f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
                     f"--dashboard-agent-listen-port={ports['agent_listen']}",
                     f"--metrics-export-port={ports['metrics']}"]
        log = open(self.log_dir / f"{name}.log", "ab")
        # its own session: the node's processes are the tree under it
        process = subprocess.Popen([RAY, "start", *args, *node_args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(process)
        return process

    def start_head(self) -> None:
        ports = self.ports[0]
        self._start(["--head", f"--port={ports['gcs']}", f"--ray-client-server-port={ports['client']}",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}"],
                    ports, f"/tmp/ray_{self.job}", "head")
        self.wait_active(1)

    def start_second(self, name: str = "second") -> None:
        """The second node (again: a fresh temp dir, the same ports), with resource node2."""
        self.second = self._start([f"--address={self.address}", '--resources={"node2": 1}'], self.ports[1],
                                  f"/tmp/ray_{self.job + 1}{'' if name == 'second' else 'b'}", name)

    def active(self) -> int:
        """Alive nodes, as slurm/ray_cluster.sh counts them."""
        out = subprocess.run(["bash", "-c", f"source {REPO / 'slurm' / 'ray_cluster.sh'}; "
                              f"count_active_nodes {self.address}"], env={**self.env, "RAY": RAY},
                             capture_output=True, text=True, timeout=60).stdout
        return int(out.strip() or 0)

    def wait_active(self, count: int, timeout: float = 120) -> float:
        started = time.monotonic()
        while (active := self.active()) != count:
            dead = [p.args[2] for p in self.nodes if p.poll() is not None and p is not self._killed]
            assert not dead, f"a Ray node exited while starting; see {self.log_dir}"
            assert time.monotonic() - started < timeout, f"{active} of {count} Ray nodes after {timeout} s"
            time.sleep(1)
        return time.monotonic() - started

    _killed: subprocess.Popen | None = None

    def kill_second(self) -> int:
        """SIGKILL to every process of the second node at once; returns how many there were."""
        assert self.second is not None and self.second.poll() is None
        pids = _descendants(self.second.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.second.wait(timeout=30)
        self._killed, self.second = self.second, None
        return len(pids)

    def stop(self) -> None:
        """SIGTERM to each `ray start --block` (it stops its own processes), then SIGKILL to anything
        of them left; the temp dirs go too."""
        for process in self.nodes:
            if process.poll() is None:
                process.terminate()
        for process in self.nodes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
