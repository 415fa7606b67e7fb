"""RGB -> 3D on synthetic crops: the cross-modal VAE against a ResNet-18 regressor and a 2D lifter
trained alone, all with the same budget, in this process (`hpe_ray.training.loop.fit`, no Ray).

    .venv/bin/python benchmarks/crossmodal.py --out runs/crossmodal_bench        # 41 min on this 2-core machine
    .venv/bin/python benchmarks/crossmodal.py --epochs 1 --steps-per-epoch 5 --sequences 1 --frames 4 \
        --out /tmp/crossmodal_smoke                                               # smoke run, under a minute

Data: a synthetic set with 64 px crops (`SyntheticSpec` with --sequences and --frames, four
Human3.6M-like cameras), generated under --data on the first run and reused afterwards.

Models, each trained from scratch with the same epochs, optimiser steps, batch, learning rate,
beta schedule and seed (model sizes and beta schedule from configs/crossmodal.yaml, the rest
the project's defaults: scale-free 2D input, a best-of-8 term on the 3D pairs of the VAEs):
- cross-modal VAE: the RGB and 2D-pose encoders into one latent space, one 3D decoder; pairs
  rgb_to_pose3d and pose2d_to_pose3d alternating step by step (half the steps each);
- the same with both pairs summed in every step (`loss.schedule: sum`): each pair gets every
  step, for little more compute per step than the regressor (the 2D encoder is a small MLP);
- the same + rgb_to_rgb (weight 0.5, as configs/crossmodal.yaml): a third of the steps each;
- ResNet-18 regressor: the same ResNet-18 and 3D decoder with the one pair rgb_to_pose3d and
  model.deterministic true (no log-variance head, no KL): plain supervised regression;
- 2D -> 3D VAE alone: the pair pose2d_to_pose3d only, against the 2D -> 3D path of the
  cross-modal models (does training with images help the 2D lifter?), with all the steps and
  with the half and the third that path gets. Its augmentation (virtual cameras, bones,
  keypoint conventions, mirroring) is off: it sees exactly the views the image models stream.
The training split's mean pose is the level every model must beat.

Each run's last checkpoint is evaluated on the test split (S9, S11): Protocol 1 (MPJPE) and
2 (PA-MPJPE), action-wise average, mm, from the latent mean and as best of --hypotheses samples
(the deterministic regressor has one answer). The last checkpoint, not the best by validation:
validation of a model with a 2D encoder measures only its 2D -> 3D path. The Markdown tables
are printed and written with a JSON of every number to --out. With --models, the rows not
re-run are kept from --out's results.json when it was made with the same budget (the table
says which rows came from which command). Synthetic data, not Human3.6M.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from hpe_ray.config import load_config
from hpe_ray.data.shards import load_manifest
from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset
from hpe_ray.evaluate import AVERAGE_ROW, compare_table, evaluate_checkpoint, mean_pose_tables, write_tables
from hpe_ray.training.checkpoint import CHECKPOINT_FILE
from hpe_ray.training.data import steps_per_epoch
from hpe_ray.training.loop import EPOCH_DIR, fit

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "crossmodal.yaml"

TWO_PAIRS = {"rgb_to_pose3d": 1.0, "pose2d_to_pose3d": 1.0}
THESIS_PAIRS = {**TWO_PAIRS, "rgb_to_rgb": 0.5}


class Model(NamedTuple):
    """A benchmarked run: its name, config overrides, the inputs it is evaluated from, and its
    share of the optimiser steps (1: the full budget)."""

    run: str
    overrides: dict
    inputs: tuple[str, ...]
    steps_share: float = 1.0


# The streamed image path has no augmentation: the 2D lifters alone see the same views without it.
NO_AUGMENTATION = {"data.virtual_camera_fraction": 0.0,
                   "data.augment": {"bone_fraction": 0.0, "convention_fraction": 0.0, "flip": 0.0, "keypoint_noise": 0.0}}
REGRESSOR = {"loss.pairs": {"rgb_to_pose3d": 1.0}, "model.deterministic": True}
LIFTER = {"loss.pairs": {"pose2d_to_pose3d": 1.0}}
MODELS = {
    "Cross-modal VAE": Model("crossmodal", {"loss.pairs": TWO_PAIRS, "loss.schedule": "alternate"},
                             ("rgb", "pose2d")),
    "Cross-modal VAE, pairs summed": Model("crossmodal-sum", {"loss.pairs": TWO_PAIRS, "loss.schedule": "sum"},
                                           ("rgb", "pose2d")),
    "Cross-modal VAE + rgb_to_rgb": Model("crossmodal-rgb", {"loss.pairs": THESIS_PAIRS, "loss.schedule": "alternate"},
                                          ("rgb", "pose2d")),
    "ResNet-18 regressor (deterministic)": Model("regressor", REGRESSOR, ("rgb",)),
    "2D->3D VAE alone": Model("lifter", LIFTER, ("pose2d",)),
    # Alternating pairs: each pair of a cross-modal VAE gets this share of the optimiser steps.
    "2D->3D VAE alone, 1/2 of the steps": Model("lifter-half", LIFTER, ("pose2d",), 1 / len(TWO_PAIRS)),
    "2D->3D VAE alone, 1/3 of the steps": Model("lifter-third", LIFTER, ("pose2d",), 1 / len(THESIS_PAIRS)),
}
INPUT_LABEL = {"rgb": "RGB crop", "pose2d": "2D pose"}


def ensure_dataset(data_dir: Path, spec: SyntheticSpec) -> Path:
    """The synthetic set of `spec` in data_dir: generated once, reused when its settings match."""
    if (data_dir / "manifest.json").is_file():
        stored = load_manifest(data_dir)["settings"]
        wanted = json.loads(json.dumps(dataclasses.asdict(spec)))  # tuples as the manifest's lists
        if stored != wanted:
            raise SystemExit(f"{data_dir} holds another synthetic set ({stored}); pass another --data")
        return data_dir
    started = time.perf_counter()
    write_synthetic_dataset(spec, data_dir)
    print(f"generated {data_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return data_dir


# What must match for an earlier run's rows to stand beside this run's.
BUDGET_ARGS = ("sequences", "frames", "image_size", "epochs", "steps_per_epoch", "batch_size", "lr", "seed",
               "hypotheses")


def earlier_rows(out: Path, args: argparse.Namespace) -> dict:
    """{model: run} of out's results.json when it was made with this budget, each run with the
    command that made it; {} otherwise."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier["args"].get(key) != str(getattr(args, key)) for key in BUDGET_ARGS):
        return {}
    command = earlier.get("command", f"an earlier run with --out {out}")
    return {name: {"command": command, **run} for name, run in earlier["models"].items()}


