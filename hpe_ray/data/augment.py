"""Training-time augmentation of poses on the device (torch): what lets a lifter work on
cameras, bodies and 2D detectors it never saw.

Every function takes a batch of camera-frame poses (N, 17, 3) mm with the root kept and draws
its randomness from a `torch.Generator` on the CPU (a generator belongs to one device), so an
epoch's augmentation is the same for the same seed on any device. `augment_views` chains them
as the training loop uses them; the pieces are public for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch

from hpe_ray.camera import project_to_pixels
from hpe_ray.config import AugmentConfig, DataConfig
from hpe_ray.rotation import axis_rotation
from hpe_ray.skeleton import (BONES, JOINT_NAMES, JOINT_NEIGHBOURS, LEFT_JOINTS, NUM_JOINTS, RIGHT_JOINTS,
                              flip_left_right)

_J = {name: i for i, name in enumerate(JOINT_NAMES)}
# Joints whose placement differs between mocap converters and 2D detectors, as shifted by
# `shift_keypoint_conventions`: four on the midline, then two left/right pairs (moved as mirror images).
CONVENTION_MIDLINE = ("spine", "thorax", "neck_nose", "head_top")
CONVENTION_PAIRS = (("right_hip", "left_hip"), ("right_shoulder", "left_shoulder"))
NUM_CONVENTION_PARTS = len(CONVENTION_MIDLINE) + len(CONVENTION_PAIRS)
# Bone i ends at joint BONES[i][1]; a left bone takes the scale of its right twin (symmetric bodies).
_BONE_OF_CHILD = {child: i for i, (_, child) in enumerate(BONES)}
_LEFT_BONES = [_BONE_OF_CHILD[j] for j in LEFT_JOINTS]
_RIGHT_BONES = [_BONE_OF_CHILD[j] for j in RIGHT_JOINTS]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(n,) uniform in [low, high), drawn on the CPU, returned on like's device and dtype."""
    values = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    return values.to(like.device, like.dtype)


def body_frames(pose_3d_cam_mm: torch.Tensor) -> torch.Tensor:
    """Each pose's own axes as unit columns (right, up, forward) of (N, 3, 3): up from the pelvis
    to the thorax, right from the left hip to the right hip made orthogonal to up, forward the
    way the chest faces."""
    up = pose_3d_cam_mm[:, _J["thorax"]] - pose_3d_cam_mm[:, _J["pelvis"]]
    up = up / up.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    right = pose_3d_cam_mm[:, _J["right_hip"]] - pose_3d_cam_mm[:, _J["left_hip"]]
    right = right - (right * up).sum(-1, keepdim=True) * up
    right = right / right.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return torch.stack([right, up, torch.linalg.cross(up, right)], dim=-1)


def shift_keypoint_conventions(pose_3d_cam_mm: torch.Tensor, offsets_body_mm: torch.Tensor) -> torch.Tensor:
    """Move the joints that converters and detectors place differently, leaving the rest.

    offsets_body_mm (N, 6, 3) in each body's frame (right, up, forward): rows for spine, thorax,
    neck_nose, head_top, then the hip pair and the shoulder pair, whose right joint moves by the
    offset and left joint by its mirror image (a positive "right" component places both wider).
    Returns (N, 17, 3): a copy with those joints moved.
    """
    frames = body_frames(pose_3d_cam_mm)
    offsets_cam = offsets_body_mm @ frames.transpose(1, 2)  # rows: body -> camera coordinates
    mirrored = offsets_body_mm * offsets_body_mm.new_tensor([-1.0, 1.0, 1.0])
    mirrored_cam = mirrored @ frames.transpose(1, 2)
    out = pose_3d_cam_mm.clone()
    for row, name in enumerate(CONVENTION_MIDLINE):
        out[:, _J[name]] += offsets_cam[:, row]
    for row, (right, left) in enumerate(CONVENTION_PAIRS, start=len(CONVENTION_MIDLINE)):
        out[:, _J[right]] += offsets_cam[:, row]
        out[:, _J[left]] += mirrored_cam[:, row]
    return out


