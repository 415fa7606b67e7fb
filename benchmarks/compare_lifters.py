"""Lifting VAE against a deterministic baseline, same training budget, on synthetic data and mocap.

Three lifters: the thesis's VAE, a Martinez-style deterministic baseline and the VAE without
virtual-camera augmentation, trained on synthetic data and on Bandai-Namco mocap.

    python benchmarks/compare_lifters.py --out runs/compare_lifters.json          # 8-15 min on a shared 2-core CPU
    python benchmarks/compare_lifters.py --epochs 2 --steps-per-epoch 10 --skip-no-augmentation   # smoke run

Datasets (poses only, generated under --data-root when missing):
- synthetic: the embedded default (SyntheticSpec defaults, four Human3.6M-like cameras);
- synthetic, virtual cameras: the same bodies and motions seen by random virtual cameras
  (other focal lengths, distances, heights, image sizes); only its test split is used, to
  measure models trained on the fixed cameras on views unlike the training ones;
- Bandai-Namco mocap (--bandai), split by style: angry + old test, tired val, the rest train.

Every model gets the same budget (epochs, batch size, learning rate, optimiser steps, seed,
2 Ray Train CPU workers by default). The VAE is the thesis's (latent 100, constant beta 0.001,
pair pose2d_to_pose3d); the baseline is the same MLP with model.deterministic=true (Martinez
style). The checkpoint with the lowest validation MPJPE of each run is evaluated on the test
split: Protocol 1 (MPJPE) and 2 (PA-MPJPE), action-wise average, from the latent mean and as
best of K hypotheses. Numbers are for synthetic data or Bandai-Namco mocap on this machine,
never Human3.6M.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from hpe_ray.config import Config
from hpe_ray.data.convert import write_bvh_dataset
from hpe_ray.data.shards import load_manifest
from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset
from hpe_ray.evaluate import AVERAGE_ROW, evaluate_checkpoint, write_tables
from hpe_ray.distributed import run_training
from hpe_ray.training.data import steps_per_epoch

REPO = Path(__file__).resolve().parents[1]
BANDAI_DIR = REPO.parent / "shared" / "data" / "bandai-namco-1" / "data"

# Model name -> (run name, overrides of the default Config, which already is the thesis's VAE).
THESIS_VAE = {"model.latent_dim": 100, "loss.beta.kind": "constant", "loss.beta.max": 0.001,
              "loss.pairs": {"pose2d_to_pose3d": 1.0}}
MODELS = {
    "VAE": ("vae", THESIS_VAE),
    "Baseline (deterministic)": ("baseline", {**THESIS_VAE, "model.deterministic": True}),
    "VAE, no virtual-camera aug.": ("vae-no-aug", {**THESIS_VAE, "data.virtual_camera_fraction": 0.0}),
}
NO_AUGMENTATION = "VAE, no virtual-camera aug."


@dataclass
class Dataset:
    """A training set and the test sets its models are evaluated on: {label: data dir}."""

    label: str
    train_dir: Path
    test_dirs: dict[str, Path]


# ---------------------------------------------------------------- data

def ensure_synthetic(out_dir: Path, cameras: str) -> Path:
    """The default synthetic set seen by `cameras` ("h36m" or "virtual"), poses only; kept if present."""
    if not (out_dir / "manifest.json").is_file():
        started = time.perf_counter()
        write_synthetic_dataset(SyntheticSpec(cameras=cameras, image_size=0), out_dir, workers=2)
        print(f"generated {out_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out_dir


def ensure_bandai(source_dir: Path, out_dir: Path) -> Path:
    """Bandai-Namco clips as shards (default style split and cameras); kept if present."""
    if not (out_dir / "manifest.json").is_file():
        started = time.perf_counter()
        write_bvh_dataset([source_dir], out_dir)
        print(f"converted {source_dir} to {out_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out_dir


def datasets(data_root: Path, bandai_dir: Path) -> list[Dataset]:
    """Synthetic (tested on its own and on virtual cameras), then Bandai-Namco if its folder exists."""
    synthetic = ensure_synthetic(data_root / "synthetic", "h36m")
    virtual = ensure_synthetic(data_root / "synthetic-virtual", "virtual")
    found = [Dataset("synthetic", synthetic, {"synthetic, Human3.6M-like cameras": synthetic,
                                              "synthetic, virtual cameras (unseen)": virtual})]
    if bandai_dir.is_dir():
        bandai = ensure_bandai(bandai_dir, data_root / "bandai-namco")
        found.append(Dataset("Bandai-Namco mocap", bandai, {"Bandai-Namco mocap (angry, old)": bandai}))
    else:
        print(f"skipping Bandai-Namco mocap: {bandai_dir} not found (no ../shared/data checkout)", file=sys.stderr)
    return found


def split_counts(data_dir: Path) -> dict[str, int]:
    return {split: entry["count"] for split, entry in load_manifest(data_dir)["splits"].items()}


# ---------------------------------------------------------------- train and evaluate

def budget_config(args: argparse.Namespace, overrides: dict, data_dir: Path, run_name: str) -> Config:
    """The model's config with the shared budget: epochs, batch, lr, steps per epoch, workers, seed."""
    return Config().with_overrides({
        **overrides,
        "data.dir": str(data_dir),
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.steps_per_epoch": args.steps_per_epoch or None, "train.seed": args.seed,
        "train.eval_hypotheses": args.hypotheses,
        "scaling.workers": args.workers, "run.storage": str(args.storage), "run.name": run_name,
    })


