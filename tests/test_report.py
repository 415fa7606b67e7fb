"""Report: the study rebuilt from a leaderboard, parameter importance, and the figures (fast).

The report of a real search directory (`hpe-ray report`) is checked in test_tune.py, next to
the search that makes the directory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpe_ray.config import Config
from hpe_ray.report import param_importances, plot_best_trial, plot_curves, plot_importance, rebuilt_study
from hpe_ray.search.results import TrialRecord, leaderboard

DISTRIBUTIONS = {"model.latent_dim": CategoricalDistribution([16, 32, 64]),
                 "train.lr": FloatDistribution(1e-4, 1e-2, log=True),
                 "model.blocks": IntDistribution(1, 4)}


def _board(n: int, seed: int = 0) -> pd.DataFrame:
    """n trials whose error depends on the learning rate only (mm)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -2))
        rows.append({"trial_id": f"t{i}", "val_mpjpe": 50.0 + 30.0 * abs(np.log10(lr) + 3),
                     "model.latent_dim": int(rng.choice([16, 32, 64])), "train.lr": lr,
                     "model.blocks": int(rng.integers(1, 5))})
    return pd.DataFrame(rows)


def test_rebuilt_study_holds_the_trials_with_results():
    board = _board(5)
    board.loc[2, "val_mpjpe"] = np.nan  # a trial without results is left out
    study = rebuilt_study(board, DISTRIBUTIONS)
    assert len(study.trials) == 4
    assert study.best_value == pytest.approx(board["val_mpjpe"].min())
    best_row = board.loc[board["val_mpjpe"].idxmin()]
    assert study.best_params == {key: best_row[key] for key in DISTRIBUTIONS}
    assert type(study.best_params["model.latent_dim"]) is int


def test_importance_finds_the_parameter_that_decides():
    importances = param_importances(rebuilt_study(_board(40), DISTRIBUTIONS))
    assert set(importances) == set(DISTRIBUTIONS)
    assert max(importances, key=importances.get) == "train.lr"
    assert sum(importances.values()) == pytest.approx(1.0)


def test_importance_needs_two_trials():
    assert param_importances(rebuilt_study(_board(1), DISTRIBUTIONS)) == {}


def _trial(trial_id: str, val_mpjpe: list[float]) -> TrialRecord:
    epochs = range(1, len(val_mpjpe) + 1)
    history = pd.DataFrame({"epoch": epochs, "val_mpjpe": val_mpjpe, "val_pa_mpjpe": np.array(val_mpjpe) * 0.7,
                            "val_mpjpe_best_of_k": np.array(val_mpjpe) * 0.9,
                            "loss_pose2d_to_pose3d": [1.0 / e for e in epochs], "kl": [0.5] * len(val_mpjpe),
                            "beta": [1e-3 * e for e in epochs]})
    return TrialRecord(trial_id, "complete", {"train.lr": 1e-3}, Config(), history)


def test_figures_are_written(tmp_path):
    trials = [_trial("a", [120.0, 100.0, 90.0]), _trial("b", [130.0]),
              TrialRecord("c", "unfinished", {}, Config(), pd.DataFrame())]
    best = leaderboard(trials).iloc[0]["trial_id"]
    paths = [plot_curves(trials, best, tmp_path / "curves.png"),
             plot_importance({"train.lr": 0.8, "model.latent_dim": 0.2}, tmp_path / "importance.png"),
             plot_best_trial(trials[0], tmp_path / "best_trial.png")]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
