import numpy as np
import pytest
import torch

from hpe_ray import camera
from hpe_ray.camera import Extrinsics, Intrinsics


def _no_distortion(fx, fy, cx, cy) -> Intrinsics:
    return Intrinsics(np.array([fx, fy]), np.array([cx, cy]), np.zeros(3), np.zeros(2), (1000, 1000))


def test_h36m_intrinsics_public_values():
    assert tuple(camera.H36M_INTRINSICS) == camera.H36M_CAMERA_IDS
    first = camera.H36M_INTRINSICS["54138969"]
    assert first.image_size == (1000, 1002)
    assert camera.H36M_INTRINSICS["55011271"].image_size == (1000, 1000)
    np.testing.assert_allclose(first.focal_px, [1145.0494384765625, 1143.7811279296875])
    np.testing.assert_allclose(camera.H36M_INTRINSICS["60457274"].tangential,
                               [-0.0005872055771760643, -0.0018133620033040643])


def test_intrinsics_vector_round_trip():
    intrinsics = camera.H36M_INTRINSICS["58860488"]
    vector = intrinsics.as_vector()
    assert vector.shape == (9,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector[:4], [1149.1407470703125, 1148.7989501953125, 519.8158569335938,
                                            501.40264892578125])
    back = Intrinsics.from_vector(vector, intrinsics.image_size)
    np.testing.assert_array_equal(back.as_vector(), vector)
    assert back.image_size == (1000, 1000)


def test_per_sample_pixels_broadcasts_one_pair_and_names_a_bad_shape():
    np.testing.assert_array_equal(camera.per_sample_pixels([1000, 1100], 3, "focal_px"), [[1000, 1100]] * 3)
    one_each = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(camera.per_sample_pixels(one_each, 2, "center_px"), one_each)
    with pytest.raises(ValueError, match=r"center_px has shape \(3, 2\), expected \(2,\) or \(2, 2\) pixels"):
        camera.per_sample_pixels(np.zeros((3, 2)), 2, "center_px")


def test_intrinsics_reject_bad_shapes():
    with pytest.raises(ValueError, match="radial"):
        Intrinsics(np.ones(2), np.ones(2), np.zeros(2), np.zeros(2), (10, 10))
    with pytest.raises(ValueError, match="shape"):
        Intrinsics.from_vector(np.zeros(8), (10, 10))


def test_point_on_optical_axis_projects_to_centre():
    intrinsics = camera.H36M_INTRINSICS["54138969"]
    uv = camera.project_to_pixels(np.array([[0.0, 0.0, 4500.0]]), intrinsics)
    np.testing.assert_allclose(uv, [intrinsics.center_px], atol=1e-9)


def test_projection_with_distortion_hand_computed():
    intrinsics = Intrinsics(np.array([1000.0, 1100.0]), np.array([500.0, 400.0]),
                            np.array([0.1, 0.01, 0.001]), np.array([0.002, -0.001]), (1000, 1000))
    # xx = (0.1, -0.05), r2 = 0.0125
    # radial = 1 + 0.1 r2 + 0.01 r2^2 + 0.001 r2^3 = 1.001251564453125
    # tan = p . xx = 0.0002 + 0.00005 = 0.00025
    # xxx = xx (radial + tan) + p r2 = (0.1001751564453125, -0.05008757822265625)
    # uv = f xxx + c
    expected = [600.1751564453125, 344.903663955078125]
    uv = camera.project_to_pixels(np.array([[300.0, -150.0, 3000.0]]), intrinsics)
    # Intrinsics are stored as float32 in the vector form, hence the tolerance.
    np.testing.assert_allclose(uv[0], expected, atol=1e-4)


