"""SLURM launch scripts: shell helpers (fast) and slurm/tune.sh in simulated one- and two-node
allocations (slow): `srun` and `scontrol` are replaced by the stand-ins in tests/slurm_shims;
two nodes are two network namespaces on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from hpe_ray.search.results import load_trials
from test_tune import TINY_SPACE, write_space, make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
SHIMS = Path(__file__).resolve().parent / "slurm_shims"
VENV_BIN = Path(sys.executable).parent
LIBRARY = REPO / "slurm" / "ray_cluster.sh"


def _bash(script: str, env: dict | None = None) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", ["tune.sh", "train.sh", "ray_cluster.sh"])
def test_scripts_parse(name):
    subprocess.run(["bash", "-n", str(REPO / "slurm" / name)], check=True)


@pytest.mark.parametrize("name", ["tune.sh", "train.sh"])
def test_batch_scripts_ask_for_the_usr1_warning(name):
    text = (REPO / "slurm" / name).read_text()
    assert "#SBATCH --signal=B:USR1@600" in text
    assert "#SBATCH --time=" in text and "#SBATCH --nodes=" in text


def test_ports_are_distinct_within_a_job_and_between_neighbouring_jobs():
    ports = {job: [int(p) for p in _bash(f"source {LIBRARY}; ray_job_ports {job}").split()]
             for job in (4711, 4712, 4911)}
    first = ports[4711]
    assert len(first) == 11 and len(set(first)) == 11
    assert all(20000 <= p < 60000 for p in first)
    # worker port range of job 4711 ends below the first port of job 4712
    assert first[-1] < ports[4712][0]
    # ids 200 apart share the ports (the documented limit)
    assert ports[4911] == first


def test_active_nodes_are_counted_from_ray_status(tmp_path):
    fake_ray = tmp_path / "ray"
    fake_ray.write_text("#!/bin/bash\ncat <<'EOF'\n======== Autoscaler status ========\nNode status\n"
                        "---------------------------------------------------------------\nActive:\n"
                        " 1 node_5278512f88\n 1 node_9a01be\nPending:\n 1 node_pending\n"
                        "Recent failures:\n (no failures)\nEOF\n")
    fake_ray.chmod(0o755)
    assert _bash(f"source {LIBRARY}; count_active_nodes 1.2.3.4:5", {"RAY": str(fake_ray)}).strip() == "2"


def _simulated_allocation(job_id: int) -> dict[str, str]:
    return {"PATH": f"{SHIMS}:{VENV_BIN}:{os.environ['PATH']}", "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1", "SLURM_CPUS_ON_NODE": "2",
            "SLURM_SUBMIT_DIR": str(REPO), "HPE_RAY": f"{sys.executable} -m hpe_ray",
            "RAY": str(VENV_BIN / "ray")}


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def finished_trials(experiment: Path) -> list[Path]:
    """result.json files of the trials Tune's saved state lists as complete or stopped early."""
    return [experiment / f"trial_{t.trial_id}" / "result.json" for t in load_trials(experiment)
            if t.status in ("complete", "stopped early")]


