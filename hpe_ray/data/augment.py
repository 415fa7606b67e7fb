"""Training-time augmentation of poses on the device (torch): what lets a lifter work on views
it never saw."""

from __future__ import annotations

import math

import torch

from hpe_ray.camera import project_to_pixels
from hpe_ray.rotation import rotation_about_axis
from hpe_ray.skeleton import JOINT_NAMES

# Virtual cameras: a full turn about the body's vertical axis, the camera raised or lowered by
# up to this angle, the person moved nearer or farther and the lens zoomed within these factors.
VIRTUAL_ELEVATION_DEG = 20.0
VIRTUAL_DEPTH_SCALE = (0.8, 1.25)
VIRTUAL_FOCAL_SCALE = (0.9, 1.1)
_THORAX = JOINT_NAMES.index("thorax")


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
