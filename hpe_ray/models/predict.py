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
    as (u - c) / f, which a model built with fit_2d > 0 moves every pose towards, that far
    (`fit_to_keypoints`, weak perspective unless `perspective`, each joint weighted by fit_2d
    times keypoint_weights (B, 17), e.g. detector confidences, or 1); None leaves the poses as
    decoded.
    """
    core = unwrap_model(model)
    mean, samples = core.lift(modality, inputs, hypotheses)
    mean, samples = denormalize_3d(mean.float(), stats), denormalize_3d(samples.float(), stats)
    if keypoints_2d_normalized is not None and core.fit_2d > 0:
        rays = keypoints_2d_normalized.to(mean)
        weights = fit_weights(core.fit_2d, keypoint_weights, rays)
        mean = fit_to_keypoints(mean, rays, perspective, weights)
        samples = fit_to_keypoints(samples, rays[:, None], perspective, weights[:, None])
    return mean, samples


def fit_weights(fit_2d: float, keypoint_weights: torch.Tensor | None, rays: torch.Tensor) -> torch.Tensor:
    """Per-joint weights (B, 17) of the fit to the 2D: the model's fit_2d strength times the
    detector's confidences clamped to [0, 1] (None: 1). A constant strength leaves the root
    depth of the fit unchanged and moves each joint that share of the way onto its ray."""
    confidences = torch.ones_like(rays[..., 0]) if keypoint_weights is None else keypoint_weights.to(rays).clamp(0, 1)
    return fit_2d * confidences