def test_projection_torch_matches_numpy_with_per_sample_intrinsics():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 17, 3)) * 300 + [0, 0, 4000]
    vectors = np.stack([camera.H36M_INTRINSICS[c].as_vector() for c in camera.H36M_CAMERA_IDS[:3]])
    uv = camera.project_to_pixels(points, vectors)
    assert uv.shape == (3, 17, 2)
    for i, camera_id in enumerate(camera.H36M_CAMERA_IDS[:3]):
        np.testing.assert_allclose(uv[i], camera.project_to_pixels(points[i], camera.H36M_INTRINSICS[camera_id]))
    uv_torch = camera.project_to_pixels(torch.tensor(points), torch.tensor(vectors))
    np.testing.assert_allclose(uv_torch.numpy(), uv, rtol=1e-6)


def test_pixels_normalized_round_trip_and_torch():
    keypoints = np.random.default_rng(1).uniform(0, 1000, size=(2, 17, 2))
    focal = np.array([[1000.0, 1100.0], [1150.0, 1140.0]])
    center = np.array([[500.0, 400.0], [510.0, 505.0]])
    normalized = camera.pixels_to_normalized(keypoints, focal, center)
    np.testing.assert_allclose(normalized[0, 3], (keypoints[0, 3] - center[0]) / focal[0])
    np.testing.assert_allclose(camera.normalized_to_pixels(normalized, focal, center), keypoints)
    normalized_torch = camera.pixels_to_normalized(torch.tensor(keypoints), torch.tensor(focal), center)
    np.testing.assert_allclose(normalized_torch.numpy(), normalized)


def test_normalized_coordinates_undo_projection_without_distortion():
    points = np.array([[100.0, -200.0, 2500.0], [-400.0, 50.0, 5000.0]])
    intrinsics = _no_distortion(1200.0, 1180.0, 490.0, 510.0)
    uv = camera.project_to_pixels(points, intrinsics)
    np.testing.assert_allclose(camera.pixels_to_normalized(uv, intrinsics.focal_px, intrinsics.center_px),
                               points[:, :2] / points[:, 2:], atol=1e-12)


def test_fit_to_keypoints_hand_values():
    """Root 5 m away on the optical axis (ray 0), joint 1's keypoint on ray (0.02, 0), joint 2's
    on (0, -0.05). Predicted: joint 1 at (150, 10, 0) mm, joint 2 at (0, -400, 1000) mm."""
    pose = np.zeros((1, 17, 3))
    pose[0, 1], pose[0, 2] = [150.0, 10.0, 0.0], [0.0, -400.0, 1000.0]
    rays = np.zeros((1, 17, 2))
    rays[0, 1], rays[0, 2] = [0.02, 0.0], [0.0, -0.05]
    # Z0 = (0.02 * 150 + -0.05 * (-400 - -0.05 * 1000)) / (0.02^2 + 0.05^2) = 20.5 / 0.0029
    root_depth = 20.5 / 0.0029
    fitted = camera.fit_to_keypoints(pose, rays)
    np.testing.assert_allclose(fitted[0, 1], [0.02 * root_depth, 0.0, 0.0])
    np.testing.assert_allclose(fitted[0, 2], [0.0, -0.05 * (root_depth + 1000.0), 1000.0])
    np.testing.assert_allclose(fitted[0, 3:], 0.0)
    # Weak perspective: Z0 = (0.02 * 150 + 0.05 * 400) / 0.0029, no parallax term.
    weak = camera.fit_to_keypoints(pose, rays, perspective=False)
    np.testing.assert_allclose(weak[0, 2], [0.0, -0.05 * 23.0 / 0.0029, 1000.0])
    # Joint 2 at weight 0 (a missed keypoint) keeps its x, y and leaves Z0 to joint 1:
    # Z0 = 0.02 * 150 / 0.02^2 = 7500, the fit (150, 0); at weight 0.5 joint 1's y goes half way.
    weights = np.ones((1, 17))
    weights[0, 2] = 0.0
    missed = camera.fit_to_keypoints(pose, rays, weights=weights)
    np.testing.assert_allclose(missed[0, 1], [150.0, 0.0, 0.0])
    np.testing.assert_allclose(missed[0, 2], pose[0, 2])
    weights[0, 1] = 0.5
    np.testing.assert_allclose(camera.fit_to_keypoints(pose, rays, weights=weights)[0, 1], [150.0, 5.0, 0.0])
    # torch gives the same; a pose whose keypoints all coincide, or fitted behind the camera, stays.
    torch_fitted = camera.fit_to_keypoints(torch.as_tensor(pose), torch.as_tensor(rays))
    np.testing.assert_allclose(torch_fitted.numpy(), fitted)
    np.testing.assert_array_equal(camera.fit_to_keypoints(pose, np.zeros_like(rays)), pose)
    np.testing.assert_array_equal(camera.fit_to_keypoints(pose, -rays * 10), pose)


