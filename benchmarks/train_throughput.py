"""Training throughput of the Ray Train loop: lifting (in-memory) and cross-modal (64 px images).

    python benchmarks/train_throughput.py                   # generates synthetic datasets first
    python benchmarks/train_throughput.py --workers 1 2 --epochs 3

For each model and worker count, trains a few short epochs on a fresh local Ray cluster and
prints the train_samples_per_s the loop reports (all ranks together, validation excluded) of
the fastest epoch after the first (warm-up). Numbers are for this machine and dataset only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from hpe_ray.config import Config
from hpe_ray.data.shards import write_shards
from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits
from hpe_ray.distributed import run_training

CROSS_MODAL_PAIRS = {"pose2d_to_pose3d": 1.0, "rgb_to_pose3d": 1.0, "rgb_to_rgb": 1.0, "pose2d_to_pose2d": 1.0}


def generate(out_dir: Path, image_size: int | None, frames: int) -> Path:
    """Synthetic train and val splits (test is not needed here)."""
    spec = SyntheticSpec(sequences_per_action=1, frames_per_sequence=frames, frame_step=4, image_size=image_size)
    splits = {split: samples for split, samples in synthetic_splits(spec).items() if split != "test"}
    start = time.perf_counter()
    write_shards(splits, out_dir, source="synthetic", settings={"benchmark": True}, max_samples_per_shard=500)
    print(f"wrote {out_dir.name}: {spec.count('train')} train samples in {time.perf_counter() - start:.0f} s")
    return out_dir


def samples_per_s(cfg: Config) -> float:
    """The fastest epoch after the first, from the loop's own train_samples_per_s."""
    result = run_training(cfg)
    if result.error is not None:
        raise result.error
    history = result.metrics_dataframe.sort_values("epoch")["train_samples_per_s"].tolist()
    return max(history[1:] or history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lifting-steps", type=int, default=100, help="steps per epoch, lifting")
    parser.add_argument("--image-steps", type=int, default=6, help="steps per epoch, cross-modal")
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--cpus", type=int, help="CPUs for the local Ray cluster (default: all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        poses = generate(scratch / "poses", None, frames=25)
        images = generate(scratch / "images", 64, frames=4)
        lifting = Config().with_overrides({
            "data.dir": str(poses), "train.steps_per_epoch": args.lifting_steps, "train.val_max_samples": 512})
        cross_modal = Config().with_overrides({
            "data.dir": str(images), "data.image_size": 64, "loss.pairs": CROSS_MODAL_PAIRS,
            "train.batch_size": args.image_batch, "train.steps_per_epoch": args.image_steps,
            "train.val_max_samples": 512})
        ray.init(num_cpus=args.cpus, address="local", include_dashboard=False, log_to_driver=False)
        rows = []
        for label, cfg in (("lifting (in memory, batch 256)", lifting),
                           (f"cross-modal 64 px (4 pairs alternating, batch {args.image_batch})", cross_modal)):
            for workers in args.workers:
                run_cfg = cfg.with_overrides({
                    "train.epochs": args.epochs, "scaling.workers": workers,
                    "run.checkpoints_to_keep": args.epochs,  # metrics_dataframe lists kept checkpoints only
                    "run.storage": str(scratch / "runs"), "run.name": f"{len(rows)}-{workers}"})
                rows.append((label, workers, samples_per_s(run_cfg)))
        ray.shutdown()
    print(f"\n{'model':<52} {'workers':>7} {'train samples/s':>16}")
    for label, workers, rate in rows:
        print(f"{label:<52} {workers:>7} {rate:>16.0f}")


if __name__ == "__main__":
    main()
