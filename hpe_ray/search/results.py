"""Search results read back from an experiment directory, without Ray: trials, leaderboard, best.

What Ray Tune leaves in an experiment directory and what is read here:

    experiment_state-<time>.json   every trial's state (id, status, sampled values, directory);
                                   the newest file holds the latest
    trial_<id>/result.json         one JSON line per report (epoch), nested keys joined by "/"
    trial_<id>/progress.csv        the same reports, read when result.json is missing

Pickled files (tuner.pkl, searcher state) are never opened, so results can be read while a
search runs, after it was interrupted, or on a machine without the code that ran it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpe_ray.config import Config, ConfigError
from hpe_ray.search.space import ASHA_METRIC, SEARCH_INFO, SPACE_COPY, load_space, trial_config

if TYPE_CHECKING:
    import pandas as pd

EXPERIMENT_STATE = "experiment_state-*.json"
"""Tune's snapshots of the experiment; the timestamped names sort by time."""

logger = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    trial_id: str
    status: str
    """complete | stopped early (ASHA) | error | unfinished (the search was interrupted)."""
    params: dict[str, Any]
    """The sampled values, by dotted config key."""
    config: Config | None
    """None when the sampled values do not make a valid Config (the trial failed)."""
    history: "pd.DataFrame"
    """One row per reported epoch: epoch, val_mpjpe, losses, beta, lr, checkpoint_path, ..."""


@dataclass(frozen=True)
class SearchResult:
    experiment_dir: Path
    trials: list[TrialRecord]
    leaderboard: "pd.DataFrame"
    best_config: Path | None
    best_checkpoint: str | None
    finished: bool
    """False when the search was interrupted; run it again with resume."""

    def describe(self) -> str:
        board = self.leaderboard
        counts = board["status"].value_counts()
        lines = [f"{self.experiment_dir}: {len(board)} trials ("
                 + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")"]
        if self.best_config is not None:
            best = board.iloc[0]
            lines += [f"best trial {best['trial_id']}: val MPJPE {best['val_mpjpe']:.1f} mm, "
                      f"PA-MPJPE {best['val_pa_mpjpe']:.1f} mm at epoch {int(best['best_epoch'])}",
                      f"best config: {self.best_config}",
                      f"best checkpoint: {self.best_checkpoint}"]
        if not self.finished:
            lines.append("the search is unfinished: run it again with --resume to continue")
        return "\n".join(lines)


def _trial_status(tune_status: str, epochs_run: int, epochs_planned: int) -> str:
    if tune_status == "ERROR":
        return "error"
    if tune_status != "TERMINATED":
        return "unfinished"
    return "complete" if epochs_run >= epochs_planned else "stopped early"


def _newest_experiment_state(experiment_dir: Path) -> dict[str, Any]:
    names = sorted(p.name for p in experiment_dir.glob(EXPERIMENT_STATE))
    if not names:
        raise ValueError(f"{experiment_dir}: no {EXPERIMENT_STATE} file; not a Ray Tune experiment directory")
    # plain JSON: the objects Tune pickled into it stay hex text, never unpickled
    return json.loads((experiment_dir / names[-1]).read_text(encoding="utf-8"))


def _trial_history(trial_dir: Path) -> "pd.DataFrame":
    """The trial's reports, one row per epoch; empty when it reported nothing readable."""
    import pandas as pd

    result_json, progress_csv = trial_dir / "result.json", trial_dir / "progress.csv"
    try:
        if result_json.is_file():
            text = result_json.read_text(encoding="utf-8").rstrip("\n")
            return pd.json_normalize([json.loads(line) for line in text.split("\n")] if text else [], sep="/")
        if progress_csv.is_file():
            return pd.read_csv(progress_csv, dtype={"trial_id": str})
    except ValueError as err:  # a line cut short when the search was killed while writing it
        logger.warning("%s: cannot read the trial's reports: %r", trial_dir, err)
    return pd.DataFrame()