def test_fit_to_keypoints_keeps_a_pose_that_projects_onto_them():
    rng = np.random.default_rng(0)
    pose = rng.normal(0, 300, (4, 17, 3))
    pose[:, 0] = 0
    root = np.array([200.0, -100.0, 4000.0])
    rays = (pose + root)[..., :2] / (pose + root)[..., 2:]
    np.testing.assert_allclose(camera.fit_to_keypoints(pose, rays), pose, atol=1e-9)


def test_quaternion_identity_and_quarter_turn():
    np.testing.assert_allclose(camera.quaternion_to_matrix([1.0, 0.0, 0.0, 0.0]), np.eye(3))
    # 90 degrees about z (not normalised on purpose): x -> y.
    rotation = camera.quaternion_to_matrix([2.0, 0.0, 0.0, 2.0])
    np.testing.assert_allclose(rotation @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)


def test_world_camera_round_trip_and_videopose3d_quaternion():
    # A VideoPose3D camera (S1, 54138969): camera-to-world quaternion, position in mm.
    extrinsics = Extrinsics.from_quaternion(
        [0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088],
        [1841.1070556640625, 4955.28466796875, 1563.4454345703125])
    points = np.random.default_rng(2).normal(size=(5, 17, 3)) * 500
    points_cam = camera.world_to_camera(points, extrinsics)
    np.testing.assert_allclose(camera.camera_to_world(points_cam, extrinsics), points, atol=1e-9)
    np.testing.assert_allclose(camera.world_to_camera(extrinsics.position_world_mm, extrinsics), 0, atol=1e-9)
    # The subject stands near the world origin, in front of the camera.
    assert camera.world_to_camera(np.zeros(3), extrinsics)[2] > 0


def test_look_at_sees_target_on_optical_axis_upright():
    extrinsics = camera.look_at([3000.0, -4000.0, 1600.0], [0.0, 0.0, 900.0])
    target_cam = camera.world_to_camera(np.array([0.0, 0.0, 900.0]), extrinsics)
    np.testing.assert_allclose(target_cam[:2], 0, atol=1e-9)
    assert target_cam[2] == pytest.approx(np.linalg.norm([3000.0, -4000.0, 700.0]))
    # Higher in the world is up in the image (smaller y); the rotation is proper.
    head_cam = camera.world_to_camera(np.array([0.0, 0.0, 1700.0]), extrinsics)
    assert head_cam[1] < 0
    assert np.linalg.det(extrinsics.rotation_world_to_cam) == pytest.approx(1.0)


def test_look_at_axes_right_down_forward():
    # Looking along world +y with z up, world +x is to the right.
    extrinsics = camera.look_at([0.0, -5000.0, 1000.0], [0.0, 0.0, 1000.0])
    np.testing.assert_allclose(extrinsics.rotation_world_to_cam, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)


def test_look_at_rejects_degenerate_direction():
    with pytest.raises(ValueError, match="parallel"):
        camera.look_at([0.0, 0.0, 5000.0], [0.0, 0.0, 0.0])
