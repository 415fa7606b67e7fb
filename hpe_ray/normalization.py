"""Thesis normalisation: root-centre the 3D pose, drop the root, z-score each coordinate.

The root (pelvis) of a root-relative pose is always zero, so the models see 16 joints and the
root is put back as zeros afterwards. 2D keypoints enter in one of three spaces
(`NormStats.mode_2d`):

- "scaled": normalised image coordinates (u - c) / f from each sample's intrinsics,
  relative to the root and divided by the pose's own 2D size (RMS distance from the root), not
  z-scored. Camera, distance and person size leave the input, and a keypoint placed a few
  centimetres elsewhere (another detector's or converter's convention) moves the input by as
  little as it moves in the image: a per-coordinate z-score would magnify it where the training
  set barely varies (the hips beside the pelvis).
- "camera" (the functions' default): the same normalised image coordinates, absolute (position in the frame kept as a
  perspective cue), z-scored.
- "pixel": the thesis set-up, full-image pixels as they are, z-scored.

Statistics come from the training split only. Every function takes numpy arrays or torch
tensors; the backend follows the type of the data argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpe_ray.backend import array_module, as_array_like
from hpe_ray.camera import pixels_to_normalized
from hpe_ray.skeleton import NUM_JOINTS, ROOT

MODES_2D = ("scaled", "camera", "pixel")
# Lower bound on a std: a coordinate that never varies in training (e.g. synthetic data
# with a fixed joint) would otherwise divide by zero.
STD_EPSILON = 1e-6


def root_relative(pose_3d_cam_mm):
    """Subtract the root joint: (..., 17, 3) -> (..., 17, 3) with joint 0 at zero."""
    return pose_3d_cam_mm - pose_3d_cam_mm[..., ROOT:ROOT + 1, :]


def drop_root(x):
    """(..., 17, D) -> (..., 16, D)."""
    _check_joints(x, NUM_JOINTS, "drop_root")
    return x[..., ROOT + 1:, :]


def add_root(x):
    """(..., 16, D) -> (..., 17, D) with zeros at the root."""
    _check_joints(x, NUM_JOINTS - 1, "add_root")
    xp = array_module(x)
    return xp.concatenate([xp.zeros_like(x[..., :1, :]), x], axis=-2)


@dataclass
class NormStats:
    """Per-coordinate mean and std over the training split, root dropped.

    mean_2d, std_2d (16, 2) in the units of `mode_2d`; mean_3d, std_3d (16, 3) mm, root-relative.
    """

    mean_2d: np.ndarray
    std_2d: np.ndarray
    mean_3d: np.ndarray
    std_3d: np.ndarray
    mode_2d: str = "camera"

    def __post_init__(self) -> None:
        if self.mode_2d not in MODES_2D:
            raise ValueError(f"hpe_ray.normalization.NormStats: mode_2d must be one of {MODES_2D}, "
                             f"got {self.mode_2d!r}")
        for name, dim in (("mean_2d", 2), ("std_2d", 2), ("mean_3d", 3), ("std_3d", 3)):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.shape != (NUM_JOINTS - 1, dim) or not np.all(np.isfinite(value)):
                raise ValueError(f"hpe_ray.normalization.NormStats: {name} must be finite with shape "
                                 f"({NUM_JOINTS - 1}, {dim}), got shape {value.shape}")
            setattr(self, name, value)
        if np.any(self.std_2d <= 0) or np.any(self.std_3d <= 0):
            raise ValueError("hpe_ray.normalization.NormStats: std_2d and std_3d must be positive")

    def to_dict(self) -> dict:
        """JSON-able form (nested lists)."""
        return {"mode_2d": self.mode_2d, "mean_2d": self.mean_2d.tolist(), "std_2d": self.std_2d.tolist(),
                "mean_3d": self.mean_3d.tolist(), "std_3d": self.std_3d.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> NormStats:
        """Inverse of `to_dict`; a missing field raises ValueError naming it."""
        missing = {"mode_2d", "mean_2d", "std_2d", "mean_3d", "std_3d"} - set(data)
        if missing:
            raise ValueError(f"hpe_ray.normalization.NormStats.from_dict: missing fields {sorted(missing)}")
        return cls(data["mean_2d"], data["std_2d"], data["mean_3d"], data["std_3d"], data["mode_2d"])


def compute_stats(keypoints_2d_px, pose_3d_cam_mm, focal_px, center_px, mode_2d: str = "camera") -> NormStats:
    """Statistics of the training split ("scaled" 2D is not z-scored: mean 0, std 1).

    keypoints_2d_px (N, 17, 2); pose_3d_cam_mm (N, 17, 3); focal_px, center_px (N, 2) or (2,).
    """
    if mode_2d not in MODES_2D:
        raise ValueError(f"hpe_ray.normalization.compute_stats: mode_2d must be one of {MODES_2D}, got {mode_2d!r}")
    keypoints_2d_px = np.asarray(keypoints_2d_px, dtype=np.float64)
    pose_3d_cam_mm = np.asarray(pose_3d_cam_mm, dtype=np.float64)
    if len(keypoints_2d_px) == 0 or len(keypoints_2d_px) != len(pose_3d_cam_mm):
        raise ValueError("hpe_ray.normalization.compute_stats: need the same non-zero number of 2D and 3D "
                         f"poses, got {len(keypoints_2d_px)} and {len(pose_3d_cam_mm)}")
    if mode_2d == "scaled":
        return without_2d_scores(compute_stats(keypoints_2d_px, pose_3d_cam_mm, focal_px, center_px, "camera"))
    features_3d = drop_root(root_relative(pose_3d_cam_mm))
    features_2d = _features_2d(keypoints_2d_px, focal_px, center_px, mode_2d)
    return NormStats(
        mean_2d=features_2d.mean(0), std_2d=np.maximum(features_2d.std(0), STD_EPSILON),
        mean_3d=features_3d.mean(0), std_3d=np.maximum(features_3d.std(0), STD_EPSILON),
        mode_2d=mode_2d)


def normalize_2d(keypoints_2d_px, focal_px, center_px, stats: NormStats):
    """Model input: (..., 17, 2) px -> (..., 16, 2) z-scores. focal/center (..., 2) per sample
    or (2,); unused in "pixel" mode."""
    features = _features_2d(keypoints_2d_px, focal_px, center_px, stats.mode_2d)
    return (features - as_array_like(stats.mean_2d, features)) / as_array_like(stats.std_2d, features)


def normalize_3d(pose_3d_cam_mm, stats: NormStats):
    """Model target: (..., 17, 3) camera mm -> (..., 16, 3) z-scores of the root-relative pose."""
    features = drop_root(root_relative(pose_3d_cam_mm))
    return (features - as_array_like(stats.mean_3d, features)) / as_array_like(stats.std_3d, features)


def denormalize_3d(x, stats: NormStats):
    """Inverse of `normalize_3d`: (..., 16, 3) -> (..., 17, 3) mm, root at zero."""
    return add_root(x * as_array_like(stats.std_3d, x) + as_array_like(stats.mean_3d, x))


def without_2d_scores(stats: NormStats) -> NormStats:
    """The "scaled" mode's stats from any mode's: the same 3D stats, 2D mean 0 and std 1."""
    return NormStats(np.zeros_like(stats.mean_2d), np.ones_like(stats.std_2d), stats.mean_3d, stats.std_3d, "scaled")


def scale_2d(keypoints_2d):
    """(..., 17, 2) -> (..., 17, 2) relative to the root, divided by the RMS distance of the
    joints from the root (a pose's 2D size, whatever the camera distance or focal length)."""
    relative = keypoints_2d - keypoints_2d[..., ROOT:ROOT + 1, :]
    size = ((relative * relative).sum(-1).mean(-1) ** 0.5)[..., None, None]
    return relative / (size + 1e-9)


def _features_2d(keypoints_2d_px, focal_px, center_px, mode_2d: str):
    """(..., 17, 2) px -> (..., 16, 2) in the space of `mode_2d`, before z-scoring."""
    if mode_2d in ("camera", "scaled"):
        keypoints_2d_px = pixels_to_normalized(keypoints_2d_px, focal_px, center_px)
    if mode_2d == "scaled":
        keypoints_2d_px = scale_2d(keypoints_2d_px)
    return drop_root(keypoints_2d_px)


def _check_joints(x, expected: int, name: str) -> None:
    if x.ndim < 2 or x.shape[-2] != expected:
        raise ValueError(f"hpe_ray.normalization.{name}: expected shape (..., {expected}, D), got {tuple(x.shape)}")