def random_convention_offsets(n: int, max_shift_mm: float, generator: torch.Generator,
                              like: torch.Tensor) -> torch.Tensor:
    """(n, 6, 3) offsets for `shift_keypoint_conventions`, each component uniform in +-max_shift_mm."""
    values = torch.rand(n, NUM_CONVENTION_PARTS, 3, generator=generator, dtype=torch.float64) * 2 - 1
    return (values * max_shift_mm).to(like.device, like.dtype)


def scale_bones(pose_3d_cam_mm: torch.Tensor, bone_scales: torch.Tensor) -> torch.Tensor:
    """Each bone (BONES order) lengthened by its factor, directions kept, root fixed: (N, 17, 3).

    bone_scales (N, 16). Parents come before children in BONES, so one pass rebuilds the tree.
    """
    out = pose_3d_cam_mm.clone()
    for i, (parent, child) in enumerate(BONES):
        out[:, child] = out[:, parent] + (pose_3d_cam_mm[:, child] - pose_3d_cam_mm[:, parent]) * bone_scales[:, i:i + 1]
    return out


def random_bone_scales(n: int, body_scale: tuple[float, float], bone_spread: float, generator: torch.Generator,
                       like: torch.Tensor) -> torch.Tensor:
    """(n, 16) factors: one body size in body_scale times a per-bone factor in 1 +- bone_spread,
    the same for a left bone and its right twin."""
    body = _uniform(n, *body_scale, generator, like)[:, None]
    per_bone = _uniform(n * len(BONES), 1 - bone_spread, 1 + bone_spread, generator, like).view(n, len(BONES))
    per_bone[:, _LEFT_BONES] = per_bone[:, _RIGHT_BONES]
    return body * per_bone


# Virtual cameras roll by up to this angle and keep the root within this share of the half field of view.
VIRTUAL_ROLL_DEG = 5.0
VIRTUAL_FRAME_FILL = 0.7


