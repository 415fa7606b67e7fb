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

from faults.kit import PYTHON, complete_epochs, train_config, write_yaml

pytestmark = pytest.mark.slow
RUN = "fault"
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(PYTHON).parent / "ray")
# The GCS marks a node dead after 5 failed health checks 1 s apart (Ray's default: 3 s apart,
# about 18 s here); a killed raylet refuses at once, a busy one has 10 s to answer each check.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
                "RAY_health_check_timeout_ms": "10000"}


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
        self.killed: list[subprocess.Popen] = []
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
        # No 30 s drain when the test stops the node (Ray 2.60's default on SIGTERM); its own
        # session, so that the node's processes are the tree under it.
        env = {**self.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **HEALTH_CHECK}
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen([RAY, "start", *args, *node_args], env=env, stdout=log,
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
                                  f"/tmp/ray_{self.job + 1}_{len(self.killed)}", name)

    def active(self) -> int:
        """Alive nodes, as slurm/ray_cluster.sh counts them."""
        out = subprocess.run(["bash", "-c", f"source {REPO / 'slurm' / 'ray_cluster.sh'}; "
                              f"count_active_nodes {self.address}"], env={**self.env, "RAY": RAY},
                             capture_output=True, text=True, timeout=60).stdout
        return int(out.strip() or 0)

    def wait_active(self, count: int, timeout: float = 120) -> float:
        started = time.monotonic()
        while (active := self.active()) != count:
            dead = [p for p in self.nodes if p.poll() is not None and p not in self.killed]
            assert not dead, f"a Ray node exited while starting; see the *.log files in {self.log_dir}"
            assert time.monotonic() - started < timeout, f"{active} of {count} Ray nodes after {timeout} s"
            time.sleep(1)
        return time.monotonic() - started

    def kill_second(self) -> list[str]:
        """SIGKILL to every process of the second node at once (as when its machine goes down);
        returns their command lines."""
        assert self.second is not None and self.second.poll() is None
        pids = _descendants(self.second.pid)
        names = []
        for pid in pids:
            try:
                names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.second.wait(timeout=30)
        self.killed.append(self.second)
        self.second = None
        return names

    def processes_of_second(self) -> list[int]:
        return _descendants(self.second.pid) if self.second is not None else []

    def stop(self) -> None:
        """SIGTERM to each `ray start --block` (it stops its own processes), then SIGKILL to anything
        of theirs left; the temp dirs go too."""
        trees = [_descendants(p.pid) for p in self.nodes if p.poll() is None]
        for process in self.nodes:
            if process.poll() is None:
                process.terminate()
        for process in self.nodes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in (pid for tree in trees for pid in tree[1:]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def _cluster(tmp_path_factory):
    """The module's head (about 12 s to start); the tests share it."""
    cluster = TwoNodes(tmp_path_factory.mktemp("two-nodes"))
    try:
        cluster.start_head()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_nodes(_cluster):
    """The head and a second node, both alive: the replacement a previous test left, or a new one."""
    if _cluster.second is None:
        _cluster.start_second()
    _cluster.wait_active(2)
    return _cluster


def _start(args: list[str], cluster: TwoNodes, cwd: Path, log_name: str = "", **env: str
           ) -> tuple[subprocess.Popen, Path]:
    """`hpe-ray ARGS` with its output in a file (a pipe nobody reads would stall Ray's log stream)."""
    log = cwd / f"{log_name or args[0]}.log"
    with log.open("w") as out:
        process = subprocess.Popen([PYTHON, "-m", "hpe_ray", *args], cwd=cwd, env={**cluster.env, **env},
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, log


def _wait(predicate, process: subprocess.Popen, log: Path, what: str, timeout: float = 240) -> float:
    started = time.monotonic()
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)
    return time.monotonic() - started


def _finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        process.kill()
    return log.read_text()


def _newest(run_dir: Path) -> int:
    return max(complete_epochs(run_dir), default=0)


def test_a_lost_node_pauses_train_until_a_replacement_joins_then_it_resumes(tmp_path, fault_data, fault, two_nodes):
    row = fault("a node lost during `train` (2 workers, one per node)",
                "SIGKILL to every process of the second node (ray start, raylet, agents, its Train worker) once 2 "
                "of 6 epochs are checkpointed; a replacement node joins once Ray has marked the node dead",
                "Train counts a worker-group failure (run.max_failures) and waits for 2 CPUs; once the "
                "replacement joins it resumes from the newest checkpoint and ends at epoch 6, exit 0")
    config = train_config(tmp_path, fault_data, epochs=6, scaling={"workers": 2, "cpus_per_worker": 1})
    run_dir = tmp_path / "runs" / RUN
    run, log = _start(["train", "--config", str(config)], two_nodes, tmp_path, RAY_ADDRESS=two_nodes.address)
    try:
        _wait(lambda: len(complete_epochs(run_dir)) >= 2, run, log, "two checkpoints")
        killed = two_nodes.kill_second()
        lost = time.monotonic()
        # each node has 1 CPU and each worker takes 1: one of the two workers was on the lost node
        assert any("RayTrainWorker" in name for name in killed), killed
        dead_after = two_nodes.wait_active(1)
        newest = _newest(run_dir)  # settled: nothing trains while a worker is missing
        two_nodes.start_second("replacement")
        two_nodes.wait_active(2)
        _wait(lambda: _newest(run_dir) > newest, run, log, "an epoch after the resume")
        recovered = time.monotonic() - lost
        output = _finish(run, log)
    finally:
        run.kill()
    assert run.returncode == 0, output[-4000:]
    assert "[FailurePolicy] RETRY" in output, output[-4000:]
    resumed = re.search(rf"resuming from {re.escape(str(run_dir))}/\S+ \(epoch {newest}\)", output)
    assert resumed, output[-4000:]
    # after the resume: exactly the missing epochs
    assert sorted(set(map(int, re.findall(r"epoch (\d)/6 ", output[resumed.end():])))) == list(range(newest + 1, 7))
    assert _newest(run_dir) == 6
    # Train's placement-group cleaner found the cluster (it needs RAY_ADDRESS in the workers' env)
    assert "Exception in thread PlacementGroupCleanerMonitor" not in output
    row.recovered(f"survived: Ray marked the node dead after {dead_after:.0f} s; resumed at epoch {newest} "
                  "with the replacement, 6 epochs in all", recovered)


def test_a_lost_node_without_replacement_ends_train_after_the_start_timeouts(tmp_path, fault_data, fault, two_nodes):
    row = fault("a node lost during `train`, no replacement",
                "as above, no node joins; RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=10 (hpe-ray's default 300), run.max_failures 1",
                "Train waits for 2 CPUs (run.max_failures + 1) times the start timeout, then `train` exits 1 "
                "with one line naming the run, its last epoch and Ray's cause; the checkpoints stay complete and, with room again, the same command resumes")
    from hpe_ray.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, run_checkpoints

    # One retry (not the default two): each retry is a start timeout spent waiting.
    config = train_config(tmp_path, fault_data, epochs=6, scaling={"workers": 2, "cpus_per_worker": 1},
                          run={"max_failures": 1})
    run_dir = tmp_path / "runs" / RUN
    run, log = _start(["train", "--config", str(config)], two_nodes, tmp_path, RAY_ADDRESS=two_nodes.address,
                      RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10")
    try:
        _wait(lambda: len(complete_epochs(run_dir)) >= 2, run, log, "two checkpoints")
        two_nodes.kill_second()
        lost = time.monotonic()
        output = _finish(run, log, timeout=180)
        gave_up = time.monotonic() - lost
    finally:
        run.kill()
    # one worker-group failure, then (run.max_failures + 1) start timeouts, then one line of ours
    assert run.returncode == 1, output[-4000:]
    assert output.count("[FailurePolicy] RETRY") == 2 and "[FailurePolicy] RAISE" in output, output[-4000:]
    assert "worker group startup timed out after 10.0 seconds waiting for 2 workers" in output
    newest = _newest(run_dir)
    assert re.search(rf"hpe-ray: run {re.escape(str(run_dir))} failed after epoch {newest} of 6 \(last checkpoint "
                     r"\S+\) once run.max_failures \(1\) retries were spent: ray.train.ControllerError: .*; run the "
                     "same command to continue from it", output), output[-4000:]
    assert 2 <= newest < 6
    load_checkpoint(run_checkpoints(run_dir)[-1][1] / CHECKPOINT_FILE)
    two_nodes.start_second("replacement")
    two_nodes.wait_active(2)
    started = time.monotonic()
    again, log = _start(["train", "--config", str(config)], two_nodes, tmp_path, "again",
                        RAY_ADDRESS=two_nodes.address)
    output = _finish(again, log)
    assert again.returncode == 0, output[-4000:]
    assert re.search(rf"resuming from {re.escape(str(run_dir))}/\S+ \(epoch {newest}\)", output), output[-4000:]
    assert _newest(run_dir) == 6
    row.recovered(f"failed after {gave_up:.0f} s (exit {run.returncode}); the same command resumed at epoch "
                  f"{newest}", time.monotonic() - started)


SEARCH_EPOCHS = 6


def _space(tmp_path: Path, trials: int) -> Path:
    """Trials of one worker each, two at a time: one trial per node (each takes the node's CPU)."""
    from test_tune import TINY_SPACE

    base = {**TINY_SPACE["base"], "train": {**TINY_SPACE["base"]["train"], "epochs": SEARCH_EPOCHS,
                                            "steps_per_epoch": 300, "batch_size": 64}}
    assert base["scaling"]["cpus_per_worker"] + TINY_SPACE["search_settings"]["trial_cpus"] == 1
    return write_yaml(tmp_path / "space.yaml", {**TINY_SPACE, "base": base, "search_settings": {
        **TINY_SPACE["search_settings"], "num_samples": trials, "max_concurrent": 2, "scheduler": "none"}})


def test_a_lost_node_during_a_search_restarts_only_its_trial_from_its_checkpoint(tmp_path, fault_data, fault,
                                                                                   two_nodes):
    row = fault("a node lost during `tune` (one trial per node)",
                "SIGKILL to every process of the second node once its trial has a checkpoint and another "
                "trial has finished; no replacement",
                "the search goes on with the head alone: the lost trial is restarted (Tune's max_failures) and "
                "resumes from its newest checkpoint; every trial ends complete, finished ones untouched, the "
                "Optuna study holds each once")
    import optuna

    trials = 4
    experiment = tmp_path / "runs" / "two"
    runs = experiment / "train_runs"
    search, log = _start(["tune", "--space", str(_space(tmp_path, trials)), "--data", str(fault_data),
                          "--storage", str(tmp_path / "runs"), "--name", "two", "--address", two_nodes.address],
                         two_nodes, tmp_path)

    def trial_on_second() -> str | None:
        """The id of the trial running on the second node (Tune runs a trial in its own folder)."""
        for pid in two_nodes.processes_of_second():
            try:
                folder = Path(os.readlink(f"/proc/{pid}/cwd")).name
            except OSError:
                continue
            if folder.startswith("trial_"):
                return folder.removeprefix("trial_")
        return None

    target: dict[str, str] = {}

    finished: dict[str, dict[Path, bytes]] = {}

    def ready() -> bool:
        """A finished trial (its files read now) and a trial on the second node with a checkpoint and
        at least two epochs to go, so it cannot finish in the moment between this look and the kill."""
        done = [r for r in runs.glob("train-*") if _newest(r) == SEARCH_EPOCHS] if runs.is_dir() else []
        trial = trial_on_second()
        if not (done and trial and 1 <= _newest(runs / f"train-{trial}") <= SEARCH_EPOCHS - 2):
            return False
        finished.update({r.name: {p: p.read_bytes() for p in sorted(r.rglob("*")) if p.is_file()} for r in done})
        target["trial"] = trial
        return True

    try:
        _wait(ready, search, log, "a trial on the second node with a checkpoint, and a finished trial")
        killed = two_nodes.kill_second()
        lost = time.monotonic()
        assert any("ImplicitFunc" in name for name in killed), killed
        lost_run = runs / f"train-{target['trial']}"
        newest = _newest(lost_run)
        assert 1 <= newest < SEARCH_EPOCHS  # it did not finish between the look and the kill
        _wait(lambda: _newest(lost_run) > newest, search, log, "the lost trial's next epoch", timeout=240)
        recovered = time.monotonic() - lost
        output = _finish(search, log)
    finally:
        search.kill()
    assert search.returncode == 0, output[-4000:]
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial_id": str})
    assert len(board) == trials and board["trial_id"].is_unique and board["val_mpjpe"].notna().all()
    assert (board["status"] == "complete").all(), board
    # The lost trial's reports: no epoch twice; a second process (Tune restarted the trial, its
    # training_iteration from 1 again) reported from the epoch after its newest checkpoint on.
    reports = [json.loads(line) for line in (experiment / f"trial_{target['trial']}" / "result.json").open()]
    epochs = [r["epoch"] for r in reports]
    assert epochs == sorted(set(epochs)) and epochs[-1] == SEARCH_EPOCHS, epochs
    restarted = [r for r in reports if r["pid"] != reports[0]["pid"]]
    assert restarted and restarted[0]["epoch"] == newest + 1 and restarted[0]["training_iteration"] == 1, reports
    # the other trials ran once, each in one process
    for trial in set(board["trial_id"]) - {target["trial"]}:
        pids = {json.loads(line)["pid"] for line in (experiment / f"trial_{trial}" / "result.json").open()}
        assert len(pids) == 1, trial
    assert len(list(runs.glob("train-*"))) == trials
    assert all(_newest(r) == SEARCH_EPOCHS for r in runs.glob("train-*"))
    for name, files in finished.items():  # finished before the loss: nothing rewritten since
        now = {p: p.read_bytes() for p in sorted((runs / name).rglob("*")) if p.is_file()}
        assert now.keys() == files.keys(), name
        # A finished trial's TensorBoard writer may still append its last events as it closes
        # (after the last checkpoint appeared): an events file may only have grown.
        assert all(now[p] == data if "tfevents" not in p.name else now[p].startswith(data)
                   for p, data in files.items()), name
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(study.trials) == trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    row.recovered(f"survived: the lost trial resumed at epoch {newest} on the head; {trials} of {trials} "
                  f"complete, {len(finished)} finished trial(s) untouched", recovered)