@pytest.mark.slow
def test_tune_sh_saves_on_usr1_and_a_resubmission_finishes_the_search(tmp_path):
    """The walltime path: USR1 to the batch shell -> Tune saves -> the job ends cleanly ->
    the same job again (with --resume) finishes the search, keeping the finished trials."""
    data = make_tiny_dataset(tmp_path / "data")
    # One trial at a time, each lasting seconds: once the second trial's run folder exists, Tune
    # has finished the first (its result reaches storage only when the search saves), and the
    # third cannot have finished yet.
    base = {**TINY_SPACE["base"], "train": {**TINY_SPACE["base"]["train"], "epochs": 10, "steps_per_epoch": 100,
                                                "batch_size": 16}}
    space = write_space(tmp_path, {**TINY_SPACE, "base": base, "search_settings": {
        **TINY_SPACE["search_settings"], "num_samples": 3, "max_concurrent": 1, "scheduler": "none"}}, "tiny.yaml")
    experiment = tmp_path / "runs" / "slurm"
    job_id = 100_000 + os.getpid() % 100_000
    command = ["bash", str(REPO / "slurm" / "tune.sh"), "--space", str(space), "--data", str(data),
               "--storage", str(tmp_path / "runs"), "--name", "slurm", "--resume"]
    env = {**os.environ, **_simulated_allocation(job_id)}

    job = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((experiment / "train_runs").glob("train-*"))) < 2:
            assert job.poll() is None and time.monotonic() < deadline, "the second trial never started"
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@600` sends
        output = job.communicate(timeout=180)[0]
    finally:
        job.kill()
    assert job.returncode == 3, output[-4000:]  # unfinished: saved, resumable (EXIT_UNFINISHED)
    assert "USR1: asking the driver to save and stop" in output
    assert "unfinished: run it again with --resume" in output
    assert "Ray cluster stopped" in output
    assert re.search(r"Ray dashboard: http://[0-9.]+:\d+ ", output) and "ssh -N -L " in output
    time.sleep(2)
    assert _processes_mentioning(f"/tmp/ray_{job_id}") == [], "Ray processes of the job were left running"
    finished = finished_trials(experiment)
    assert 1 <= len(finished) < 3
    before = {path: path.read_bytes() for path in finished}

    resubmitted = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resubmitted.returncode == 0, resubmitted.stdout[-4000:] + resubmitted.stderr[-4000:]
    board = pd.read_csv(experiment / "leaderboard.csv")
    assert len(board) == 3 and board["trial_id"].is_unique
    assert set(board["status"]) <= {"complete", "stopped early"}
    assert all(path.read_bytes() == text for path, text in before.items())
    assert len(list((experiment / "train_runs").iterdir())) == 3
    assert _processes_mentioning(f"/tmp/ray_{job_id}") == []
    # the resubmission continued the stored Optuna study: every trial in it once, with its result
    study = optuna.load_study(study_name="slurm", storage=f"sqlite:///{experiment / 'optuna.db'}")
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(values) == pytest.approx(sorted(board["val_mpjpe"]))


@pytest.fixture
def netns_nodes():
    """Two simulated nodes: network namespaces on a bridge, each with its own address (root and
    iproute2 needed). Yields (names, addresses); removed afterwards."""
    tag = os.getpid() % 200
    names = [f"hpe{tag}n{i}" for i in (1, 2)]
    addresses = [f"10.231.{tag}.{i}" for i in (1, 2)]
    bridge = f"hpe{tag}br"
    setup = [f"ip link add {bridge} type bridge", f"ip addr add 10.231.{tag}.254/24 dev {bridge}",
             f"ip link set {bridge} up"]
    for i, (name, address) in enumerate(zip(names, addresses), 1):
        setup += [f"ip netns add {name}", f"ip link add hpe{tag}v{i} type veth peer name eth0 netns {name}",
                  f"ip link set hpe{tag}v{i} master {bridge} up",
                  f"ip netns exec {name} ip addr add {address}/24 dev eth0",
                  f"ip netns exec {name} ip link set eth0 up", f"ip netns exec {name} ip link set lo up"]
    teardown = [f"ip netns del {name}" for name in names] + [f"ip link del hpe{tag}v{i}" for i in (1, 2)] + [
        f"ip link del {bridge}"]
    try:
        made = subprocess.run(["bash", "-ec", "\n".join(setup)], capture_output=True, text=True)
        if made.returncode and os.environ.get("HPE_RAY_REQUIRE_NETNS") != "1":
            pytest.skip(f"cannot make network namespaces here (root and iproute2 needed): {made.stderr.strip()}")
        assert made.returncode == 0, made.stderr
        yield names, addresses
    finally:
        for command in teardown:
            subprocess.run(command.split(), capture_output=True)


@pytest.mark.slow
def test_tune_sh_spans_a_two_node_allocation(tmp_path, netns_nodes):
    """slurm/tune.sh in a simulated two-node allocation: each node a network namespace with its
    own address and its own /tmp/ray_JOB (same ports and temp dir on every node, as on a real
    cluster); one trial runs on each node and the job leaves no Ray process behind."""
    names, addresses = netns_nodes
    data = make_tiny_dataset(tmp_path / "data")
    # 1 CPU per node and per trial (0.5 for the trial process, 0.5 for its one worker's share).
    space = write_space(tmp_path, {**TINY_SPACE, "base": {**TINY_SPACE["base"], "scaling": {
        "workers": 1, "cpus_per_worker": 0.5}}, "search_settings": {
        **TINY_SPACE["search_settings"], "num_samples": 2, "max_concurrent": 2, "scheduler": "none",
        "trial_cpus": 0.5}}, "two.yaml")
    job_id = 300_000 + os.getpid() % 100_000
    env = {**os.environ, **_simulated_allocation(job_id), "SLURM_JOB_NODELIST": ",".join(names),
           "SLURM_NNODES": "2", "SLURM_CPUS_ON_NODE": "1", "SLURM_SHIM_NETNS": " ".join(names)}
    # The batch shell runs on the first node, as sbatch runs it.
    try:
        job = subprocess.run(["ip", "netns", "exec", names[0], "bash", str(REPO / "slurm" / "tune.sh"),
                              "--space", str(space), "--data", str(data), "--storage", str(tmp_path / "runs"),
                              "--name", "two"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
        time.sleep(2)
        leftovers = _processes_mentioning(f"/tmp/ray_{job_id}")
    finally:  # a job killed by the timeout cannot stop its cluster: do it here
        for pid in _processes_mentioning(f"/tmp/ray_{job_id}"):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "--lazy", f"/tmp/ray_{job_id}"], capture_output=True)
        shutil.rmtree(f"/tmp/ray_{job_id}", ignore_errors=True)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-4000:]
    assert f"Ray head on {names[0]} ({addresses[0]}:" in output and "Ray cluster: 2 node(s) up" in output
    assert f"Ray dashboard: http://{addresses[0]}:" in output
    board = pd.read_csv(tmp_path / "runs" / "two" / "leaderboard.csv")
    assert len(board) == 2 and board["val_mpjpe"].notna().all()
    node_ips = {json.loads(path.read_text().splitlines()[-1])["node_ip"]
                for path in (tmp_path / "runs" / "two").glob("trial_*/result.json")}
    assert node_ips == set(addresses), node_ips
    assert "Ray cluster stopped" in output and leftovers == [], "Ray processes of the job were left running"