def load_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of an experiment directory, with its per-epoch history."""
    import pandas as pd

    experiment_dir = Path(experiment_dir).resolve()
    base = load_space(experiment_dir / SPACE_COPY).base.model_dump()
    data_dir = json.loads((experiment_dir / SEARCH_INFO).read_text())["data_dir"]
    records = []
    for trial_json, _ in _newest_experiment_state(experiment_dir)["trial_data"]:
        trial = json.loads(trial_json)
        params = dict(trial["evaluated_params"])
        try:
            cfg = trial_config(base, params, data_dir)
        except ConfigError:  # values that do not combine into a valid Config: the trial failed at once
            cfg = None
        logdir = trial["relative_logdir"]  # None until the trial starts
        history = _trial_history(experiment_dir / logdir) if logdir else pd.DataFrame()
        epochs_run = int(history["epoch"].max()) if "epoch" in history else 0
        planned = cfg.train.epochs if cfg else 0
        records.append(TrialRecord(trial_id=trial["trial_id"], params=params, config=cfg, history=history,
                                   status=_trial_status(trial["status"], epochs_run, planned)))
    return records


def leaderboard(trials: list[TrialRecord]) -> "pd.DataFrame":
    """One row per trial, best first: its best epoch's val_mpjpe and val_pa_mpjpe (mm).

    Columns: trial_id, status, epochs, best_epoch, val_mpjpe, val_pa_mpjpe, then the
    sampled values by dotted key. Trials without results come last.
    """
    import pandas as pd

    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status, "epochs": 0,
                               "best_epoch": math.nan, "val_mpjpe": math.nan, "val_pa_mpjpe": math.nan}
        if ASHA_METRIC in t.history:
            best = t.history.loc[t.history[ASHA_METRIC].idxmin()]
            row.update(epochs=int(t.history["epoch"].max()), best_epoch=int(best["epoch"]),
                       val_mpjpe=float(best[ASHA_METRIC]), val_pa_mpjpe=float(best["val_pa_mpjpe"]))
        rows.append({**row, **t.params})
    board = pd.DataFrame(rows).sort_values(ASHA_METRIC, na_position="last", kind="stable")
    board.index = pd.RangeIndex(1, len(board) + 1, name="rank")
    return board


def best_checkpoint(trial: TrialRecord) -> str | None:
    """The trial's lowest-error checkpoint still on disk (older ones may have been rotated out)."""
    if "checkpoint_path" not in trial.history:
        return None
    saved = trial.history.dropna(subset=["checkpoint_path"])
    saved = saved[[Path(p).is_dir() for p in saved["checkpoint_path"]]]
    if saved.empty:
        return None
    return str(saved.loc[saved[ASHA_METRIC].idxmin(), "checkpoint_path"])


def markdown_table(board: "pd.DataFrame") -> str:
    """A GitHub Markdown table; floats with 4 significant digits."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    header = [board.index.name or "", *map(str, board.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in board.iterrows():
        lines.append("| " + " | ".join([cell(index), *map(cell, row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


def summarize_search(experiment_dir: str | Path) -> SearchResult:
    """Write leaderboard.csv/.md, best_config.yaml and best_checkpoint.txt of an experiment.

    best_config.yaml is a complete Config (`hpe-ray train --config` takes it unchanged): the
    base config, the best trial's values, the data directory, and run.name "best-<experiment>".
    """
    experiment_dir = Path(experiment_dir).resolve()
    trials = load_trials(experiment_dir)
    board = leaderboard(trials)
    board.to_csv(experiment_dir / "leaderboard.csv")
    (experiment_dir / "leaderboard.md").write_text(markdown_table(board))

    config_path = checkpoint = None
    if len(board) and not math.isnan(board.iloc[0][ASHA_METRIC]):
        best = next(t for t in trials if t.trial_id == board.iloc[0]["trial_id"])
        config_path = experiment_dir / "best_config.yaml"
        best.config.with_overrides({"run.name": f"best-{experiment_dir.name}"}).to_yaml(config_path)
        checkpoint = best_checkpoint(best)
        (experiment_dir / "best_checkpoint.txt").write_text(f"{checkpoint or ''}\n")

    info_path = experiment_dir / SEARCH_INFO
    planned = json.loads(info_path.read_text())["num_samples"] if info_path.is_file() else len(trials)
    finished = len(trials) >= planned and not (board["status"] == "unfinished").any()
    return SearchResult(experiment_dir=experiment_dir, trials=trials, leaderboard=board, best_config=config_path,
                        best_checkpoint=checkpoint, finished=finished)
