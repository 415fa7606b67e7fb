"""Helpers of the fault-injection suite: configs, commands, waiting, checkpoint epochs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

PYTHON = sys.executable


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def train_config(tmp_path: Path, data_dir: Path, epochs: int = 4, **sections) -> Path:
    """A one-worker lifting run whose epochs take a second or two on this machine, so a signal
    lands between checkpoints."""
    tree = {"data": {"dir": str(data_dir)},
            "train": {"epochs": epochs, "steps_per_epoch": 100, "batch_size": 256, "val_max_samples": 512,
                      "eval_hypotheses": 2, "tensorboard_images_every": 0},
            "model": {"hidden": 128, "blocks": 2},
            "scaling": {"workers": 1, "cpus_per_worker": 1},
            "run": {"name": "fault", "storage": str(tmp_path / "runs"), "checkpoints_to_keep": 2}}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return write_yaml(tmp_path / "train.yaml", tree)


def hpe(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "hpe_ray", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_hpe(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "hpe_ray", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}:\n{process.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def complete_epochs(run_dir: Path) -> list[int]:
    """Epochs of the run's complete checkpoints, oldest first."""
    from hpe_ray.training.checkpoint import run_checkpoints

    return [int(metrics["epoch"]) for metrics, _ in run_checkpoints(run_dir)]