def budget_overrides(args: argparse.Namespace, data_dir: Path) -> dict:
    """What every model shares: data, image size, epochs, steps, batch, lr, seed."""
    return {"data.dir": str(data_dir), "data.image_size": args.image_size, "data.loader_workers": 1,
            "data.shuffle_buffer": 1000, **NO_AUGMENTATION,
            "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch,
            "train.batch_size": args.batch_size, "train.lr": args.lr, "train.seed": args.seed,
            "train.val_max_samples": 512, "train.eval_hypotheses": 2, "train.tensorboard_images_every": 0,
            "scaling.workers": 1}


def train(overrides: dict, run_dir: Path) -> dict:
    """Train from scratch into run_dir: wall time and per-epoch training metrics."""
    shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run: always a fresh start
    cfg = load_config(BASE_CONFIG, overrides)
    started = time.perf_counter()
    history = fit(cfg, run_dir)
    train_count = load_manifest(cfg.data.dir)["splits"]["train"]["count"]
    steps = cfg.train.epochs * steps_per_epoch(train_count, cfg.train.batch_size, cfg.train.steps_per_epoch)
    return {"wall_s": time.perf_counter() - started, "pairs": list(cfg.loss.pairs), "steps": steps,
            "checkpoint": str(run_dir / EPOCH_DIR.format(epoch=cfg.train.epochs) / CHECKPOINT_FILE),
            "history": history}


def evaluate(checkpoint: str, data_dir: Path, modality: str, hypotheses: int, tables_dir: Path) -> dict:
    started = time.perf_counter()
    result = evaluate_checkpoint(checkpoint, data_dir, split="test", hypotheses=hypotheses, modality=modality)
    write_tables(result, tables_dir)
    return {"samples": len(result.actions), "wall_s": time.perf_counter() - started,
            "average_mm": {column: table["Average"] for column, table in result.tables.items()},
            "per_action_mm": result.tables}


def accuracy_table(results: dict, mean_pose: dict) -> str:
    rows = {f"{model}, {INPUT_LABEL[modality]}": evaluation["per_action_mm"]
            for model, run in results.items() for modality, evaluation in run["test"].items()}
    return compare_table({**rows, "Training mean pose, no input": mean_pose}, "Model, input")


