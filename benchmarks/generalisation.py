"""Lifting that travels, hypotheses that help: every lifter at the same budget, tested on views,
bodies and keypoint conventions it never saw.

    python benchmarks/generalisation.py --out runs/generalisation            # about 21 min on 2 CPU cores
    python benchmarks/generalisation.py --epochs 2 --steps-per-epoch 20 --datasets synthetic   # smoke run

Training sets (poses only, converted under --data-root when missing): the embedded synthetic
default (four Human3.6M-like cameras) and Bandai-Namco mocap (styles angry + old held out for
test, tired for validation). Each model is trained in this process by the training core
(`hpe_ray.training.loop.fit`) with the same epochs, steps, batch, learning rate and seed, and its
best-validation checkpoint is lifted through `hpe_ray.inference.Lifter` (FIT_ROWS: the same
checkpoint again with another model.fit_2d strength, no retraining) on:

- seen: the training set's own test split (its cameras);
- virtual: the same kind of data through the converter's random virtual cameras;
- outside: the test poses seen from outside every training range (45-60 degrees down,
  8-12 m away, 90-110 degree lenses);
- conventions: the test poses with spine, thorax, neck/nose, head top, hips and shoulders each
  moved by 40 mm in a random direction (one draw = one convention for the whole set, as another
  converter or 2D detector would place them; --convention-draws draws), 3D and 2D alike;
- noisy 2D: the test keypoints with Gaussian noise like a detector's, sigma per sample uniform
  up to NOISE_MAX_SIGMA of the 2D pose's height (about 5 px on average at 5 m here);
- conventions + noise: both at once, as a detector's 2D is (the same draws as conventions);
- cross: the other training set's test split, and the CMU clip (another rig and skeleton).

Errors are Protocol 1 (MPJPE) and 2 (PA-MPJPE), mm, action-wise averages, from the latent
mean; "x seen" columns are ratios to the seen error. The hypothesis table adds best of
K = 1/5/10/50 posterior samples, the bone-length spread across hypotheses, the share of joints
inside the predicted 90% radius and the Spearman correlation between a sample's hypothesis
spread and its error. Numbers are synthetic data or real mocap on this machine, never Human3.6M.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hpe_ray.camera import project_to_pixels
from hpe_ray.config import Config, load_config
from hpe_ray.data.bvh import BvhSettings
from hpe_ray.data.augment import keypoint_noise, shift_keypoint_conventions, virtual_camera_views
from hpe_ray.data.convert import write_bvh_dataset
from hpe_ray.data.sample import PoseArrays
from hpe_ray.data.stream import load_pose_arrays
from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset
from hpe_ray.inference import Lifter
from hpe_ray.metrics import base_action, per_action_table, pose_errors, summarize_hypotheses
from hpe_ray.normalization import root_relative
from hpe_ray.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BANDAI_DIR = SHARED_DATA / "bandai-namco-1" / "data"
CMU_DIR = SHARED_DATA / "cmu-131"

# Model name -> (config file or None for the defaults, overrides). The default Config is the
# project's default lifter; configs/thesis-lifting.yaml the thesis's, unchanged.
MODELS = {
    "thesis VAE": (REPO / "configs" / "thesis-lifting.yaml", {}),
    "default VAE": (None, {}),
    "default, deterministic": (None, {"model.deterministic": True}),
    "default, no 2D fit": (None, {"model.fit_2d": False}),
}
# Row -> (the MODELS row whose checkpoint it lifts, model.fit_2d for lifting it).
FIT_ROWS = {"default, fit 0.5": ("default VAE", 0.5)}
HYPOTHESES = (1, 5, 10, 50)
OUTSIDE_RANGES = dict(distance_mm=(8000.0, 12000.0), elevation_deg=(45.0, 60.0), field_of_view_deg=(90.0, 110.0))
CONVENTION_SHIFT_MM = 40.0
NOISE_MAX_SIGMA = 0.03


# ---------------------------------------------------------------- data

def ensure_datasets(root: Path, names: list[str]) -> dict[str, Path]:
    """{name: data dir} of the sets the benchmark reads, converted once under root."""
    dirs = {}
    if "synthetic" in names:
        dirs["synthetic"] = _once(root / "synth-poses", lambda out: write_synthetic_dataset(
            SyntheticSpec(image_size=0), out, workers=1))
        dirs["synthetic-virtual"] = _once(root / "synth-virtual", lambda out: write_synthetic_dataset(
            SyntheticSpec(image_size=0, cameras="virtual"), out, workers=1))
    if "bandai" in names and BANDAI_DIR.is_dir():
        styles = dict(test_styles=("angry", "old"), val_styles=("tired",))
        dirs["bandai"] = _once(root / "bandai", lambda out: write_bvh_dataset([BANDAI_DIR], out, **styles))
        dirs["bandai-virtual"] = _once(root / "bandai-virtual", lambda out: write_bvh_dataset(
            [BANDAI_DIR], out, settings=BvhSettings(cameras="virtual"), **styles))
    if CMU_DIR.is_dir():
        dirs["cmu"] = _once(root / "cmu", lambda out: write_bvh_dataset([CMU_DIR], out, skeleton="cmu", split="test"))
    return dirs


def _once(out: Path, make) -> Path:
    if not (out / "manifest.json").is_file():
        started = time.perf_counter()
        make(out)
        print(f"converted {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


def outside_view(arrays: PoseArrays, seed: int) -> PoseArrays:
    """The split's poses seen by cameras outside every training range."""
    keypoints, poses, intrinsics = virtual_camera_views(
        torch.as_tensor(arrays.pose_3d_cam_mm, dtype=torch.float64),
        torch.as_tensor(arrays.intrinsics, dtype=torch.float64), torch.Generator().manual_seed(seed),
        **OUTSIDE_RANGES)
    return _replace(arrays, keypoints, poses, intrinsics)


