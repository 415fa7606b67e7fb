"""The batch dict every model input goes through: poses normalised with the training stats,
images scaled to the model's range. One place, so training, evaluation and inference agree."""

from __future__ import annotations

import torch

from hpe_ray.normalization import NormStats, normalize_2d, normalize_3d, root_relative

Batch = dict[str, torch.Tensor]


def pose_batch(keypoints_2d_px: torch.Tensor, pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor,
               stats: NormStats) -> Batch:
    """The pose entries of a batch (B = len(keypoints_2d_px)).

    keypoints_2d_px (B, 17, 2); pose_3d_cam_mm (B, 17, 3) camera mm, root kept; intrinsics (B, 9).
    Returns "pose_2d" (B, 16, 2) and "pose_3d" (B, 16, 3) normalised with `stats`,
    "pose_3d_cam_mm" (B, 17, 3) root-relative mm, "keypoints_2d_px" and "intrinsics" as given.
    """
    return {
        "pose_2d": normalize_2d(keypoints_2d_px, intrinsics[:, 0:2], intrinsics[:, 2:4], stats),
        "pose_3d": normalize_3d(pose_3d_cam_mm, stats),
        "pose_3d_cam_mm": root_relative(pose_3d_cam_mm),
        "keypoints_2d_px": keypoints_2d_px,
        "intrinsics": intrinsics,
    }


def images_to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """Crops (B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the RGB encoder's input."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
