"""Checkpoints: one torch file with everything needed to resume or evaluate, plus side files.

A checkpoint directory holds

    checkpoint.pt   torch.save of a dict of plain types and tensors (loadable with weights_only)
    config.yaml     the run's Config, for humans and for `load_config`
    stats.json      the NormStats the model was trained with
    metrics.json    the metrics reported with this checkpoint (lets a run directory be ranked
                    without unpickling every checkpoint)

Ray Train copies such a directory into `<storage>/<run name>/checkpoint_<timestamp>/`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpe_ray.config import Config, stored_config
from hpe_ray.models import CrossModalVAE, build_model, unwrap_model
from hpe_ray.normalization import NormStats

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
UNREADABLE_DIR = "unreadable"  # where set_aside_unreadable moves checkpoints that do not load
RANKING_METRIC = "val_mpjpe"

logger = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode, and what was saved with it.

    state: the raw saved dict (optimizer, scheduler, extra) for resuming.
    """

    model: CrossModalVAE
    cfg: Config
    stats: NormStats
    epoch: int
    metrics: dict[str, float]
    state: dict[str, Any]
    path: Path


def save_checkpoint(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, stats: NormStats, cfg: Config,
                    epoch: int, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory (created if missing); returns the path of checkpoint.pt.

    epoch: the number of completed epochs (the reported `epoch`; training resumes at this
    0-based epoch index). extra: plain values to resume with (global step, running best, ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "stats": stats.to_dict(),
        "config": cfg.model_dump(),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "extra": dict(extra or {}),
    }
    path = directory / CHECKPOINT_FILE
    # Serialised in memory first: torch.save on a full disk fails with an opaque RuntimeError
    # and leaves a truncated file; a plain write reports errno and path, and the rename keeps a
    # reader from ever seeing half a file.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())
    cfg.to_yaml(directory / "config.yaml")
    (directory / "stats.json").write_text(json.dumps(stats.to_dict(), indent=1))
    (directory / METRICS_FILE).write_text(json.dumps({"epoch": int(epoch), **state["metrics"]}, indent=1))
    return path


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename; on failure
    (e.g. no space left) the temporary file is removed and the OSError names `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror} while writing", str(path)) from None


def load_checkpoint(path, map_location: str | torch.device = "cpu", fit_2d: float | None = None) -> LoadedCheckpoint:
    """Load a checkpoint and rebuild its model in eval mode.

    path: checkpoint.pt, a checkpoint directory (a Ray `Checkpoint` or its local path), or a
    run directory, from which the checkpoint with the lowest val_mpjpe is taken. fit_2d in
    [0, 1] replaces the stored model.fit_2d (None: keep it): it changes no weight.
    """
    file = resolve_checkpoint_file(path)
    state = read_checkpoint_state(file, map_location)
    cfg = stored_config(state["config"], origin=str(file))
    if fit_2d is not None:
        cfg = cfg.with_overrides({"model.fit_2d": fit_2d})
    model = build_model(cfg, load_pretrained=False)
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, cfg=cfg, stats=NormStats.from_dict(state["stats"]),
                            epoch=state["epoch"], metrics=state["metrics"], state=state, path=file)


def read_checkpoint_state(path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The saved dict of a checkpoint file or directory (for resuming: nothing is rebuilt)."""
    file = Path(path)
    if file.is_dir():
        file = file / CHECKPOINT_FILE
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for missing, truncated or foreign files
        raise ValueError(f"{file}: not a readable hpe-ray checkpoint ({_load_failure(err)})") from err
    missing = {"model", "optimizer", "scheduler", "stats", "config", "epoch", "metrics", "extra"} - set(state)
    if missing:
        raise ValueError(f"{file}: not an hpe-ray checkpoint, missing entries {sorted(missing)}")
    return state


def _load_failure(err: Exception) -> str:
    """What is wrong with the file, in one line. torch's own text runs over several lines and, for a
    file the weights-only unpickler refuses, advises weights_only=False, which would run code from
    the file: never pass that on; keep the unpickler's reason when torch gives one."""
    text = str(err).strip()
    if "weights_only" not in text:
        return text.splitlines()[0] if text else type(err).__name__
    reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[:1] if "WeightsUnpickler error:" in text else []
    return "the weights-only unpickler refused it" + (f": {reason[0]}" if reason else "")


def resolve_checkpoint_file(path) -> Path:
    """checkpoint.pt for a file, a checkpoint directory, or a run directory (best val_mpjpe)."""
    path = Path(getattr(path, "path", path))  # a ray.train.Checkpoint on the local filesystem
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    if path.is_dir():
        return best_checkpoint_dir(path) / CHECKPOINT_FILE
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")


def run_checkpoints(run_dir: str | Path) -> list[tuple[dict, Path]]:
    """(metrics, directory) of a run's complete checkpoints, oldest epoch first: directories that
    hold checkpoint.pt and a readable metrics.json (save_checkpoint writes it last; a copy cut
    short by a kill may lack it). Whether checkpoint.pt itself loads is checked on loading."""
    found = []
    for metrics_file in Path(run_dir).glob(f"*/{METRICS_FILE}"):
        if not (metrics_file.parent / CHECKPOINT_FILE).is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            continue
        found.append((metrics, metrics_file.parent))
    return sorted(found, key=lambda item: (int(item[0].get("epoch", -1)), item[1].name))


def best_checkpoint_dir(run_dir: str | Path) -> Path:
    """The checkpoint directory of a run with the lowest val_mpjpe (ties: the latest epoch).

    Checkpoints without a finite val_mpjpe rank last.
    """
    done = run_checkpoints(run_dir)
    if not done:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint directories (*/{CHECKPOINT_FILE} with "
                                f"{METRICS_FILE}) in this run")
    return min(done, key=lambda item: checkpoint_rank(item[0]))[1]


def latest_checkpoint_state(run_dir: str | Path, map_location: str | torch.device = "cpu"
                            ) -> tuple[dict[str, Any], Path] | None:
    """(state, directory) of the newest checkpoint of a run that loads, for resuming; None when
    there is none. A newer one that does not load (truncated, replaced) is skipped, and named."""
    for _, directory in reversed(run_checkpoints(run_dir)):
        try:
            return read_checkpoint_state(directory, map_location), directory
        except ValueError as err:
            logger.warning("%s: skipped; resuming from an earlier checkpoint", err)
    return None


def set_aside_unreadable(run_dir: str | Path) -> list[Path]:
    """Move each complete-looking checkpoint of a run whose checkpoint.pt does not load into
    run_dir/unreadable/ (a warning names both), and return the new paths. Kept for inspection,
    but no longer taken for a good checkpoint: by its metrics pruning would keep it as one of the
    best and delete good ones, and best_checkpoint_dir could pick it. Call it once per run
    start, in one process (ranks read concurrently)."""
    moved = []
    for _, directory in run_checkpoints(run_dir):
        try:
            read_checkpoint_state(directory)
        except ValueError as err:
            target = Path(run_dir) / UNREADABLE_DIR / directory.name
            if target.exists():  # the same epoch folder set aside before (fit's names repeat)
                target = target.with_name(f"{target.name}-{len(list(target.parent.iterdir()))}")
            target.parent.mkdir(exist_ok=True)
            directory.rename(target)
            logger.warning("%s: set aside as %s; resuming from an earlier checkpoint", err, target)
            moved.append(target)
    return moved


def prune_checkpoints(run_dir: str | Path, keep: int, protected: frozenset[str] = frozenset()) -> None:
    """Keep the `keep` best by val_mpjpe and the latest (what a resume needs); directories named
    in `protected` (e.g. those Ray Train's checkpoint list still holds) are never removed."""
    done = run_checkpoints(run_dir)
    if not done:
        return
    ranked = sorted(done, key=lambda item: checkpoint_rank(item[0]))
    kept = {directory for _, directory in ranked[:keep]} | {done[-1][1]}
    for _, directory in done:
        if directory not in kept and directory.name not in protected:
            shutil.rmtree(directory)


def checkpoint_rank(metrics: dict) -> tuple[float, int]:
    """Sort key of a checkpoint's metrics, best first: lowest val_mpjpe (missing or not finite:
    last), then the latest epoch."""
    error = float(metrics.get(RANKING_METRIC, math.inf))
    return (error if math.isfinite(error) else math.inf, -int(metrics.get("epoch", -1)))
