"""The one prediction path, in mm: what validation, `evaluate`, `predict`, figures and export share."""

from __future__ import annotations

import torch

from hpe_ray.camera import fit_to_keypoints
from hpe_ray.models.build import unwrap_model
from hpe_ray.normalization import NormStats, denormalize_3d


@torch.no_grad()
def predict_pose_3d_mm(model: torch.nn.Module, inputs: torch.Tensor, modality: str, stats: NormStats,
                       hypotheses: int, keypoints_2d_normalized: torch.Tensor | None = None,
                       perspective: bool = True, keypoint_weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """3D poses from one encoder: (mean (B, 17, 3), samples (B, K, 17, 3)), mm, root at zero.

    inputs: "pose2d" (B, 16, 2) normalised or "rgb" (B, 3, S, S) in [-1, 1]. See
    `CrossModalVAE.lift`; the caller sets eval mode. keypoints_2d_normalized (B, 17, 2): the 2D
    as (u - c) / f, which a model built with fit_2d puts every pose on (`fit_to_keypoints`,
    weak perspective unless `perspective`, each joint weighted by keypoint_weights (B, 17), e.g.
    detector confidences, or 1); None leaves the poses as decoded.
    """
    core = unwrap_model(model)
    mean, samples = core.lift(modality, inputs, hypotheses)
    mean, samples = denormalize_3d(mean.float(), stats), denormalize_3d(samples.float(), stats)
    if keypoints_2d_normalized is not None and core.fit_2d:
        rays = keypoints_2d_normalized.to(mean)
        weights = None if keypoint_weights is None else keypoint_weights.to(mean)
        mean = fit_to_keypoints(mean, rays, perspective, weights)
        samples = fit_to_keypoints(samples, rays[:, None], perspective, None if weights is None else weights[:, None])
    return mean, samples
