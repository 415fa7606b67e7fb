"""Poses on the device, shared by training, evaluation and inference (no Ray here).

Batches from raw 2D/3D arrays, the virtual-camera augmentation that lets a lifter work on
cameras it never saw, and the one prediction path (latent mean and K posterior samples, mm)
with its per-sample Protocol 1/2 errors, so validation, `evaluate` and `predict` agree.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from hpe_ray.camera import project_to_pixels
from hpe_ray.metrics import best_of_k, mpjpe, pa_mpjpe
from hpe_ray.models import BATCH_KEY
from hpe_ray.normalization import NormStats, denormalize_3d, normalize_2d, normalize_3d, root_relative
from hpe_ray.skeleton import JOINT_NAMES

# Virtual cameras: a full turn about the body's vertical axis, the camera raised or lowered by
# up to this angle, the person moved nearer or farther and the lens zoomed within these factors.
VIRTUAL_ELEVATION_DEG = 20.0
VIRTUAL_DEPTH_SCALE = (0.8, 1.25)
VIRTUAL_FOCAL_SCALE = (0.9, 1.1)
_THORAX = JOINT_NAMES.index("thorax")

Batch = dict[str, torch.Tensor]


def pose_batch(keypoints_2d_px: torch.Tensor, pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor,
               stats: NormStats) -> Batch:
    """The batch dict of `make_loader` (without images) from raw poses.

    keypoints_2d_px (N, 17, 2); pose_3d_cam_mm (N, 17, 3) camera mm, root kept; intrinsics (N, 9).
    """
    return {
        "pose_2d": normalize_2d(keypoints_2d_px, intrinsics[:, 0:2], intrinsics[:, 2:4], stats),
        "pose_3d": normalize_3d(pose_3d_cam_mm, stats),
        "pose_3d_cam_mm": root_relative(pose_3d_cam_mm),
        "keypoints_2d_px": keypoints_2d_px,
        "intrinsics": intrinsics,
    }


def rotation_about_axis(axis: torch.Tensor, angle_rad: torch.Tensor) -> torch.Tensor:
    """Rodrigues: unit axes (N, 3) and angles (N,) -> rotation matrices (N, 3, 3)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    sin, cos = torch.sin(angle_rad)[:, None, None], torch.cos(angle_rad)[:, None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(skew)
    return eye + sin * skew + (1 - cos) * (skew @ skew)


def virtual_camera_views(pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same bodies seen by random virtual cameras: (keypoints_2d_px, pose_3d_cam_mm, intrinsics).

    pose_3d_cam_mm (N, 17, 3) camera mm, root kept; intrinsics (N, 9). Each pose turns about
    its own vertical axis (pelvis -> thorax: the camera's tilt does not matter) through a random
    angle, tilts about the camera x axis (elevation), and its root moves along its viewing ray
    to a new depth; the focal length is scaled. Distortion and principal point stay the
    sample's, so the 2D keypoints keep the statistics of real images.
    """
    n, device, dtype = len(pose_3d_cam_mm), pose_3d_cam_mm.device, pose_3d_cam_mm.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        # Drawn on the CPU: a torch.Generator belongs to one device.
        return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).to(device, dtype)

    root = pose_3d_cam_mm[:, :1]
    body = pose_3d_cam_mm - root
    vertical = body[:, _THORAX] / body[:, _THORAX].norm(dim=-1, keepdim=True).clamp(min=1e-6)
    x_axis = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device).expand(n, 3)
    elevation_rad = math.radians(VIRTUAL_ELEVATION_DEG)
    rotation = (rotation_about_axis(x_axis, uniform(-elevation_rad, elevation_rad))
                @ rotation_about_axis(vertical, uniform(-math.pi, math.pi)))
    body = body @ rotation.transpose(1, 2)
    # Keep every joint at least one body radius in front of the camera.
    radius_mm = body.norm(dim=-1).amax(dim=-1)
    depth_mm = torch.maximum(root[:, 0, 2] * uniform(*VIRTUAL_DEPTH_SCALE), 2 * radius_mm)
    new_root = root / root[..., 2:3] * depth_mm[:, None, None]
    pose_new = body + new_root
    intrinsics_new = intrinsics.clone()
    intrinsics_new[:, 0:2] *= uniform(*VIRTUAL_FOCAL_SCALE)[:, None]
    return project_to_pixels(pose_new, intrinsics_new), pose_new, intrinsics_new


@torch.no_grad()
def predict_pose_3d_mm(model: torch.nn.Module, inputs: torch.Tensor, modality: str, stats: NormStats,
                       hypotheses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3D poses from one encoder: (mean (B, 17, 3), samples (B, K, 17, 3)), mm, root at zero.

    inputs: "pose2d" (B, 16, 2) normalised or "rgb" (B, 3, S, S). The mean decodes the latent
    mean; the K hypotheses decode samples of the input-conditioned posterior (a deterministic
    model repeats its one answer). The caller sets eval mode.
    """
    vae = getattr(model, "module", model)  # DDP wraps the model
    mu, logvar = vae.encode(modality, inputs)
    mean = vae.decode("pose3d", mu)
    if logvar is None:
        samples = mean[:, None].expand(-1, hypotheses, -1, -1)
    else:
        z = vae.reparameterize(mu.repeat_interleave(hypotheses, 0), logvar.repeat_interleave(hypotheses, 0))
        samples = vae.decode("pose3d", z).view(len(mu), hypotheses, *mean.shape[1:])
    return denormalize_3d(mean.float(), stats), denormalize_3d(samples.float(), stats)


def batch_errors(model: torch.nn.Module, batch: Batch, modality: str, stats: NormStats,
                 hypotheses: int) -> dict[str, torch.Tensor]:
    """Per-sample errors (B,) in mm, 17 joints, root at zero: Protocol 1 ("mpjpe") and 2
    ("pa_mpjpe") of the mean decoding, and both as best of K hypotheses."""
    mean_mm, samples_mm = predict_pose_3d_mm(model, batch[BATCH_KEY[modality]], modality, stats, hypotheses)
    truth_mm = batch["pose_3d_cam_mm"].float()
    truth_k = truth_mm[:, None].expand_as(samples_mm)
    return {
        "mpjpe": mpjpe(mean_mm, truth_mm),
        "pa_mpjpe": pa_mpjpe(mean_mm, truth_mm),
        "mpjpe_best_of_k": best_of_k(mpjpe(samples_mm, truth_k)),
        "pa_mpjpe_best_of_k": best_of_k(pa_mpjpe(samples_mm, truth_k)),
    }


def most_common_camera(intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(focal_px (2,), center_px (2,)) of the most frequent row of intrinsics (N, 9)."""
    rows = Counter(tuple(row) for row in np.asarray(intrinsics, np.float64)[:, :4].tolist())
    focal_and_center = np.asarray(rows.most_common(1)[0][0])
    return focal_and_center[:2], focal_and_center[2:]