def train(cfg: Config) -> dict:
    """Train one run: its directory, wall time, last-epoch training metrics, best validation MPJPE.

    Throughput is the last epoch's (warm); the best epoch is among the kept checkpoints, which
    Ray keeps by lowest val_mpjpe.
    """
    started = time.perf_counter()
    result = run_training(cfg, resume=False)
    wall_s = time.perf_counter() - started
    if result.error is not None:
        raise result.error
    last, kept = result.metrics, result.metrics_dataframe
    return {"run_dir": str(result.path), "wall_s": wall_s, "train_samples_per_s": float(last["train_samples_per_s"]),
            "epochs": int(last["epoch"]), "final_kl": float(last["kl"]),
            "final_loss": float(last["loss_pose2d_to_pose3d"]),
            "best_val_mpjpe": float(kept["val_mpjpe"].min()),
            "best_epoch": int(kept.loc[kept["val_mpjpe"].idxmin(), "epoch"])}


def evaluate(run_dir: str, data_dir: Path, hypotheses: int, tables_dir: Path) -> dict:
    """Action-wise averages (mm) of the run's best checkpoint on data_dir's test split."""
    result = evaluate_checkpoint(run_dir, data_dir, split="test", hypotheses=hypotheses)
    write_tables(result, tables_dir)
    return {"samples": len(result.actions), "checkpoint": str(result.checkpoint),
            "average_mm": {column: table["Average"] for column, table in result.tables.items()},
            "per_action_mm": result.tables}


# ---------------------------------------------------------------- tables

def error_columns(hypotheses: int) -> list[str]:
    """The column names of evaluate.py's tables, in order."""
    return ["MPJPE (P1)", "PA-MPJPE (P2)", f"MPJPE best of {hypotheses} (P1)", f"PA-MPJPE best of {hypotheses} (P2)"]


