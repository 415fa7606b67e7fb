"""Losses of the cross-modal VAE: reconstruction, KL (normalised as in the thesis), reprojection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hpe_ray.camera import pixels_to_normalized, project_to_pixels

# Thesis choice per reconstructed modality: L1 keeps images sharper, MSE for z-scored poses.
DEFAULT_RECON_KIND = {"pose2d": "mse", "pose3d": "mse", "rgb": "l1"}


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean over all elements of the squared ("mse") or absolute ("l1") error; a scalar."""
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "mse":
        return F.mse_loss(recon, target)
    if kind == "l1":
        return F.l1_loss(recon, target)
    raise ValueError(f"unknown reconstruction loss kind {kind!r}; expected 'mse' or 'l1'")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, num_target_elements: int = 1) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent dims (B, D), averaged over the batch,
    divided by `num_target_elements`.

    The reconstruction loss is a mean per element, so dividing the KL by the number of elements of
    one reconstructed target (48 for a (16, 3) pose, 3*S*S for an image) keeps the thesis's balance
    of a summed reconstruction against a summed KL, whatever the target modality.
    """
    if num_target_elements < 1:
        raise ValueError(f"num_target_elements must be >= 1, got {num_target_elements}")
    kl_per_sample = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)
    return kl_per_sample.mean() / num_target_elements


def pair_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | None,
              beta: float, kind: str = "mse") -> dict[str, torch.Tensor]:
    """{"total", "recon", "kl"} scalars for one encoder -> decoder pair; total = recon + beta * kl.

    target: (B, ...) the reconstructed modality. logvar None (deterministic model): kl is 0.
    """
    recon_term = reconstruction_loss(recon, target, kind)
    if logvar is None:
        kl = recon_term.new_zeros(())
    else:
        kl = kl_divergence(mu, logvar, num_target_elements=target[0].numel())
    return {"total": recon_term + beta * kl, "recon": recon_term, "kl": kl}


def best_of_k_loss(hypotheses: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per sample the reconstruction loss of its closest hypothesis, averaged: a scalar.

    hypotheses (B, K, ...), target (B, ...). Only the winner of each sample gets a gradient, so
    the K hypotheses spread over the poses the input allows instead of all pulling to the mean.
    """
    if hypotheses.shape[0] != target.shape[0] or hypotheses.shape[2:] != target.shape[1:]:
        raise ValueError(f"hypotheses {tuple(hypotheses.shape)} do not match target {tuple(target.shape)}")
    error = (hypotheses - target[:, None]).flatten(2)
    per_hypothesis = error.pow(2).mean(-1) if kind == "mse" else error.abs().mean(-1)
    return per_hypothesis.amin(1).mean()


def estimate_root_translation(pose_3d_rootrel_mm: torch.Tensor, keypoints_2d_norm: torch.Tensor,
                              root_depth_mm: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-frame root position (B, 3) mm that best places a root-relative pose (B, J, 3) on its
    normalised 2D keypoints (B, J, 2), ignoring lens distortion.

    Full perspective, in closed form: for each joint, x (Z + tz) = X + tx and y (Z + tz) = Y + ty
    are linear in t = (tx, ty, tz); solved by least squares over all joints. With `root_depth_mm`
    (B,) given, tz is fixed and tx, ty are the per-joint means of the same equations.
    """
    x, y = keypoints_2d_norm[..., 0], keypoints_2d_norm[..., 1]
    px, py, pz = pose_3d_rootrel_mm.unbind(-1)
    if root_depth_mm is not None:
        tz = root_depth_mm.to(pose_3d_rootrel_mm.dtype)
        tx = (x * (pz + tz[:, None]) - px).mean(dim=1)
        ty = (y * (pz + tz[:, None]) - py).mean(dim=1)
        return torch.stack([tx, ty, tz], dim=-1)
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_x = torch.stack([ones, zeros, -x], dim=-1)          # (B, J, 3)
    rows_y = torch.stack([zeros, ones, -y], dim=-1)
    a = torch.cat([rows_x, rows_y], dim=1)                   # (B, 2J, 3)
    b = torch.cat([x * pz - px, y * pz - py], dim=1)         # (B, 2J)
    ata = a.transpose(1, 2) @ a
    atb = a.transpose(1, 2) @ b.unsqueeze(-1)
    return torch.linalg.solve(ata, atb).squeeze(-1)


def reprojection_loss(pred_pose_3d_cam_mm_rootrel: torch.Tensor, keypoints_2d_px: torch.Tensor,
                      intrinsics: torch.Tensor, root_depth_mm: torch.Tensor | None = None,
                      kind: str = "l1", min_depth_mm: float = 1.0) -> torch.Tensor:
    """Error between the projection of a predicted root-relative pose and the 2D keypoints; a scalar.

    pred_pose_3d_cam_mm_rootrel: (B, J, 3) mm, root at zero (the 3D label is not needed).
    keypoints_2d_px: (B, J, 2) full-image pixels. intrinsics: (B, 9) as Intrinsics.as_vector().
    root_depth_mm: (B,) known root depth, or None to estimate it (see estimate_root_translation).

    The root translation is solved with the pinhole model and the placed pose is then projected
    with the full Brown model, so the loss is exactly 0 for a consistent pose only when the
    camera has no distortion (Human3.6M's is small). The comparison is in normalised image
    coordinates ((uv - c) / f), so it does not depend on the camera's focal length. Depths are
    clamped at `min_depth_mm` so that an untrained network cannot divide by zero.
    """
    if pred_pose_3d_cam_mm_rootrel.shape[:-1] != keypoints_2d_px.shape[:-1]:
        raise ValueError(f"pose {tuple(pred_pose_3d_cam_mm_rootrel.shape)} and keypoints "
                         f"{tuple(keypoints_2d_px.shape)} differ in batch or joint count")
    if intrinsics.shape != (keypoints_2d_px.shape[0], 9):
        raise ValueError(f"intrinsics must be (B, 9), got {tuple(intrinsics.shape)}")
    # At least float32 and outside autocast: bf16 cannot resolve a pixel in normalised
    # coordinates, and linalg.solve has no half-precision kernel.
    dtype = torch.promote_types(pred_pose_3d_cam_mm_rootrel.dtype, torch.float32)
    with torch.autocast(pred_pose_3d_cam_mm_rootrel.device.type, enabled=False):
        pose_mm, intrinsics = pred_pose_3d_cam_mm_rootrel.to(dtype), intrinsics.to(dtype)
        focal_px, center_px = intrinsics[:, 0:2], intrinsics[:, 2:4]
        target_norm = pixels_to_normalized(keypoints_2d_px.to(dtype), focal_px, center_px)
        root_mm = estimate_root_translation(pose_mm, target_norm, root_depth_mm)
        placed = pose_mm + root_mm[:, None, :]
        placed = torch.cat([placed[..., :2], placed[..., 2:].clamp(min=min_depth_mm)], dim=-1)
        projected_norm = pixels_to_normalized(project_to_pixels(placed, intrinsics), focal_px, center_px)
        return reconstruction_loss(projected_norm, target_norm, kind)
