"""The one prediction path, in mm: what validation, `evaluate`, `predict`, figures and export share."""

from __future__ import annotations

import torch

from hpe_ray.models.build import unwrap_model
from hpe_ray.normalization import NormStats, denormalize_3d


@torch.no_grad()
def predict_pose_3d_mm(model: torch.nn.Module, inputs: torch.Tensor, modality: str, stats: NormStats,
                       hypotheses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3D poses from one encoder: (mean (B, 17, 3), samples (B, K, 17, 3)), mm, root at zero.

    inputs: "pose2d" (B, 16, 2) normalised or "rgb" (B, 3, S, S) in [-1, 1]. See
    `CrossModalVAE.lift`; the caller sets eval mode.
    """
    mean, samples = unwrap_model(model).lift(modality, inputs, hypotheses)
    return denormalize_3d(mean.float(), stats), denormalize_3d(samples.float(), stats)