def training_table(results: dict) -> str:
    columns = ["Model", "Pairs", "Steps", "KL / target element, epoch 1 → last", "RGB→3D loss, epoch 1 → last",
               "2D→3D loss, epoch 1 → last", "Train samples/s", "Train wall time (s)"]
    lines = [f"| {' | '.join(columns)} |", "|---|---|" + "---:|" * (len(columns) - 2)]

    def first_last(history: list[dict], key: str) -> str:
        return f"{history[0][key]:.3g} → {history[-1][key]:.3g}" if key in history[0] else "–"

    for model, run in results.items():
        t = run["train"]
        history = t["history"]
        lines.append(f"| {model} | {', '.join(t['pairs'])} | {t['steps']} | {first_last(history, 'kl')} | "
                     f"{first_last(history, 'loss_rgb_to_pose3d')} | {first_last(history, 'loss_pose2d_to_pose3d')} | "
                     f"{history[-1]['train_samples_per_s']:.0f} | {t['wall_s']:.0f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and the runs")
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "crossmodal_bench" / "data",
                        help="synthetic set (generated when missing)")
    parser.add_argument("--sequences", type=int, default=4, help="sequences per action and subject")
    parser.add_argument("--frames", type=int, default=20, help="frames per sequence")
    parser.add_argument("--image-size", type=int, default=64, help="crop side, px")
    parser.add_argument("--epochs", type=int, default=8, help="the training budget, the same for every model")
    parser.add_argument("--steps-per-epoch", type=int, default=150, help="optimiser steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hypotheses", type=int, default=10, help="K for best of K")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--models", nargs="+", choices=[model.run for model in MODELS.values()],
                        default=[model.run for model in MODELS.values()], help="runs to train (default: all)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    spec = SyntheticSpec(sequences_per_action=args.sequences, frames_per_sequence=args.frames,
                         image_size=args.image_size)
    data_dir = ensure_dataset(args.data.resolve(), spec)
    counts = {split: entry["count"] for split, entry in load_manifest(data_dir)["splits"].items()}
    command = f"python {shlex.join(sys.argv)}"
    earlier = earlier_rows(args.out.resolve(), args)
    results = {}
    for name, model in MODELS.items():
        if model.run not in args.models:
            if name in earlier:
                results[name] = earlier[name]
            continue
        run_dir = args.out.resolve() / "runs" / model.run
        share = {"train.steps_per_epoch": max(1, round(args.steps_per_epoch * model.steps_share))}
        run = {"command": command, "train": train({**budget_overrides(args, data_dir), **model.overrides, **share}, run_dir)}
        # A deterministic model repeats its one answer: no best-of-K columns.
        hypotheses = 1 if model.overrides.get("model.deterministic") else args.hypotheses
        run["test"] = {modality: evaluate(run["train"]["checkpoint"], data_dir, modality, hypotheses,
                                          run_dir / "eval") for modality in model.inputs}
        results[name] = run
        print(f"{name}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)
    mean_pose = mean_pose_tables(data_dir, "test")
    total_s = time.perf_counter() - started
    steps = steps_per_epoch(counts["train"], args.batch_size, args.steps_per_epoch)
    text = "\n\n".join([
        "## RGB -> 3D and 2D -> 3D on synthetic crops (not Human3.6M)",
        f"`{command}` with {args.threads} torch thread(s) on a {os.cpu_count()}-core CPU "
        f"shared with other jobs; total wall time {total_s / 60:.1f} min (dataset generation included when it ran)."
        + "".join(f" Kept from `{c}`: {', '.join(n for n, r in results.items() if r['command'] == c)}."
                  for c in dict.fromkeys(r["command"] for r in results.values()) if c != command),
        f"Data: synthetic, {args.image_size} px crops, {counts['train']} train / {counts['test']} test frames "
        f"(test subjects S9, S11). Budget per model: {args.epochs} epochs x {steps} optimiser steps (the '1/2' and "
        f"'1/3 of the steps' runs: what each alternating pair of the cross-modal VAEs gets), batch "
        f"{args.batch_size}, AdamW lr {args.lr} (cosine), seed {args.seed}; latent, MLP sizes and beta "
        f"schedule (linear to 1e-3 over 2 epochs) from configs/crossmodal.yaml. Last checkpoint of each run; errors in "
        f"mm, 17 joints, root-relative; {AVERAGE_ROW}. P1/P2 from the latent mean; best of {args.hypotheses} "
        f"from posterior samples (–: the deterministic regressor has one answer).",
        accuracy_table(results, mean_pose),
        "Training (KL summed over latent dims, divided by the target's element count, mean of the epoch; "
        "losses: mean per epoch of the pair's training loss: reconstruction, for the VAEs + beta KL, and for "
        "their 3D pairs + 4 x the best-of-8 term, so the VAEs' and the regressor's losses differ in kind):",
        training_table(results),
    ])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "counts": counts, "total_wall_s": total_s,
         "mean_pose_mm": mean_pose, "models": results}, indent=1))


if __name__ == "__main__":
    main()