def convention_view(arrays: PoseArrays, seed: int) -> PoseArrays:
    """The split's poses with one other keypoint convention: six parts each moved by
    CONVENTION_SHIFT_MM in a random direction of the body frame, the same for every sample."""
    direction = torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    offsets = CONVENTION_SHIFT_MM * direction / direction.norm(dim=-1, keepdim=True)
    poses = torch.as_tensor(arrays.pose_3d_cam_mm, dtype=torch.float64)
    shifted = shift_keypoint_conventions(poses, offsets.expand(len(poses), 6, 3))
    intrinsics = torch.as_tensor(arrays.intrinsics, dtype=torch.float64)
    return _replace(arrays, project_to_pixels(shifted, intrinsics), shifted, intrinsics)


def noisy_view(arrays: PoseArrays, seed: int) -> PoseArrays:
    """The split with detector-like noise on its keypoints (`keypoint_noise`), 3D unchanged."""
    keypoints = keypoint_noise(torch.as_tensor(arrays.keypoints_2d_px, dtype=torch.float64), NOISE_MAX_SIGMA,
                               torch.Generator().manual_seed(seed))
    return _replace(arrays, keypoints, arrays.pose_3d_cam_mm, arrays.intrinsics)


def _replace(arrays: PoseArrays, keypoints_2d_px, pose_3d_cam_mm, intrinsics) -> PoseArrays:
    """The same samples (keys, actions, ...) with other poses and cameras, as float32 arrays."""
    return dataclasses.replace(arrays, keypoints_2d_px=np.asarray(keypoints_2d_px, np.float32),
                               pose_3d_cam_mm=np.asarray(pose_3d_cam_mm, np.float32),
                               intrinsics=np.asarray(intrinsics, np.float32))


# ---------------------------------------------------------------- scoring

def score(lifter: Lifter, arrays: PoseArrays, hypotheses: int = 1, seed: int = 0, scores=None) -> dict[str, float]:
    """Action-wise MPJPE / PA-MPJPE of the mean (and, with hypotheses > 1, the hypothesis metrics).
    scores: (N, 17) detector confidences for a model that reads them (None: exact 2D)."""
    result = lifter.lift(arrays.keypoints_2d_px, arrays.intrinsics[:, :2], arrays.intrinsics[:, 2:4], scores=scores,
                         hypotheses=hypotheses, seed=seed, batch_size=2048)
    truth = root_relative(arrays.pose_3d_cam_mm.astype(np.float64))
    actions = [base_action(str(a)) for a in arrays.action]

    def average(per_sample: np.ndarray) -> float:
        return per_action_table(per_sample, actions)["Average"]

    if hypotheses == 1:
        per_sample = pose_errors(result.poses_3d, None, truth, ("mpjpe", "pa_mpjpe"))
        return {name: average(values) for name, values in per_sample.items()}
    samples = result.hypotheses.astype(np.float64)
    out = {}
    for k in HYPOTHESES:  # best of the first k hypotheses, for each k
        best = pose_errors(result.poses_3d, samples[:, :k], truth, ("mpjpe_best_of_k", "pa_mpjpe_best_of_k"))
        out[f"best_of_{k}"], out[f"pa_best_of_{k}"] = (average(v) for v in best.values())
    per_sample = pose_errors(result.poses_3d, samples, truth, ("mpjpe", "pa_mpjpe", "hypothesis_spread",
                                                               "bone_length_spread", "coverage_90"))
    return {"mpjpe": average(per_sample["mpjpe"]), "pa_mpjpe": average(per_sample["pa_mpjpe"]), **out,
            **summarize_hypotheses(per_sample)}


def evaluation_views(train_set: str, dirs: dict[str, Path], draws: int) -> dict[str, list[PoseArrays]]:
    """{view: the test arrays it is scored on, several draws averaged}, built once per training
    set for every model; "seen" first (the only view scored with hypotheses)."""
    own_test = load_pose_arrays(dirs[train_set], "test")
    views = {"seen": [own_test]}
    if f"{train_set}-virtual" in dirs:
        views["virtual"] = [load_pose_arrays(dirs[f"{train_set}-virtual"], "test")]
    views["outside"] = [outside_view(own_test, seed=1)]
    views["conventions"] = [convention_view(own_test, seed=100 + i) for i in range(draws)]
    views["noisy 2D"] = [noisy_view(own_test, seed=2)]
    views["conventions + noise"] = [noisy_view(shifted, seed=2 + i) for i, shifted in enumerate(views["conventions"])]
    for other in ("synthetic", "bandai", "cmu"):
        if other != train_set and other in dirs:
            views[f"on {other}"] = [load_pose_arrays(dirs[other], "test")]
    return views


