"""Does giving the detector's confidences to the lifter help? Two lifters at the same budget,
data.keypoint_scores off and on, on clean and on occluded 2D.

    python benchmarks/scores.py --out runs/scores                      # about 4 min on 2 CPU cores
    python benchmarks/scores.py --epochs 1 --steps-per-epoch 5         # smoke run

Both are the default lifter (`Config()`), trained in this process by the training core with the
same epochs, steps, batch, learning rate and seed on --data (default data/synth-virtual); the
"on" model sees the simulated detector of `hpe_ray.data.augment.simulate_detector` while it
trains. Each is lifted through `hpe_ray.inference.Lifter` on the test split:

- clean: the exact 2D (the "on" model gets every score 1);
- occluded: --occluded of the joints (each independently, fixed seed) moved by --shift times the
  pose's 2D height in a random direction (0.12: 40 px on the split's median 335 px tall person)
  and scored 0.1. The "off" model gets them as `predict` gives a single frame: joints under the
  threshold are filled from the track's neighbouring frames, and a single image has none, so they
  stay as read. The "on" model reads the scores; a third row gives it the same 2D with every
  score 1, to tell the scores' part from that of training on occluded 2D.

MPJPE and PA-MPJPE in mm, action-wise average, mean decoding (K = 1). Synthetic data on this
machine, not Human3.6M.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from generalisation import _replace, score
from hpe_ray.config import Config
from hpe_ray.data.sample import PoseArrays
from hpe_ray.data.stream import load_pose_arrays
from hpe_ray.inference import Lifter
from hpe_ray.inference.formats import DEFAULT_MIN_SCORE, KeypointInput, fill_low_confidence
from hpe_ray.training.loop import fit

OCCLUDED_SCORE = 0.1


def occluded_view(arrays: PoseArrays, share: float, shift: float, seed: int) -> tuple[PoseArrays, np.ndarray]:
    """(the split with `share` of its joints moved by shift x the pose's 2D height in a random
    direction, scores (N, 17): OCCLUDED_SCORE there, 1 elsewhere)."""
    rng = np.random.default_rng(seed)
    keypoints = arrays.keypoints_2d_px.astype(np.float64)
    occluded = rng.random(keypoints.shape[:2]) < share
    angle = rng.uniform(0, 2 * np.pi, keypoints.shape[:2])
    height = keypoints[..., 1].max(1) - keypoints[..., 1].min(1)
    offset = shift * height[:, None, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    moved = np.where(occluded[..., None], keypoints + offset, keypoints)
    scores = np.where(occluded, OCCLUDED_SCORE, 1.0)
    return _replace(arrays, moved, arrays.pose_3d_cam_mm, arrays.intrinsics), scores


def as_predict_gives_single_frames(arrays: PoseArrays, scores: np.ndarray) -> PoseArrays:
    """The 2D `predict` lifts when every sample is its own image (a one-frame track):
    `fill_low_confidence` with the default threshold, which has no neighbouring frame to fill from."""
    count = len(arrays)
    read = KeypointInput(keypoints_2d_px=arrays.keypoints_2d_px.astype(np.float64), scores=scores,
                         tracks=np.arange(count).astype(str), frames=np.zeros(count, int),
                         names=np.arange(count).astype(str))
    filled, _ = fill_low_confidence(read, DEFAULT_MIN_SCORE)
    return _replace(arrays, filled.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scores"))
    parser.add_argument("--data", type=Path, default=Path("data/synth-virtual"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--occluded", type=float, default=0.2, help="share of test joints occluded")
    parser.add_argument("--shift", type=float, default=0.12, help="their displacement, share of the 2D pose height")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2-core machine: 1 leaves a core free)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    test = load_pose_arrays(args.data, "test")
    occluded, scores = occluded_view(test, args.occluded, args.shift, seed=args.seed + 1)
    as_predict = as_predict_gives_single_frames(occluded, scores)
    assert np.array_equal(as_predict.keypoints_2d_px, occluded.keypoints_2d_px)  # nothing to fill from
    report = {"command": " ".join(shlex.quote(a) for a in sys.argv), "data": str(args.data),
              "occluded_share": float((scores < 1).mean()), "results": {}, "train_seconds": {}}
    for name, keypoint_scores in (("off", False), ("on", True)):
        run_dir = args.out / "runs" / f"scores-{name}"
        cfg = Config().with_overrides({
            "data.dir": str(args.data), "data.keypoint_scores": keypoint_scores, "train.epochs": args.epochs,
            "train.steps_per_epoch": args.steps_per_epoch, "train.batch_size": args.batch_size, "train.lr": args.lr,
            "train.seed": args.seed, "train.val_max_samples": 4000, "train.tensorboard_images_every": 0,
            "run.checkpoints_to_keep": 1})
        tic = time.perf_counter()
        shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run: always a fresh start
        fit(cfg, run_dir)
        report["train_seconds"][name] = round(time.perf_counter() - tic)
        lifter = Lifter.from_checkpoint(run_dir)
        results = {"clean": score(lifter, test), "occluded": score(lifter, as_predict, scores=scores)}
        if keypoint_scores:
            results["occluded, scores withheld"] = score(lifter, as_predict)
        report["results"][name] = results
        print(f"{name}: trained in {report['train_seconds'][name]} s", file=sys.stderr)
    report["wall_seconds"] = round(time.perf_counter() - started)
    lines = [f"`{report['command']}` ({report['wall_seconds']} s; {args.data}, test split, "
             f"{100 * report['occluded_share']:.1f}% of joints occluded)", "",
             "| data.keypoint_scores | clean 2D | occluded 2D |", "|---|---|---|"]
    rows = [("off", "off", "occluded"), ("on", "on", "occluded"), ("on, scores withheld", "on", "occluded, scores withheld")]
    for label, model, view in rows:
        clean, hit = report["results"][model]["clean"], report["results"][model][view]
        lines.append(f"| {label} | {clean['mpjpe']:.1f} ({clean['pa_mpjpe']:.1f}) | {hit['mpjpe']:.1f} ({hit['pa_mpjpe']:.1f}) |")
    lines += ["", "MPJPE (PA-MPJPE) mm, action-wise average, mean decoding."]
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(report, indent=1))
    (args.out / "scores.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
