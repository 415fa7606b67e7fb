"""Lifting augmentation (hpe_ray.data.augment): hand values on small poses."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import camera_poses_mm, h36m_intrinsics
from hpe_ray.camera import project_to_pixels
from hpe_ray.config import Config
from hpe_ray.data.augment import (augment_views, body_frames, keypoint_noise, random_bone_scales,
                                  random_convention_offsets, scale_bones, shift_keypoint_conventions,
                                  virtual_camera_views)
from hpe_ray.skeleton import LEFT_JOINTS, RIGHT_JOINTS, bone_lengths

RANGES = dict(distance_mm=(2000.0, 8000.0), elevation_deg=(-10.0, 40.0), field_of_view_deg=(25.0, 90.0))


def test_body_frame_of_a_person_facing_the_camera():
    frames = body_frames(camera_poses_mm(1))[0]
    # right: towards the right hip (camera -x); up: camera -y; forward: towards the camera (-z).
    torch.testing.assert_close(frames, torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]).T)


def test_convention_shift_moves_only_the_named_joints_hand_values():
    pose = camera_poses_mm(1)
    offsets = torch.zeros(1, 6, 3)
    offsets[0, 3] = torch.tensor([0.0, 10.0, 20.0])   # head top: 10 mm up, 20 mm forward
    offsets[0, 4] = torch.tensor([30.0, 0.0, 0.0])    # hips: 30 mm wider each
    shifted = shift_keypoint_conventions(pose, offsets)
    moved = (shifted - pose)[0]
    torch.testing.assert_close(moved[10], torch.tensor([0.0, -10.0, -20.0]))
    torch.testing.assert_close(moved[1], torch.tensor([-30.0, 0.0, 0.0]))   # right hip further right
    torch.testing.assert_close(moved[4], torch.tensor([30.0, 0.0, 0.0]))    # left hip further left
    untouched = [j for j in range(17) if j not in (1, 4, 10)]
    assert moved[untouched].abs().max() == 0
    draws = random_convention_offsets(1000, 50.0, torch.Generator().manual_seed(0), pose)
    assert draws.shape == (1000, 6, 3) and draws.abs().max() <= 50.0 and draws.abs().max() > 45.0


def test_scale_bones_keeps_directions_and_moves_children_along():
    pose = camera_poses_mm(2)
    scales = torch.ones(2, 16)
    scales[:, 1] = 2.0  # bone 1 ends at the right knee
    out = scale_bones(pose, scales)
    torch.testing.assert_close(bone_lengths(out), bone_lengths(pose) * scales)
    knee_shift = out[:, 2] - pose[:, 2]
    torch.testing.assert_close(knee_shift, pose[:, 2] - pose[:, 1])        # the thigh doubled
    torch.testing.assert_close(out[:, 3] - pose[:, 3], knee_shift)          # the ankle follows the knee
    torch.testing.assert_close(out[:, [0, 4, 5, 6]], pose[:, [0, 4, 5, 6]])  # root and the other leg stay


def test_random_bone_scales_are_symmetric_and_in_range():
    scales = random_bone_scales(500, (0.9, 1.1), 0.1, torch.Generator().manual_seed(0), torch.zeros(1))
    bone_of_child = lambda joint: joint - 1  # noqa: E731  BONES' children are 1..16 in order
    for left, right in zip(LEFT_JOINTS, RIGHT_JOINTS):
        assert torch.equal(scales[:, bone_of_child(left)], scales[:, bone_of_child(right)])
    assert scales.min() >= 0.9 * 0.9 and scales.max() <= 1.1 * 1.1


def test_virtual_camera_views_is_a_rigid_motion_seen_by_a_consistent_camera():
    poses, intrinsics = camera_poses_mm(256), h36m_intrinsics(256)
    keypoints_px, poses_new, intrinsics_new = virtual_camera_views(poses, intrinsics, torch.Generator().manual_seed(1),
                                                                   **RANGES)
    # Rigid: every distance between joints is kept.
    assert torch.allclose(torch.cdist(poses_new, poses_new), torch.cdist(poses, poses), atol=1e-2)
    assert (poses_new[..., 2] > 0).all()
    assert torch.allclose(keypoints_px, project_to_pixels(poses_new, intrinsics_new), atol=1e-3)
    distance = poses_new[:, 0].norm(dim=-1)
    assert distance.min() >= 2000 - 1e-3 and distance.max() <= 8000 + 1e-3 and distance.max() > 7000
    fov_deg = torch.rad2deg(2 * torch.atan(intrinsics[:, 2] / intrinsics_new[:, 0]))
    assert fov_deg.min() >= 25 - 1e-3 and fov_deg.max() <= 90 + 1e-3
    assert torch.equal(intrinsics_new[:, 2:], intrinsics[:, 2:])
    # The root stays inside the frame: within 70 % of the half field of view.
    tan_off_axis = poses_new[:, 0, 0].abs() / poses_new[:, 0, 2]
    assert (tan_off_axis <= 0.7 * torch.tan(torch.deg2rad(fov_deg) / 2) + 1e-4).all()


def test_virtual_camera_elevation_tips_the_body_away_hand_value():
    """Seen from 30 degrees above, the body's up axis (0, -1, 0) becomes (., -cos 30, -sin 30):
    the roll (about z) and the turn (about the vertical) leave its z component alone."""
    poses = camera_poses_mm(64)
    _, poses_new, _ = virtual_camera_views(poses, h36m_intrinsics(64), torch.Generator().manual_seed(2),
                                           distance_mm=(4000.0, 4000.0), elevation_deg=(30.0, 30.0),
                                           field_of_view_deg=(60.0, 60.0))
    up = poses_new[:, 8] - poses_new[:, 0]
    up = up / up.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(up[:, 2], torch.full((64,), -math.sin(math.radians(30))), atol=1e-5, rtol=0)


def test_keypoint_noise_scales_with_the_pose_height():
    keypoints = project_to_pixels(camera_poses_mm(2000), h36m_intrinsics(2000))
    assert torch.equal(keypoint_noise(keypoints, 0.0, torch.Generator().manual_seed(0)), keypoints)
    noisy = keypoint_noise(keypoints, 0.02, torch.Generator().manual_seed(0))
    height_px = keypoints[..., 1].amax(-1) - keypoints[..., 1].amin(-1)
    # sigma ~ U(0, 0.02) * height: E[sigma^2] = 0.02^2 / 3 * height^2.
    relative = (noisy - keypoints) / height_px[:, None, None]
    assert relative.pow(2).mean().sqrt().item() == pytest.approx(0.02 / math.sqrt(3), rel=0.05)


def test_augment_views_off_is_the_identity_and_on_stays_consistent():
    poses, intrinsics = camera_poses_mm(64), h36m_intrinsics(64)
    keypoints = project_to_pixels(poses, intrinsics) + 3.0  # "detector" 2D that is not a projection
    off = Config().with_overrides({"data.virtual_camera_fraction": 0.0, "data.augment.bone_fraction": 0.0,
                                   "data.augment.convention_fraction": 0.0, "data.augment.flip": 0.0,
                                   "data.augment.keypoint_noise": 0.0}).data
    out = augment_views(keypoints, poses, intrinsics, off, torch.Generator().manual_seed(0))
    for got, expected in zip(out, (keypoints, poses, intrinsics)):
        assert torch.equal(got, expected)
    on = Config().with_overrides({"data.virtual_camera_fraction": 0.0, "data.augment.bone_fraction": 1.0,
                                  "data.augment.convention_fraction": 1.0, "data.augment.flip": 1.0,
                                  "data.augment.keypoint_noise": 0.0}).data
    keypoints_new, poses_new, intrinsics_new = augment_views(keypoints, poses, intrinsics, on,
                                                             torch.Generator().manual_seed(0))
    torch.testing.assert_close(keypoints_new, project_to_pixels(poses_new, intrinsics_new))
    assert torch.equal(intrinsics_new, intrinsics) and (poses_new - poses).abs().max() > 10
