"""The batch dict every model input goes through: poses normalised with the training stats,
images scaled to the model's range. One place, so training, evaluation and inference agree."""

from __future__ import annotations

import numpy as np
import torch

from hpe_ray.backend import array_module
from hpe_ray.normalization import NormStats, add_root, normalize_2d, normalize_3d, root_relative

Batch = dict[str, torch.Tensor]


def pose_batch(keypoints_2d_px: torch.Tensor, pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor,
               stats: NormStats, keypoint_scores: torch.Tensor | None = None) -> Batch:
    """The pose entries of a batch (B = len(keypoints_2d_px)).

    keypoints_2d_px (B, 17, 2); pose_3d_cam_mm (B, 17, 3) camera mm, root kept; intrinsics (B, 9);
    keypoint_scores (B, 17) detector confidences or None (exact 2D).
    Returns "pose_2d" (B, 16, 2) and "pose_3d" (B, 16, 3) normalised with `stats`,
    "pose_3d_cam_mm" (B, 17, 3) root-relative mm, "keypoints_2d_px" and "intrinsics" as given,
    and "keypoint_scores" when given (a scored model takes 1 for every joint without them).
    """
    batch = {
        "pose_2d": normalize_2d(keypoints_2d_px, intrinsics[:, 0:2], intrinsics[:, 2:4], stats),
        "pose_3d": normalize_3d(pose_3d_cam_mm, stats),
        "pose_3d_cam_mm": root_relative(pose_3d_cam_mm),
        "keypoints_2d_px": keypoints_2d_px,
        "intrinsics": intrinsics,
    }
    if keypoint_scores is not None:
        batch["keypoint_scores"] = keypoint_scores
    return batch


def scored_pose_2d(pose_2d, keypoint_scores):
    """The input of a scored 2D-pose encoder (data.keypoint_scores): normalised pose_2d (..., 16, 2)
    and confidences (..., 17) in [0, 1] -> (..., 17, 3) rows (x, y, score) per joint, the root's
    x, y zero. numpy or torch, following pose_2d."""
    if array_module(pose_2d) is torch:
        return torch.cat([add_root(pose_2d), torch.as_tensor(keypoint_scores).to(pose_2d)[..., None]], -1)
    return np.concatenate([add_root(pose_2d), np.asarray(keypoint_scores, pose_2d.dtype)[..., None]], -1)


def images_to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """Crops (B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the RGB encoder's input."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # in place: one float tensor, not three