def accuracy_table(dataset: Dataset, results: dict, hypotheses: int) -> str:
    """Markdown: one row per (test set, model), Protocol 1 and 2 action-wise averages in mm."""
    columns = error_columns(hypotheses)
    lines = [f"| Test set | Model | Frames | {' | '.join(columns)} |", "|---|---|---:|" + "---:|" * len(columns)]
    for test_label in dataset.test_dirs:
        for model, run in results.items():
            evaluation = run["test"][test_label]
            cells = [f"{evaluation['average_mm'][c]:.1f}" if c in evaluation["average_mm"] else "–"
                     for c in columns]
            lines.append(f"| {test_label} | {model} | {evaluation['samples']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def training_table(results: dict) -> str:
    columns = ["Model", "Epochs", "Best epoch", "Best val MPJPE (mm)", "Final KL / 48", "Final train loss",
               "Train samples/s", "Run wall time (s)"]
    lines = [f"| {' | '.join(columns)} |", "|---|" + "---:|" * (len(columns) - 1)]
    for model, run in results.items():
        t = run["train"]
        lines.append(f"| {model} | {t['epochs']} | {t['best_epoch']} | {t['best_val_mpjpe']:.1f} | "
                     f"{t['final_kl']:.3g} | {t['final_loss']:.3g} | {t['train_samples_per_s']:.0f} | "
                     f"{t['wall_s']:.0f} |")
    return "\n".join(lines)


def report(dataset: Dataset, results: dict, counts: dict[str, int], args: argparse.Namespace) -> str:
    steps = steps_per_epoch(counts["train"] // args.workers, args.batch_size, args.steps_per_epoch or None)
    header = (f"### Trained on {dataset.label} ({counts['train']} train / {counts['val']} val frames; "
              f"measured on {dataset.label} data, not Human3.6M)\n\n"
              f"Budget per model: {args.epochs} epochs x {steps} optimiser steps, batch {args.batch_size} "
              f"per worker x {args.workers} Ray Train CPU workers, AdamW lr {args.lr} (cosine), seed {args.seed}. "
              f"Evaluated: the checkpoint with the lowest val MPJPE; P1/P2 from the latent mean, best of "
              f"{args.hypotheses} from posterior samples (the deterministic baseline has one answer: –). "
              f"Errors in mm, 17 joints, root-relative; {AVERAGE_ROW}: the unweighted mean over actions. "
              f"Train samples/s: both workers together, last epoch, on a machine shared "
              f"with other jobs (noisy); run wall time includes Ray start-up, validation and checkpoints. "
              f"KL: summed over latent dims, divided by the 48 target elements as in the loss.")
    return "\n\n".join([header, accuracy_table(dataset, results, args.hypotheses), training_table(results)])


# ---------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="the training budget, the same for every model")
    parser.add_argument("--steps-per-epoch", type=int, default=31,
                        help="optimiser steps per epoch, every dataset (31: one pass over the synthetic train "
                             "split with 2 workers x 256; 0: one pass over each train split)")
    parser.add_argument("--batch-size", type=int, default=256, help="per worker")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hypotheses", type=int, default=10, help="K for best of K")
    parser.add_argument("--skip-no-augmentation", action="store_true",
                        help="leave out the VAE without virtual-camera augmentation (saves a third of the time)")
    parser.add_argument("--data-root", type=Path, default=REPO / "runs" / "compare_lifters" / "data")
    parser.add_argument("--bandai", type=Path, default=BANDAI_DIR, help="folder of Bandai-Namco .bvh clips")
    parser.add_argument("--storage", type=Path, default=REPO / "runs" / "compare_lifters" / "runs")
    parser.add_argument("--out", type=Path, help="write all results (with per-action tables) as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    models = {name: overrides for name, overrides in MODELS.items()
              if not (args.skip_no_augmentation and name == NO_AUGMENTATION)}
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    sections, everything = [], {"args": {k: str(v) for k, v in vars(args).items()}, "datasets": {}}
    for dataset in datasets(args.data_root, args.bandai):
        counts = split_counts(dataset.train_dir)
        results = {}
        for model, (run_name, overrides) in models.items():
            cfg = budget_config(args, overrides, dataset.train_dir, f"{dataset.train_dir.name}-{run_name}")
            run = {"train": train(cfg)}
            # A deterministic model repeats its one answer: no best-of-K columns.
            hypotheses = 1 if overrides.get("model.deterministic") else args.hypotheses
            run["test"] = {label: evaluate(run["train"]["run_dir"], test_dir, hypotheses,
                                           Path(run["train"]["run_dir"]) / "eval" / test_dir.name)
                           for label, test_dir in dataset.test_dirs.items()}
            results[model] = run
            print(f"{dataset.label} / {model}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        sections.append(report(dataset, results, counts, args))
        everything["datasets"][dataset.label] = {"counts": counts, "models": results}
    ray.shutdown()
    everything["total_wall_s"] = time.perf_counter() - started
    title = ("## Lifters compared on synthetic data and Bandai-Namco mocap (not Human3.6M)\n\n"
             f"`python {shlex.join(sys.argv)}` on {os.cpu_count()} CPU cores")
    print("\n\n".join([title, *sections, f"Total wall time: {everything['total_wall_s']:.0f} s"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
