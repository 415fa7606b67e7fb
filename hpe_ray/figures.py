"""Figures of a checkpoint on a dataset split: predictions against ground truth, the latent
UMAP, errors per joint and action. The drawing is `hpe_ray.plotting`'s; this module feeds it
through the one prediction path (`hpe_ray.inference.Lifter`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hpe_ray.data.batch import images_to_model_range
from hpe_ray.data.stream import iter_samples, load_pose_arrays
from hpe_ray.inference import Lifter, resize_crop
from hpe_ray.metrics import base_action
from hpe_ray.normalization import normalize_2d, root_relative
from hpe_ray.plotting import error_tables, plot_errors, plot_latent_umap, plot_predictions
from hpe_ray.training.checkpoint import load_checkpoint



def pick_samples(actions, count: int, seed: int = 0) -> np.ndarray:
    """Indices of `count` samples spread over the actions: one random frame per action in turn
    (sorted by action), so a grid shows every action before repeating one."""
    actions = np.asarray(actions)
    rng = np.random.default_rng(seed)
    pools = {a: list(rng.permutation(np.flatnonzero(actions == a))) for a in sorted(set(actions.tolist()))}
    chosen: list[int] = []
    while len(chosen) < min(count, len(actions)):
        for pool in pools.values():
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop()))
    return np.asarray(sorted(chosen, key=lambda i: (actions[i], i)), dtype=int)


def predictions_figure(checkpoint, data_dir: str | Path, *, split: str = "test", n: int = 25,
                       hypotheses: int = 1, seed: int = 0, out: str | Path) -> list[Path]:
    """`plot_predictions` of n samples of a split (spread over actions) lifted from their 2D keypoints
    (from the crops for an RGB-only model), with K = hypotheses samples drawn behind the mean."""

    lifter = Lifter.from_checkpoint(checkpoint)
    arrays = load_pose_arrays(data_dir, split)
    chosen = pick_samples(arrays.action, n, seed)
    if "pose2d" in lifter.encoders:
        intrinsics = arrays.intrinsics[chosen]
        result = lifter.lift(arrays.keypoints_2d_px[chosen], intrinsics[:, 0:2], intrinsics[:, 2:4],
                             hypotheses=hypotheses, seed=seed)
    else:
        result = lifter.lift_images(_split_images(data_dir, split, chosen), hypotheses=hypotheses, seed=seed)
    titles = [f"{arrays.subject[i]} {arrays.action[i]} cam {arrays.camera_id[i]}" for i in chosen]
    return plot_predictions(result.poses_3d, root_relative(arrays.pose_3d_cam_mm[chosen]), out,
                            hypotheses_mm=result.hypotheses, titles=titles)


def latent_figure(checkpoint, data_dir: str | Path, *, split: str = "test",
                  n_neighbors: Sequence[int] = (5, 15, 50, 200), max_points: int = 3000, seed: int = 0,
                  out: str | Path) -> list[Path]:
    """`plot_latent_umap` of the latent means of every encoder of a checkpoint (2D pose, and RGB
    when it has one) on up to max_points frames of a split, coloured by action."""

    loaded = load_checkpoint(checkpoint)
    arrays = load_pose_arrays(data_dir, split)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(arrays), min(max_points, len(arrays)), replace=False))
    inputs = {}
    if "pose2d" in loaded.model.encoders:
        intrinsics = arrays.intrinsics[chosen]
        inputs["pose2d"] = torch.as_tensor(normalize_2d(arrays.keypoints_2d_px[chosen], intrinsics[:, 0:2],
                                                        intrinsics[:, 2:4], loaded.stats), dtype=torch.float32)
    if "rgb" in loaded.model.encoders:
        size = loaded.cfg.data.image_size
        crops = np.stack([resize_crop(image, size) for image in _split_images(data_dir, split, chosen)])
        inputs["rgb"] = images_to_model_range(torch.as_tensor(crops))
    with torch.no_grad():
        latents = {modality: torch.cat([loaded.model.encode(modality, batch)[0] for batch in x.split(256)]).numpy()
                   for modality, x in inputs.items()}
    actions = [base_action(str(a)) for a in arrays.action[chosen]]
    return plot_latent_umap(latents, actions, out, n_neighbors=n_neighbors, max_points=None, seed=seed)


def errors_figure(checkpoint, data_dir: str | Path, *, split: str = "test", out: str | Path) -> list[Path]:
    """`plot_errors` of a checkpoint on a whole split: MPJPE per joint, MPJPE and PA-MPJPE per
    action (the numbers of `hpe-ray evaluate`, from the same prediction function)."""

    lifter = Lifter.from_checkpoint(checkpoint)
    if "pose2d" not in lifter.encoders:
        raise ValueError(f"{lifter.checkpoint.path}: errors_figure lifts from 2D keypoints; this model has "
                         f"encoders {sorted(lifter.encoders)}")
    arrays = load_pose_arrays(data_dir, split)
    result = lifter.lift(arrays.keypoints_2d_px, arrays.intrinsics[:, 0:2], arrays.intrinsics[:, 2:4],
                         progress=len(arrays) > 100_000)
    per_joint_mm, tables = error_tables(result.poses_3d, root_relative(arrays.pose_3d_cam_mm),
                                        [base_action(str(a)) for a in arrays.action])
    title = (f"{Path(lifter.checkpoint.path).parent.name} (epoch {lifter.checkpoint.epoch}) on {Path(data_dir).name} "
             f"split {split!r}, {len(arrays)} frames, from 2D keypoints")
    return plot_errors(per_joint_mm, tables, out, title=title)


def _split_images(data_dir: str | Path, split: str, indices: np.ndarray) -> list[np.ndarray]:
    """The stored crops (H, W, 3) uint8 of the samples at `indices` (shard order) of a split."""
    wanted = set(indices.tolist())
    images = {i: sample.image for i, sample in enumerate(iter_samples(data_dir, split)) if i in wanted}
    missing = wanted - {i for i, image in images.items() if image is not None}
    if missing:
        raise ValueError(f"{data_dir}: split {split!r} has no image for {len(missing)} of the chosen samples")
    return [images[i] for i in indices.tolist()]
