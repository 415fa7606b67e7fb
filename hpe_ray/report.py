"""Search report: the leaderboard of an experiment directory and its figures (PNG).

    curves.png       validation MPJPE per trial over epochs (the best trial drawn on top)
    importance.png   parameter importance (Optuna, on a study rebuilt from the trials)
    parallel.png     Optuna's parallel coordinates: every trial's values against its error
    slice.png        Optuna's slice plot: the error against each parameter
    best_trial.png   the best trial's losses, validation errors and beta over epochs

Everything is read back from the directory Ray Tune wrote, so a report can be made while a
search runs, after it was interrupted, or on another machine.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution

from hpe_ray.search.results import TrialRecord, markdown_table, summarize_search
from hpe_ray.search.space import ASHA_METRIC, SPACE_COPY, load_space


def rebuilt_study(board: pd.DataFrame, distributions: dict[str, BaseDistribution]) -> optuna.Study:
    """An Optuna study holding each trial with a result: its sampled values and best val_mpjpe."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for _, row in board.dropna(subset=[ASHA_METRIC]).iterrows():
        params = {key: _plain(row[key]) for key in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(row[ASHA_METRIC])))
    return study


def _plain(value):
    """pandas hands back numpy scalars; Optuna checks values against the distributions."""
    return value.item() if hasattr(value, "item") else value


def param_importances(study: optuna.Study) -> dict[str, float]:
    """{dotted key: importance}, summing to 1; empty with fewer than two trials with results."""
    if len(study.trials) < 2:
        return {}
    return optuna.importance.get_param_importances(study)


def plot_optuna(study: optuna.Study, kind: str, path: Path) -> Path:
    """Optuna's own matplotlib figure of the study: kind "parallel" or "slice"."""
    from optuna.visualization import matplotlib as optuna_plots

    draw = {"parallel": optuna_plots.plot_parallel_coordinate, "slice": optuna_plots.plot_slice}[kind]
    # Optuna switches the global style to ggplot, and logs every categorical axis at INFO.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw(study, target_name=f"{ASHA_METRIC} (mm)")
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        for ax in fig.axes:  # log axes label every minor tick, on top of each other
            ax.xaxis.set_minor_formatter(NullFormatter())
        fig.set_size_inches(3.5 * len(study.best_trial.params) + 1.5 if kind == "slice" else 9, 4.5)
        fig.savefig(path, dpi=120, bbox_inches="tight")  # tight_layout would squash Optuna's colour bar
    plt.close(fig)
    return path


def plot_curves(trials: list[TrialRecord], best_trial_id: str | None, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        if ASHA_METRIC not in t.history:
            continue
        best = t.trial_id == best_trial_id
        ax.plot(t.history["epoch"], t.history[ASHA_METRIC], marker="o", markersize=3,
                color="tab:red" if best else "0.6", linewidth=2.0 if best else 1.0, zorder=3 if best else 2,
                label=f"best: {t.trial_id}" if best else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MPJPE (mm)")
    ax.set_title("validation MPJPE per trial (ended lines: stopped by ASHA)")
    if best_trial_id is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_importance(importances: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(importances) + 1.5))
    names = list(importances)[::-1]  # most important on top
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for validation MPJPE")
    ax.set_title("parameter importance")
    return _save(fig, path)


def plot_best_trial(trial: TrialRecord, path: Path) -> Path:
    h = trial.history
    fig, (losses, errors, beta) = plt.subplots(1, 3, figsize=(14, 4))
    for column in [c for c in h.columns if c.startswith("loss_")] + ["kl"]:
        if column in h:
            losses.plot(h["epoch"], h[column], marker="o", markersize=3, label=column)
    losses.set_title("training losses")
    for column in (ASHA_METRIC, "val_pa_mpjpe", "val_mpjpe_best_of_k"):
        if column in h:
            errors.plot(h["epoch"], h[column], marker="o", markersize=3, label=column)
    errors.set_ylabel("mm")
    errors.set_title("validation errors")
    beta.plot(h["epoch"], h["beta"], marker="o", markersize=3)
    beta.set_title("beta (KL weight) at the end of the epoch")
    for ax in (losses, errors, beta):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    losses.legend()
    errors.legend()
    fig.suptitle(f"best trial {trial.trial_id}")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_report(experiment_dir: str | Path) -> list[Path]:
    """Print the leaderboard and write it with the figures into the experiment directory.

    Returns the written paths: leaderboard.csv, leaderboard.md, best_config.yaml and
    best_checkpoint.txt (when a trial has results), then the PNG figures.
    """
    experiment_dir = Path(experiment_dir).resolve()
    result = summarize_search(experiment_dir)
    board = result.leaderboard
    print(markdown_table(board))
    print(result.describe())
    paths = [experiment_dir / "leaderboard.csv", experiment_dir / "leaderboard.md"]
    if result.best_config is None:
        return paths
    paths += [result.best_config, experiment_dir / "best_checkpoint.txt"]

    trials = result.trials
    best_id = board.iloc[0]["trial_id"]
    paths.append(plot_curves(trials, best_id, experiment_dir / "curves.png"))
    study = rebuilt_study(board, load_space(experiment_dir / SPACE_COPY).params)
    if importances := param_importances(study):
        paths.append(plot_importance(importances, experiment_dir / "importance.png"))
        paths += [plot_optuna(study, kind, experiment_dir / f"{kind}.png") for kind in ("parallel", "slice")]
    best = next(t for t in trials if t.trial_id == best_id)
    paths.append(plot_best_trial(best, experiment_dir / "best_trial.png"))
    return paths
