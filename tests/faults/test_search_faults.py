"""Faults of a search (`hpe-ray tune` on a local Ray cluster, trials in their own processes)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from faults.kit import hpe, start_hpe, wait_for, write_yaml

pytestmark = pytest.mark.slow


def _space(tmp_path: Path, data: Path, trials: int = 3) -> Path:
    """Trials one at a time, each a few seconds, so an interruption lands inside the search."""
    from test_tune import TINY_SPACE

    base = {**TINY_SPACE["base"], "train": {**TINY_SPACE["base"]["train"], "epochs": 4, "steps_per_epoch": 60,
                                                "batch_size": 64}}
    return write_yaml(tmp_path / "space.yaml", {**TINY_SPACE, "base": base, "search_settings": {
        **TINY_SPACE["search_settings"], "num_samples": trials, "max_concurrent": 1, "scheduler": "none"}})


def _finished(experiment: Path) -> dict[str, bytes]:
    """result.json of the trials Tune's saved state lists as finished, by path."""
    from hpe_ray.search.results import load_trials

    return {str(experiment / f"trial_{t.trial_id}" / "result.json"):
            (experiment / f"trial_{t.trial_id}" / "result.json").read_bytes()
            for t in load_trials(experiment) if t.status in ("complete", "stopped early")}


PROMISE = ("exit 3 (unfinished, saved); `--resume` finishes the budget, keeps every finished trial's results "
           "byte for byte, and the stored Optuna study holds each trial once")


def test_an_interrupted_search_exits_unfinished_and_resumes_keeping_finished_trials(tmp_path, fault_data, fault):
    """One search of 3 trials interrupted twice (Ray paid once per start, not per fault): during
    the second trial, then, resumed, between trials; resumed again, it finishes."""
    stages = {"during a trial": fault("`tune` interrupted during a trial", "SIGINT to the driver during a trial "
                                      "(the second trial's run folder holds a checkpoint)", PROMISE),
              "between trials": fault("`tune` interrupted between trials", "SIGINT to the resumed driver between "
                                      "trials (the third trial's run folder has just appeared)", PROMISE)}
    experiment = tmp_path / "runs" / "faulty"
    args = ["tune", "--space", str(_space(tmp_path, fault_data)), "--data", str(fault_data),
            "--storage", str(tmp_path / "runs"), "--name", "faulty", "--resume"]
    runs = experiment / "train_runs"

    def trial_folders() -> list[Path]:
        return sorted(runs.glob("train-*"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []

    reached = {"during a trial": lambda: len(trial_folders()) >= 2 and any(
                   trial_folders()[1].glob("checkpoint_epoch_*/metrics.json")),
               "between trials": lambda: len(trial_folders()) >= 3}
    kept, started = {}, None
    for stage, row in stages.items():
        search = start_hpe(*args, cwd=tmp_path)
        try:
            wait_for(reached[stage], search, stage)
            search.send_signal(signal.SIGINT)
            output = search.communicate(timeout=180)[0]
        finally:
            search.kill()
        assert search.returncode == 3, output[-4000:]
        assert "the search is unfinished: run it again with --resume to continue" in output
        finished = _finished(experiment)
        assert all(finished[path] == text for path, text in kept.items())  # earlier finished trials untouched
        assert 1 <= len(finished) < 3, finished.keys()
        if started is not None:  # this run was the resumed one: the previous stage recovered in it
            stages["during a trial"].recovered(f"survived: {len(kept)} finished trial(s) kept, the resumed search "
                                               "went on to the next trial", time.monotonic() - started)
        kept, started = finished, time.monotonic()

    resumed = hpe(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    board = pd.read_csv(experiment / "leaderboard.csv")
    assert len(board) == 3 and board["trial_id"].is_unique and board["val_mpjpe"].notna().all()
    after = _finished(experiment)
    assert all(after[path] == text for path, text in kept.items())
    study = optuna.load_study(study_name="faulty", storage=f"sqlite:///{experiment / 'optuna.db'}")
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(values) == pytest.approx(sorted(board["val_mpjpe"]))
    stages["between trials"].recovered(f"survived: {len(kept)} finished trial(s) kept, 3 of 3 after --resume",
                                       time.monotonic() - started)


def test_a_second_search_on_the_same_folder_is_refused(tmp_path, fault_data, fault):
    row = fault("two searches on one experiment folder", "a second `tune --resume` of the same --name while the "
                "first runs", "the second exits 2 at once with one line naming the folder and the holder; the "
                "first finishes every trial")
    experiment = tmp_path / "runs" / "shared"
    args = ["tune", "--space", str(_space(tmp_path, fault_data, trials=2)), "--data", str(fault_data),
            "--storage", str(tmp_path / "runs"), "--name", "shared", "--resume"]
    first = start_hpe(*args, cwd=tmp_path)
    try:
        lock = experiment / ".search.lock"
        wait_for(lambda: lock.is_file() and bool(lock.read_text()), first, "the first search to take the folder")
        started = time.monotonic()
        second = hpe(*args, cwd=tmp_path, timeout=120)
        refused_in = time.monotonic() - started
        output = first.communicate(timeout=600)[0]
    finally:
        first.kill()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another search is running on this experiment (pid {first.pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, output[-4000:]
    assert len(pd.read_csv(experiment / "leaderboard.csv")) == 2
    row.recovered(f"failed clearly: refused in {refused_in:.1f} s; the first search finished", None)