def virtual_camera_views(pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor, generator: torch.Generator, *,
                         distance_mm: tuple[float, float], elevation_deg: tuple[float, float],
                         field_of_view_deg: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same bodies seen by random virtual cameras: (keypoints_2d_px, pose_3d_cam_mm, intrinsics).

    pose_3d_cam_mm (N, 17, 3) camera mm, root kept; intrinsics (N, 9); the ranges as (low, high)
    (the data.augment defaults are those of real rigs: lab cameras 2-8 m away looking down by up
    to 40 degrees, consumer lenses of 25-90 degree horizontal field of view). Each body turns
    through a random angle about the camera's vertical axis (its lean is kept), is seen from a
    random elevation and roll, and its root is put at a random distance in a random direction within the frame of a
    lens with a random field of view (focal length from the image width, taken as twice the
    principal point's x). Distortion and principal point stay the sample's.
    """
    n = len(pose_3d_cam_mm)
    like = pose_3d_cam_mm

    def angles_rad(low_deg: float, high_deg: float) -> torch.Tensor:
        return _uniform(n, math.radians(low_deg), math.radians(high_deg), generator, like)

    body = pose_3d_cam_mm - pose_3d_cam_mm[:, :1]
    # Camera x right, y down, z forward: from a camera looking down by e, the body's up axis
    # (0, -1, 0) becomes (0, -cos e, -sin e), a rotation by +e about x.
    rotation = (axis_rotation("z", angles_rad(-VIRTUAL_ROLL_DEG, VIRTUAL_ROLL_DEG))
                @ axis_rotation("x", angles_rad(*elevation_deg))
                @ axis_rotation("y", angles_rad(-180.0, 180.0)))
    body = body @ rotation.transpose(1, 2)
    half_fov_tan = torch.tan(angles_rad(*field_of_view_deg) / 2)
    intrinsics_new = intrinsics.clone()
    intrinsics_new[:, 0:2] = (intrinsics[:, 2] / half_fov_tan)[:, None]  # f = (width / 2) / tan(fov / 2)
    # The root's direction: tangents of its angles off the optical axis (the frame is 4:3 or wider).
    reach = VIRTUAL_FRAME_FILL * half_fov_tan
    tan_x = _uniform(n, -1.0, 1.0, generator, like) * reach
    tan_y = _uniform(n, -0.75, 0.75, generator, like) * reach
    radius_mm = body.norm(dim=-1).amax(dim=-1)
    distance = torch.maximum(_uniform(n, *distance_mm, generator, like), 2 * radius_mm)
    direction = torch.stack([tan_x, tan_y, torch.ones_like(tan_x)], -1)
    pose_new = body + (direction / direction.norm(dim=-1, keepdim=True) * distance[:, None])[:, None]
    return project_to_pixels(pose_new, intrinsics_new), pose_new, intrinsics_new


def keypoint_noise(keypoints_2d_px: torch.Tensor, max_sigma: float, generator: torch.Generator) -> torch.Tensor:
    """2D keypoints with Gaussian noise like a detector's: sigma per sample uniform in
    [0, max_sigma] times the height of its 2D pose (the noise scales with the person's size)."""
    n = len(keypoints_2d_px)
    height_px = keypoints_2d_px[..., 1].amax(-1) - keypoints_2d_px[..., 1].amin(-1)
    sigma = _uniform(n, 0.0, max_sigma, generator, keypoints_2d_px) * height_px
    noise = torch.randn(keypoints_2d_px.shape, generator=generator, dtype=torch.float64).to(keypoints_2d_px)
    return keypoints_2d_px + noise * sigma[:, None, None]


# The simulated detector of data.keypoint_scores. Visible joints score Beta(VISIBLE_SCORE_SHAPE, 1):
# mean 0.9, below 0.5 for 0.2 % of them. Occluded joints score uniformly below OCCLUDED_SCORE_MAX,
# the confidence under which `predict` fills a joint (hpe_ray.inference.formats.DEFAULT_MIN_SCORE),
# and OCCLUDED_ON_NEIGHBOUR of them sit on a neighbouring joint (a detector confusing the two).
VISIBLE_SCORE_SHAPE = 9.0
OCCLUDED_SCORE_MAX = 0.3
OCCLUDED_ON_NEIGHBOUR = 0.5
_NEIGHBOUR_COUNT = torch.tensor([len(n) for n in JOINT_NEIGHBOURS])
_NEIGHBOUR_TABLE = torch.tensor([n + n[:1] * (4 - len(n)) for n in JOINT_NEIGHBOURS])  # (17, 4), padded


def random_occlusion(n: int, share: float, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """(n, 17) bool: each joint occluded with probability `share`, independently."""
    return (torch.rand(n, NUM_JOINTS, generator=generator) < share).to(device)


def detector_scores(occluded: torch.Tensor, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(N, 17) confidences in [0, 1] on like's device and dtype for occluded (N, 17) bool: visible
    joints Beta(VISIBLE_SCORE_SHAPE, 1) (drawn as U ** (1 / shape)) raised to OCCLUDED_SCORE_MAX
    where lower (2e-5 of them), occluded ones uniform in [0, OCCLUDED_SCORE_MAX)."""
    u = torch.rand(occluded.shape, generator=generator, dtype=torch.float64)
    visible = (u ** (1.0 / VISIBLE_SCORE_SHAPE)).clamp(min=OCCLUDED_SCORE_MAX)
    scores = torch.where(occluded.cpu(), u * OCCLUDED_SCORE_MAX, visible)
    return scores.to(like.device, like.dtype)


def occlude_keypoints(keypoints_2d_px: torch.Tensor, occluded: torch.Tensor, shift: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Occluded joints where a detector would guess them: (N, 17, 2) px, the others unchanged.

    keypoints_2d_px (N, 17, 2); occluded (N, 17) bool. OCCLUDED_ON_NEIGHBOUR of the occluded
    joints take a random skeleton neighbour's position (as given), the rest move by Gaussian noise
    of sigma shift x the height of their 2D pose (shift 0.1: 40 px on a person 400 px tall).
    """
    n = len(keypoints_2d_px)
    u = torch.rand(n, NUM_JOINTS, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, NUM_JOINTS, 2, generator=generator, dtype=torch.float64).to(keypoints_2d_px)
    height_px = keypoints_2d_px[..., 1].amax(-1) - keypoints_2d_px[..., 1].amin(-1)
    displaced = keypoints_2d_px + noise * (shift * height_px)[:, None, None]
    pick = (u[..., 1] * _NEIGHBOUR_COUNT).long()  # which neighbour: uniform over each joint's
    neighbour = _NEIGHBOUR_TABLE.gather(1, pick.T).T.to(keypoints_2d_px.device)  # (N, 17) joint indices
    on_neighbour = keypoints_2d_px.gather(1, neighbour[..., None].expand(-1, -1, 2))
    guess = torch.where((u[..., :1] < OCCLUDED_ON_NEIGHBOUR).to(keypoints_2d_px.device), on_neighbour, displaced)
    return torch.where(occluded[..., None], guess, keypoints_2d_px)


def simulate_detector(keypoints_2d_px: torch.Tensor, aug: AugmentConfig,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 2D as a detector would give it: (keypoints_2d_px (N, 17, 2), scores (N, 17)), a share
    aug.occluded_joints of the joints occluded (`occlude_keypoints`, `detector_scores`)."""
    occluded = random_occlusion(len(keypoints_2d_px), aug.occluded_joints, generator, keypoints_2d_px.device)
    keypoints = occlude_keypoints(keypoints_2d_px, occluded, aug.occluded_shift, generator)
    return keypoints, detector_scores(occluded, generator, keypoints_2d_px)


def augment_views(keypoints_2d_px: torch.Tensor, pose_3d_cam_mm: torch.Tensor, intrinsics: torch.Tensor,
                  data: DataConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's training views: (keypoints_2d_px (N, 17, 2), pose_3d_cam_mm (N, 17, 3), intrinsics (N, 9)).

    Shares of the poses (data.augment) get other bone lengths, other keypoint conventions and a
    left-right mirror, in 3D, then are projected again; data.virtual_camera_fraction of them is
    seen through a random virtual camera; then 2D noise. Untouched poses keep their 2D as stored
    (which may come from a real detector).
    """
    aug = data.augment
    n = len(pose_3d_cam_mm)

    def chosen(share: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < share).to(pose_3d_cam_mm.device)

    keypoints_2d_px, pose_3d_cam_mm, intrinsics = keypoints_2d_px.clone(), pose_3d_cam_mm.clone(), intrinsics.clone()
    changed = torch.zeros(n, dtype=torch.bool, device=pose_3d_cam_mm.device)
    if aug.bone_fraction > 0:
        rows = chosen(aug.bone_fraction)
        scales = random_bone_scales(int(rows.sum()), aug.body_scale, aug.bone_spread, generator, pose_3d_cam_mm)
        pose_3d_cam_mm[rows] = scale_bones(pose_3d_cam_mm[rows], scales)
        changed |= rows
    if aug.convention_fraction > 0:
        rows = chosen(aug.convention_fraction)
        offsets = random_convention_offsets(int(rows.sum()), aug.convention_shift_mm, generator, pose_3d_cam_mm)
        pose_3d_cam_mm[rows] = shift_keypoint_conventions(pose_3d_cam_mm[rows], offsets)
        changed |= rows
    if aug.flip > 0:
        rows = chosen(aug.flip)
        pose_3d_cam_mm[rows] = flip_left_right(pose_3d_cam_mm[rows])
        changed |= rows
    keypoints_2d_px[changed] = project_to_pixels(pose_3d_cam_mm[changed], intrinsics[changed])
    if data.virtual_camera_fraction > 0:
        rows = chosen(data.virtual_camera_fraction)
        keypoints_2d_px[rows], pose_3d_cam_mm[rows], intrinsics[rows] = virtual_camera_views(
            pose_3d_cam_mm[rows], intrinsics[rows], generator, distance_mm=aug.camera_distance_mm,
            elevation_deg=aug.camera_elevation_deg, field_of_view_deg=aug.field_of_view_deg)
    if aug.keypoint_noise > 0:
        keypoints_2d_px = keypoint_noise(keypoints_2d_px, aug.keypoint_noise, generator)
    return keypoints_2d_px, pose_3d_cam_mm, intrinsics
