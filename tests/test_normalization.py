import json

import numpy as np
import pytest
import torch

from hpe_ray import camera, normalization
from hpe_ray.camera import Intrinsics
from hpe_ray.normalization import NormStats


def _poses(n: int = 50, seed: int = 0) -> np.ndarray:
    """(n, 17, 3) random bodies about 4.5 m in front of the camera, mm."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 17, 3)) * 250 + rng.normal(size=(n, 1, 3)) * [300, 100, 200] + [0, 0, 4500]


def _stats(mode_2d: str) -> tuple[NormStats, np.ndarray, np.ndarray]:
    """Stats of random poses seen by H36M camera 54138969, with the poses and intrinsics vectors."""
    poses = _poses()
    vectors = np.tile(camera.H36M_INTRINSICS["54138969"].as_vector(), (len(poses), 1))
    keypoints = camera.project_to_pixels(poses, vectors)
    stats = normalization.compute_stats(keypoints, poses, vectors[:, :2], vectors[:, 2:4], mode_2d)
    return stats, poses, vectors


def test_root_relative_drop_and_add_root():
    pose = _poses(2)
    relative = normalization.root_relative(pose)
    np.testing.assert_array_equal(relative[:, 0], 0)
    np.testing.assert_allclose(relative[:, 5], pose[:, 5] - pose[:, 0])
    dropped = normalization.drop_root(relative)
    assert dropped.shape == (2, 16, 3)
    np.testing.assert_array_equal(normalization.add_root(dropped), relative)
    assert normalization.add_root(torch.tensor(dropped)).shape == (2, 17, 3)
    with pytest.raises(ValueError, match="16"):
        normalization.add_root(relative)


def test_compute_stats_shapes_and_values():
    stats, poses, vectors = _stats("pixel")
    assert stats.mean_2d.shape == (16, 2) and stats.std_3d.shape == (16, 3)
    relative = poses - poses[:, :1]
    np.testing.assert_allclose(stats.mean_3d, relative[:, 1:].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std_3d, relative[:, 1:].std(0), rtol=1e-5)
    keypoints = camera.project_to_pixels(poses, vectors)
    # Pixel mode keeps absolute positions (not root-centred).
    np.testing.assert_allclose(stats.mean_2d, keypoints[:, 1:].mean(0), rtol=1e-5)


def test_constant_coordinate_gets_epsilon_std():
    poses = np.repeat(_poses(1), 4, axis=0)
    keypoints = poses[..., :2] / poses[..., 2:] * 1000 + 500
    stats = normalization.compute_stats(keypoints, poses, np.full(2, 1000.0), np.full(2, 500.0))
    assert np.all(stats.std_2d == np.float32(normalization.STD_EPSILON))
    assert np.all(np.isfinite(normalization.normalize_2d(keypoints, np.full(2, 1000.0), np.full(2, 500.0), stats)))


@pytest.mark.parametrize("mode_2d", ["scaled", "camera", "pixel"])
def test_stats_json_round_trip(mode_2d):
    stats, _, _ = _stats(mode_2d)
    back = NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back.mode_2d == mode_2d
    for name in ("mean_2d", "std_2d", "mean_3d", "std_3d"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))


def test_from_dict_names_missing_field():
    stats, _, _ = _stats("camera")
    data = stats.to_dict()
    del data["std_3d"]
    with pytest.raises(ValueError, match="std_3d"):
        NormStats.from_dict(data)
    with pytest.raises(ValueError, match="mode_2d"):
        NormStats(stats.mean_2d, stats.std_2d, stats.mean_3d, stats.std_3d, "metres")


def test_normalize_denormalize_3d_round_trip_numpy_and_torch():
    stats, poses, _ = _stats("camera")
    normalized = normalization.normalize_3d(poses, stats)
    assert normalized.shape == (50, 16, 3)
    # The training split itself is z-scored to mean 0, std 1.
    np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-4)
    back = normalization.denormalize_3d(normalized, stats)
    np.testing.assert_array_equal(back[:, 0], 0)
    np.testing.assert_allclose(back, poses - poses[:, :1], atol=1e-3)
    normalized_torch = normalization.normalize_3d(torch.tensor(poses, dtype=torch.float32), stats)
    np.testing.assert_allclose(normalized_torch.numpy(), normalized, atol=1e-4)
    back_torch = normalization.denormalize_3d(normalized_torch, stats)
    np.testing.assert_allclose(back_torch.numpy(), back, atol=1e-2)


def test_camera_mode_is_the_same_for_two_cameras():
    stats, poses, _ = _stats("camera")
    wide = Intrinsics(np.array([900.0, 905.0]), np.array([480.0, 520.0]), np.zeros(3), np.zeros(2), (960, 1040))
    tele = Intrinsics(np.array([1800.0, 1790.0]), np.array([640.0, 360.0]), np.zeros(3), np.zeros(2), (1280, 720))
    inputs = [normalization.normalize_2d(camera.project_to_pixels(poses, intr), intr.focal_px, intr.center_px, stats)
              for intr in (wide, tele)]
    assert inputs[0].shape == (50, 16, 2)
    np.testing.assert_allclose(inputs[0], inputs[1], atol=1e-9)
    # Pixel mode does see the difference.
    pixel_stats, _, _ = _stats("pixel")
    pixel_inputs = [normalization.normalize_2d(camera.project_to_pixels(poses, intr), None, None, pixel_stats)
                    for intr in (wide, tele)]
    assert np.abs(pixel_inputs[0] - pixel_inputs[1]).max() > 1


def test_normalize_2d_torch_per_sample_intrinsics_matches_numpy():
    stats, poses, vectors = _stats("camera")
    keypoints = camera.project_to_pixels(poses, vectors)
    expected = normalization.normalize_2d(keypoints, vectors[:, :2], vectors[:, 2:4], stats)
    vectors_torch = torch.tensor(vectors)
    got = normalization.normalize_2d(torch.tensor(keypoints), vectors_torch[:, :2], vectors_torch[:, 2:4], stats)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_scaled_mode_hand_values():
    """Root at the principal point, two joints: the input is the root-relative normalised
    coordinate divided by the RMS distance from the root over all 17 joints."""
    keypoints = np.zeros((17, 2))
    keypoints[:] = [500.0, 500.0]          # every joint on the root ...
    keypoints[1] = [500.0 + 170.0, 500.0]  # ... but joint 1, 170 px right (0.17 normalised at f = 1000)
    stats = NormStats(np.zeros((16, 2)), np.ones((16, 2)), np.zeros((16, 3)), np.ones((16, 3)), "scaled")
    features = normalization.normalize_2d(keypoints, np.array([1000.0, 1000.0]), np.array([500.0, 500.0]), stats)
    # RMS over 17 joints: sqrt(0.17^2 / 17); joint 1 becomes 0.17 / that = sqrt(17).
    np.testing.assert_allclose(features[0], [np.sqrt(17), 0.0], atol=1e-9)
    np.testing.assert_allclose(features[1:], 0.0, atol=1e-12)


def test_scaled_mode_ignores_camera_distance_focal_length_and_position():
    stats, poses, _ = _stats("scaled")
    np.testing.assert_array_equal(stats.mean_2d, 0.0)
    np.testing.assert_array_equal(stats.std_2d, 1.0)
    wide = Intrinsics(np.array([900.0, 905.0]), np.array([480.0, 520.0]), np.zeros(3), np.zeros(2), (960, 1040))
    tele = Intrinsics(np.array([1800.0, 1790.0]), np.array([640.0, 360.0]), np.zeros(3), np.zeros(2), (1280, 720))
    near = normalization.normalize_2d(camera.project_to_pixels(poses, wide), wide.focal_px, wide.center_px, stats)
    # Twice as far through a lens twice as long: the same image up to a shift, the same input.
    far = poses.copy()
    far[..., 2] *= 2
    far = normalization.normalize_2d(camera.project_to_pixels(far, tele), tele.focal_px, tele.center_px, stats)
    np.testing.assert_allclose(near, far, atol=1e-9)
    shifted = normalization.normalize_2d(camera.project_to_pixels(poses, wide) + [40.0, -25.0], wide.focal_px,
                                         wide.center_px, stats)
    np.testing.assert_allclose(shifted, near, atol=1e-9)