def evaluate_model(lifter: Lifter, views: dict[str, list[PoseArrays]]) -> dict[str, dict]:
    """{view: its scores (`score`), the mean over the view's draws}."""
    results = {}
    for view, draws in views.items():
        scores = [score(lifter, arrays, hypotheses=max(HYPOTHESES) if view == "seen" else 1) for arrays in draws]
        results[view] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    return results


# ---------------------------------------------------------------- tables

def markdown_tables(report: dict) -> str:
    lines = []
    for train_set, models in report["results"].items():
        views = [v for v in next(iter(models.values())) if v != "seen"]
        lines += [f"### Trained on {train_set}: MPJPE mm (PA-MPJPE), mean prediction", "",
                  "| model | seen | " + " | ".join(f"{v} | x seen" for v in views) + " |",
                  "|---|---|" + "---|---|" * len(views)]
        for model, views_scores in models.items():
            seen = views_scores["seen"]
            cells = [f"{seen['mpjpe']:.1f} ({seen['pa_mpjpe']:.1f})"]
            for view in views:
                s = views_scores[view]
                cells += [f"{s['mpjpe']:.1f} ({s['pa_mpjpe']:.1f})", f"{s['mpjpe'] / seen['mpjpe']:.2f}"]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += ["", f"### Trained on {train_set}: hypotheses on the seen test split (K up to {max(HYPOTHESES)})", "",
                  "| model | mean | " + " | ".join(f"best of {k}" for k in HYPOTHESES)
                  + " | PA mean | PA best of 10 | best of 10 / mean | bone-length spread mm | spread mm "
                    "| inside 90% radius | Spearman(spread, error) |",
                  "|---|---|" + "---|" * len(HYPOTHESES) + "---|---|---|---|---|---|---|"]
        for model, views_scores in models.items():
            s = views_scores["seen"]
            lines.append(
                f"| {model} | {s['mpjpe']:.1f} | " + " | ".join(f"{s[f'best_of_{k}']:.1f}" for k in HYPOTHESES)
                + f" | {s['pa_mpjpe']:.1f} | {s['pa_best_of_10']:.1f} | {s['best_of_10'] / s['mpjpe']:.2f}"
                + f" | {s['bone_length_spread_mm']:.1f} | {s['spread_mm']:.1f} | {100 * s['coverage_90']:.0f}%"
                + f" | {s['spearman_spread_error']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/generalisation"))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "bandai"], choices=["synthetic", "bandai"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps-per-epoch", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--convention-draws", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2-core machine: 1 leaves a core free)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dirs = ensure_datasets(args.data_root, args.datasets)
    report = {"command": " ".join(shlex.quote(a) for a in sys.argv), "budget": {
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed}, "results": {}, "train_seconds": {}}
    for train_set in args.datasets:
        if train_set not in dirs:
            print(f"skipping {train_set}: its source is not here", file=sys.stderr)
            continue
        views = evaluation_views(train_set, dirs, args.convention_draws)
        for model in args.models:
            run_dir = args.out / "runs" / f"{train_set}-{model.replace(' ', '-').replace(',', '')}"
            config_file, overrides = MODELS[model]
            cfg = (load_config(config_file) if config_file else Config()).with_overrides({
                **overrides, "data.dir": str(dirs[train_set]), "train.epochs": args.epochs,
                "train.steps_per_epoch": args.steps_per_epoch, "train.batch_size": args.batch_size,
                "train.lr": args.lr, "train.seed": args.seed, "train.val_max_samples": 4000,
                "train.tensorboard_images_every": 0, "run.checkpoints_to_keep": 1})
            tic = time.perf_counter()
            shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own run: always a fresh start
            fit(cfg, run_dir)
            report["train_seconds"][f"{train_set}/{model}"] = round(time.perf_counter() - tic)
            report["results"].setdefault(train_set, {})[model] = evaluate_model(Lifter.from_checkpoint(run_dir), views)
            for row, (source, fit_2d) in FIT_ROWS.items():
                if source == model:
                    report["results"][train_set][row] = evaluate_model(
                        Lifter.from_checkpoint(run_dir, fit_2d=fit_2d), views)
            print(f"{train_set} / {model}: trained in {report['train_seconds'][f'{train_set}/{model}']} s, "
                  f"seen {report['results'][train_set][model]['seen']['mpjpe']:.1f} mm", file=sys.stderr)
    report["wall_seconds"] = round(time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generalisation.json").write_text(json.dumps(report, indent=1))
    tables = markdown_tables(report)
    (args.out / "generalisation.md").write_text(f"`{report['command']}` ({report['wall_seconds']} s)\n\n{tables}")
    print(tables)
    print(f"wrote {args.out / 'generalisation.json'} and .md in {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
