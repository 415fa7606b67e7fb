"""Protocol 1 and 2 tables per action for a checkpoint.

Errors are in mm over 17 joints with the root put back at zero, from the same prediction
function the train loop validates with (`hpe_ray.training.loop.batch_errors`). Averaging is
action-wise, as in the Human3.6M literature: frames are pooled per action (sub-actions merged,
all cameras), then "Average" is the unweighted mean over actions. Best of K takes, per frame,
the smallest error of K hypotheses sampled from the input-conditioned posterior.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpe_ray.data.stream import check_shard_sizes, load_pose_arrays, load_stats
from hpe_ray.metrics import POSE_ERRORS, base_action, mpjpe, pa_mpjpe, per_action_table, summarize_hypotheses
from hpe_ray.normalization import add_root, root_relative
from hpe_ray.training.checkpoint import LoadedCheckpoint, load_checkpoint
from hpe_ray.training.data import array_batches, eval_loader, to_device
from hpe_ray.training.loop import batch_errors

# Column of the tables -> key of the per-sample errors, with a K placeholder for best of K.
_COLUMNS = {"MPJPE (P1)": "mpjpe", "PA-MPJPE (P2)": "pa_mpjpe",
            "MPJPE best of {k} (P1)": "mpjpe_best_of_k", "PA-MPJPE best of {k} (P2)": "pa_mpjpe_best_of_k"}
AVERAGE_ROW = "Average (action-wise)"
AVERAGING_NOTE = ("Average: action-wise (frames pooled per action with sub-actions merged, then the "
                  "unweighted mean over actions). Errors in mm, 17 joints, root-relative.")


@dataclass
class EvalResult:
    """Per-sample errors (N,) in mm keyed like `batch_errors`, the action of each sample, and
    the per-action tables: column name -> {action: mean error, ..., "Average": ...}."""

    checkpoint: Path
    split: str
    modality: str
    hypotheses: int
    errors: dict[str, np.ndarray]
    actions: np.ndarray
    tables: dict[str, dict[str, float]]

    def hypothesis_summary(self) -> dict[str, float]:
        """`hpe_ray.metrics.summarize_hypotheses` of the per-sample values; empty for K = 1."""
        return summarize_hypotheses(self.errors) if self.hypotheses > 1 else {}


def evaluate_checkpoint(checkpoint, data_dir: str | Path, *, split: str = "test", hypotheses: int = 1,
                        modality: str = "pose2d", device: str | torch.device = "cpu", seed: int = 0,
                        fit_2d: float | None = None) -> EvalResult:
    """Evaluate a checkpoint (file, checkpoint directory or run directory) on one split.

    modality: the encoder to lift from, "pose2d" or "rgb". hypotheses: K for best of K; the
    best-of-K columns appear only for K > 1. seed fixes the sampled hypotheses. fit_2d: how far
    predictions from 2D are fitted to it, in [0, 1] (None: the model's model.fit_2d).
    """
    if hypotheses < 1:
        raise ValueError(f"hypotheses must be >= 1, got {hypotheses}")
    loaded = load_checkpoint(checkpoint, map_location=device, fit_2d=fit_2d)
    encoders, decoders = loaded.cfg.modalities
    if modality not in encoders or "pose3d" not in decoders:
        raise ValueError(f"{loaded.path}: the model cannot lift from {modality!r} to 3D "
                         f"(encoders {sorted(encoders)}, decoders {sorted(decoders)})")
    device = torch.device(device)
    # K = 1 reports the mean's Protocol 1 and 2 only: no sample to draw, no best-of-K to fit.
    names, drawn = (tuple(POSE_ERRORS), hypotheses) if hypotheses > 1 else (("mpjpe", "pa_mpjpe"), 0)
    errors: dict[str, list[np.ndarray]] = {}
    actions: list[str] = []
    # Seeded hypotheses without touching the caller's random state.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in _batches(loaded, data_dir, split, modality):
            batch = to_device(batch, device)
            for name, values in batch_errors(loaded.model, batch, modality, loaded.stats, drawn, names).items():
                errors.setdefault(name, []).append(values.cpu().numpy())
            actions += [base_action(str(a)) for a in batch["action"]]
    if not actions:
        raise ValueError(f"{data_dir}: split {split!r} has no samples to evaluate")
    per_sample = {name: np.concatenate(chunks) for name, chunks in errors.items()}
    columns = {title.format(k=hypotheses): key for title, key in _COLUMNS.items()
               if hypotheses > 1 or "best_of_k" not in key}
    tables = {title: per_action_table(per_sample[key], actions) for title, key in columns.items()}
    return EvalResult(checkpoint=loaded.path, split=split, modality=modality, hypotheses=hypotheses,
                      errors=per_sample, actions=np.asarray(actions), tables=tables)


def _batches(loaded: LoadedCheckpoint, data_dir: str | Path, split: str, modality: str) -> Iterable[dict]:
    """Batch dicts of the split: from pose arrays (no JPEG decoding) or, for RGB, the shards."""
    if modality == "rgb":
        return eval_loader(loaded.cfg, loaded.stats, split, str(data_dir))
    # The index is checked against the manifest when read; the shards it stands for by their size.
    check_shard_sizes(data_dir, split, on_error=loaded.cfg.data.on_error)
    arrays = load_pose_arrays(data_dir, split, on_error=loaded.cfg.data.on_error)
    return array_batches(arrays, loaded.stats, loaded.cfg.train.batch_size)


def _rows(result: EvalResult) -> list[list[str]]:
    """Header and one row per action, then Average; errors with one decimal."""
    frames = Counter(result.actions.tolist())
    actions = [a for a in next(iter(result.tables.values())) if a != "Average"]
    header = ["Action", "Frames", *result.tables]
    rows = [[a, str(frames[a]), *(f"{table[a]:.1f}" for table in result.tables.values())] for a in actions]
    rows.append([AVERAGE_ROW, str(len(result.actions)),
                 *(f"{table['Average']:.1f}" for table in result.tables.values())])
    return [header, *rows]


def format_table(result: EvalResult) -> str:
    """The Markdown table with a title line and the averaging note."""
    header, *rows = _rows(result)
    lines = [f"Evaluation of {result.checkpoint} on split {result.split!r} from {result.modality}",
             "", f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", AVERAGING_NOTE]
    if summary := result.hypothesis_summary():
        lines += ["", f"Hypotheses (K = {result.hypotheses}): spread {summary['spread_mm']:.1f} mm, bone-length "
                      f"spread {summary['bone_length_spread_mm']:.1f} mm, {100 * summary['coverage_90']:.0f}% of "
                      f"joints inside the 90% radius, Spearman(spread, error) {summary['spearman_spread_error']:.2f}."]
    return "\n".join(lines)


def write_tables(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """Write <split>_<modality>_k<K>.csv and .md into out_dir (created); returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result.split}_{result.modality}_k{result.hypotheses}"
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows(_rows(result))
    md_path.write_text(format_table(result) + "\n")
    return [csv_path, md_path]


def mean_pose_tables(data_dir: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """Protocol 1 and 2 per action, as `EvalResult.tables`, of the training split's mean
    root-relative pose predicted for every frame of `split`: the error of a model that ignores
    its input, the level a trained model must beat."""
    # stats.json holds the training split's mean root-relative pose: no need to read the split.
    mean_pose_mm = add_root(load_stats(data_dir).mean_3d.astype(np.float64))
    arrays = load_pose_arrays(data_dir, split)
    truth_mm = root_relative(arrays.pose_3d_cam_mm.astype(np.float64))  # (N, 17, 3)
    predicted_mm = np.broadcast_to(mean_pose_mm, truth_mm.shape)
    actions = [base_action(str(a)) for a in arrays.action]
    return {"MPJPE (P1)": per_action_table(mpjpe(predicted_mm, truth_mm), actions),
            "PA-MPJPE (P2)": per_action_table(pa_mpjpe(predicted_mm, truth_mm), actions)}


def compare_table(rows: dict[str, dict[str, dict[str, float]]], label: str = "Model") -> str:
    """Markdown: one row per entry of `rows` (row name -> tables as `EvalResult.tables`), one
    column per error column in first-seen order, holding the action-wise averages (mm); "–"
    where a row lacks a column (best of K of a deterministic model or the mean pose)."""
    columns = list(dict.fromkeys(column for tables in rows.values() for column in tables))
    lines = [f"| {label} | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
    for name, tables in rows.items():
        cells = [f"{tables[column]['Average']:.1f}" if column in tables else "–" for column in columns]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
