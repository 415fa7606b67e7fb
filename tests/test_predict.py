"""Prediction: COCO -> Human3.6M mapping on hand values, keypoint files, the Lifter API and
`predict_file` on a tiny model trained here in plain PyTorch (no Ray).

`tiny_dataset` / `tiny_checkpoint` are imported by test_viz.py and test_export.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from hpe_ray.camera import most_common_camera
from hpe_ray.data.sample import BadSampleError
from hpe_ray.data.stream import iter_samples, load_pose_arrays
from hpe_ray.inference import Lifter, predict_file
from hpe_ray.inference.formats import HEAD_TOP_OVER_EYES, coco_to_h36m, read_keypoints
from hpe_ray.metrics import mpjpe
from hpe_ray.normalization import root_relative

from conftest import train_tiny_checkpoint, write_tiny_dataset

def _val_npz(data_dir: Path, path: Path) -> tuple[Path, object]:
    arrays = load_pose_arrays(data_dir, "val")
    np.savez(path, keypoints_2d=arrays.keypoints_2d_px, focal=arrays.intrinsics[:, 0:2],
             center=arrays.intrinsics[:, 2:4])
    return path, arrays


# ---------------------------------------------------------------- COCO -> Human3.6M

def _coco_pose() -> np.ndarray:
    """COCO-17 keypoints (17, 2) with round numbers: each joint's x is its COCO index."""
    keypoints = np.zeros((17, 2))
    keypoints[:, 0] = np.arange(17)
    keypoints[[5, 6], 1] = 100.0      # shoulders
    keypoints[[11, 12], 1] = 300.0    # hips
    keypoints[[1, 2], 1] = 40.0       # eyes
    return keypoints


def test_coco_to_h36m_hand_values():
    h36m = coco_to_h36m(_coco_pose())
    np.testing.assert_allclose(h36m[0], [(11 + 12) / 2, 300])          # pelvis: hip midpoint
    np.testing.assert_allclose(h36m[8], [(5 + 6) / 2, 100])            # thorax: shoulder midpoint
    np.testing.assert_allclose(h36m[7], [(11.5 + 5.5) / 2, 200])       # spine: pelvis-thorax midpoint
    np.testing.assert_allclose(h36m[9], [0, 0])                        # neck/nose: the nose
    eyes, thorax = np.array([1.5, 40.0]), np.array([5.5, 100.0])
    np.testing.assert_allclose(h36m[10], eyes + HEAD_TOP_OVER_EYES * (eyes - thorax))  # above the eyes
    assert HEAD_TOP_OVER_EYES == 0.5 and h36m[10, 1] == 10.0
    # Limbs one to one: H36M right hip/knee/ankle = COCO 12/14/16, left = 11/13/15,
    # left shoulder/elbow/wrist = 5/7/9, right = 6/8/10.
    assert h36m[[1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16], 0].tolist() == [12, 14, 16, 11, 13, 15, 5, 7, 9, 6, 8, 10]


def test_coco_to_h36m_keeps_batch_dims_and_rejects_other_joint_counts():
    batch = np.stack([_coco_pose(), _coco_pose() + 1.0])[None]
    assert coco_to_h36m(batch).shape == (1, 2, 17, 2)
    np.testing.assert_allclose(coco_to_h36m(batch)[0, 1], coco_to_h36m(_coco_pose()) + 1.0)
    with pytest.raises(ValueError, match="17"):
        coco_to_h36m(np.zeros((18, 2)))


# ---------------------------------------------------------------- keypoint files

def test_read_coco_results_masks_bad_entries_and_names_file_and_sample(tmp_path):
    good = np.concatenate([_coco_pose(), np.ones((17, 1))], axis=1).ravel().tolist()
    unlabelled_wrist = list(good)
    unlabelled_wrist[3 * 9:3 * 10] = [0, 0, 0]  # COCO 9: left wrist
    entries = [{"image_id": 7, "keypoints": good, "score": 0.9},
               {"image_id": 8, "keypoints": good[:48], "score": 0.8},
               {"image_id": 9, "keypoints": [float("nan")] * 51, "score": 0.1},
               {"image_id": 10, "keypoints": unlabelled_wrist, "score": 0.7}]
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(entries))
    keypoints = read_keypoints(path)
    assert keypoints.valid.tolist() == [True, False, False, False]
    assert keypoints.names.tolist() == ["7", "8", "9", "10"] and keypoints.focal_px is None
    np.testing.assert_allclose(keypoints.keypoints_2d_px[0], coco_to_h36m(_coco_pose()))
    assert np.isnan(keypoints.keypoints_2d_px[1:3]).all()
    # only the unlabelled joint is missing (it may still be filled from neighbouring frames)
    assert np.isnan(keypoints.keypoints_2d_px[3]).any(axis=1).tolist() == [j == 13 for j in range(17)]
    assert keypoints.scores[3, 13] == 0 and keypoints.scores[0].tolist() == [1.0] * 17
    assert sorted(keypoints.problems) == [1, 2, 3]
    assert f"{path}: sample 1 (image_id 8)" in keypoints.problems[1] and "16 joints" in keypoints.problems[1]
    assert "sample 2 (image_id 9)" in keypoints.problems[2] and "NaN" in keypoints.problems[2]
    assert keypoints.problems[3].endswith("sample 3 (image_id 10): joints not labelled ([0, 0, 0]): left_wrist")


@pytest.mark.parametrize("arrays, message", [
    ({"keypoints_2d": np.zeros((3, 16, 2))}, r"keypoints_2d has shape \(3, 16, 2\)"),
    ({"keypoints_2d": np.zeros((3, 17, 2)), "focal": np.ones(2)}, "no 'center'"),
    ({"keypoints_2d": np.zeros((3, 17, 2)), "focal": np.ones((2, 2)), "center": np.ones(2)}, "focal has shape"),
    ({"poses": np.zeros((3, 17, 2))}, "missing array 'keypoints_2d'"),
])
def test_read_npz_errors_name_the_file_and_the_problem(tmp_path, arrays, message):
    path = tmp_path / "input.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadSampleError, match=message) as error:
        read_keypoints(path)
    assert str(path) in str(error.value)


def test_read_npz_broadcasts_one_camera_and_masks_nan_samples(tmp_path):
    keypoints = np.random.default_rng(0).uniform(0, 1000, (3, 17, 2))
    keypoints[1, 4, 0] = np.nan
    path = tmp_path / "input.npz"
    np.savez(path, keypoints_2d=keypoints, focal=[1145.0, 1144.0], center=[512.0, 515.0])
    read = read_keypoints(path)
    assert read.valid.tolist() == [True, False, True]
    assert read.focal_px.shape == (3, 2) and read.center_px[2].tolist() == [512.0, 515.0]
    assert read.problems == {1: f"{path}: sample 1: keypoints_2d contains NaN or infinite coordinates"}


# ---------------------------------------------------------------- lifting

@pytest.mark.slow
def test_predict_file_gives_the_mpjpe_of_evaluate_checkpoint(tiny_dataset, tiny_checkpoint, tmp_path):
    from hpe_ray.evaluate import evaluate_checkpoint

    npz, arrays = _val_npz(tiny_dataset, tmp_path / "val.npz")
    summary = predict_file(tiny_checkpoint, npz, tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as out:
        assert out["valid"].all() and out["poses_3d"].shape == (len(arrays), 17, 3) and "hypotheses" not in out
        errors_mm = mpjpe(out["poses_3d"].astype(np.float64), root_relative(arrays.pose_3d_cam_mm.astype(np.float64)))
    evaluation = evaluate_checkpoint(tiny_checkpoint, tiny_dataset, split="val")
    np.testing.assert_allclose(errors_mm, evaluation.errors["mpjpe"], atol=1e-3)
    assert abs(errors_mm.mean() - evaluation.errors["mpjpe"].mean()) < 1e-3
    assert summary.keypoint_lifted == len(arrays) and not summary.problems


def test_predict_file_skips_bad_samples_and_lifts_the_rest(tiny_dataset, tiny_checkpoint, tmp_path):
    clean, arrays = _val_npz(tiny_dataset, tmp_path / "clean.npz")
    keypoints = arrays.keypoints_2d_px[:6].copy()
    focal = arrays.intrinsics[:6, 0:2].copy()
    keypoints[2, 5] = np.nan
    focal[4] = [np.inf, 1000.0]
    bad = tmp_path / "bad.npz"
    np.savez(bad, keypoints_2d=keypoints, focal=focal, center=arrays.intrinsics[:6, 2:4])
    with pytest.warns(UserWarning, match="skipped 2 unusable samples"):
        summary = predict_file(tiny_checkpoint, bad, tmp_path / "bad_out.npz")
    predict_file(tiny_checkpoint, clean, tmp_path / "clean_out.npz")
    with np.load(tmp_path / "bad_out.npz") as out, np.load(tmp_path / "clean_out.npz") as reference:
        assert out["valid"].tolist() == [True, True, False, True, False, True]
        assert np.isnan(out["poses_3d"][[2, 4]]).all()
        keep = [0, 1, 3, 5]
        np.testing.assert_allclose(out["poses_3d"][keep], reference["poses_3d"][keep], atol=1e-4)
        assert len(out["problems"]) == 2
    assert summary.problems == [f"{bad}: sample 2: keypoints_2d contains NaN or infinite coordinates",
                                f"{bad}: sample 4: focal or center is NaN or infinite"]
    assert "4 of 6 samples lifted" in str(summary)


def test_lift_without_camera_uses_the_most_common_training_camera(tiny_dataset, tiny_checkpoint):
    lifter = Lifter.from_checkpoint(tiny_checkpoint)
    arrays = load_pose_arrays(tiny_dataset, "test")
    focal, center = most_common_camera(load_pose_arrays(tiny_dataset, "train").intrinsics)
    with pytest.warns(UserWarning, match="most common camera"):
        implicit = lifter.lift(arrays.keypoints_2d_px[:8])
    explicit = lifter.lift(arrays.keypoints_2d_px[:8], focal, center)
    np.testing.assert_array_equal(implicit.poses_3d, explicit.poses_3d)


def test_most_common_camera_hand_values():
    rows = np.array([[1000, 1000, 500, 500, *[0] * 5], [1145, 1144, 512, 515, *[0.1] * 5],
                     [1145, 1144, 512, 515, *[0] * 5]], dtype=np.float32)
    focal, center = most_common_camera(rows)  # distortion differs, the pinhole part is the same
    assert focal.tolist() == [1145, 1144] and center.tolist() == [512, 515]


def test_lift_masks_malformed_samples_and_rejects_a_malformed_array(tiny_dataset, tiny_checkpoint):
    lifter = Lifter.from_checkpoint(tiny_checkpoint)
    arrays = load_pose_arrays(tiny_dataset, "test")
    focal, center = arrays.intrinsics[0, 0:2], arrays.intrinsics[0, 2:4]
    result = lifter.lift([arrays.keypoints_2d_px[0], arrays.keypoints_2d_px[0][:16], "abc"], focal, center)
    assert result.valid.tolist() == [True, False, False]
    assert result.problems == {1: "sample 1: keypoints have shape (16, 2), expected (17, 2)",
                               2: "sample 2: keypoints are not numbers"}
    assert np.all(result.poses_3d[0, 0] == 0) and np.isfinite(result.poses_3d[0]).all()
    with pytest.raises(ValueError, match=r"\(N, 17, 2\)"):
        lifter.lift(np.zeros((4, 16, 2)), focal, center)
    with pytest.raises(ValueError, match="both focal_px and center_px"):
        lifter.lift(arrays.keypoints_2d_px[:2], focal, None)


def test_hypotheses_are_distinct_samples_reproducible_by_seed(tiny_dataset, tiny_checkpoint):
    lifter = Lifter.from_checkpoint(tiny_checkpoint)
    arrays = load_pose_arrays(tiny_dataset, "test")
    args = (arrays.keypoints_2d_px[:10], arrays.intrinsics[:10, 0:2], arrays.intrinsics[:10, 2:4])
    first = lifter.lift(*args, hypotheses=5, seed=3)
    assert first.hypotheses.shape == (10, 5, 17, 3)
    np.testing.assert_array_equal(first.hypotheses, lifter.lift(*args, hypotheses=5, seed=3).hypotheses)
    assert np.abs(first.hypotheses - lifter.lift(*args, hypotheses=5, seed=4).hypotheses).max() > 1e-3
    np.testing.assert_allclose(first.poses_3d, lifter.lift(*args).poses_3d, atol=1e-4)
    assert np.all(first.hypotheses[:, :, 0] == 0)
    assert np.abs(first.hypotheses[:, 0] - first.hypotheses[:, 1]).max() > 1e-3


@pytest.mark.slow
def test_predict_from_a_folder_of_crops_names_unreadable_images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("rgb")
    data_dir = write_tiny_dataset(root / "data", image_size=32)
    # Untrained: the test compares predict_file with Lifter.lift_images on the same weights.
    checkpoint = train_tiny_checkpoint(data_dir, root / "checkpoint", steps=0, rgb=True)
    crops_dir = root / "crops"
    crops_dir.mkdir()
    images = [sample.image for sample in iter_samples(data_dir, "test")][:4]
    for i, image in enumerate(images):
        Image.fromarray(image).save(crops_dir / f"crop{i}.png")
    (crops_dir / "crop9.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unusable samples.*crop9.jpg"):
        summary = predict_file(checkpoint, None, root / "out.npz", images_dir=crops_dir, hypotheses=2)
    with np.load(root / "out.npz") as out:
        assert out["image_files"].tolist() == [f"crop{i}.png" for i in range(4)] + ["crop9.jpg"]
        assert out["valid_rgb"].tolist() == [True] * 4 + [False]
        assert out["hypotheses_rgb"].shape == (5, 2, 17, 3) and "poses_3d" not in out
        expected = Lifter.from_checkpoint(checkpoint).lift_images(images).poses_3d
        np.testing.assert_allclose(out["poses_3d_rgb"][:4], expected, atol=1e-4)
    assert len(summary.problems) == 1 and "crop9.jpg: unreadable image" in summary.problems[0]


def test_a_scaled_model_lifts_a_phone_camera_without_intrinsics(tiny_dataset, tmp_path_factory):
    """Keypoints of a 1920x1080 camera the model never saw, with and without its intrinsics:
    the scaled 2D input cancels focal length and principal point, so no camera is assumed. The
    poses reproject onto the keypoints: with the intrinsics in perspective, without them in
    weak perspective (x, y relative to the root proportional to the keypoints')."""
    from hpe_ray.camera import project_to_pixels

    checkpoint = train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("scaled"), steps=20, mode_2d="scaled")
    lifter = Lifter.from_checkpoint(checkpoint)
    arrays = load_pose_arrays(tiny_dataset, "test")
    phone = np.array([1500.0, 1500.0, 960.0, 540.0, 0, 0, 0, 0, 0])  # 65 degree horizontal field of view
    poses = arrays.pose_3d_cam_mm[:16] - arrays.pose_3d_cam_mm[:16, :1] + [300.0, 200.0, 3000.0]
    keypoints = project_to_pixels(poses, phone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "assumed the training camera" warning
        without = lifter.lift(keypoints)
    with_intrinsics = lifter.lift(keypoints, phone[:2], phone[2:4])
    # The same depths; x, y differ only by the perspective the weak fit leaves out (under 10% here).
    np.testing.assert_allclose(without.poses_3d[..., 2], with_intrinsics.poses_3d[..., 2], atol=1e-3)
    xy = with_intrinsics.poses_3d[..., :2]
    assert 0 < np.abs(without.poses_3d[..., :2] - xy).max() < 0.1 * np.abs(xy).max()
    offsets = keypoints - keypoints[:, :1]
    scale = (without.poses_3d[..., :2] * offsets).sum((1, 2)) / (offsets * offsets).sum((1, 2))
    np.testing.assert_allclose(without.poses_3d[..., :2], scale[:, None, None] * offsets, atol=1e-2)
    rays = (keypoints - phone[2:4]) / phone[:2]
    # Some root depth Z0 puts every joint on its ray: x_j = a_j (Z0 + z_j) - a_0 Z0.
    z = with_intrinsics.poses_3d[..., 2]
    root_depth = (xy[:, 1, 0] - rays[:, 1, 0] * z[:, 1]) / (rays[:, 1, 0] - rays[:, 0, 0])
    on_rays = rays * (root_depth[:, None] + z)[..., None] - rays[:, :1] * root_depth[:, None, None]
    np.testing.assert_allclose(xy, on_rays, atol=1e-2)


def test_fitting_to_the_2d_follows_keypoint_conventions_the_model_never_saw(tiny_dataset, tmp_path_factory):
    """Test poses whose hips, shoulders, spine and head sit 40 mm elsewhere (another detector's
    conventions, in 3D and 2D alike): the same trained model lifts them closer to their own 3D
    with model.fit_2d than without, and its fitted poses reproject onto the keypoints."""
    import torch

    from hpe_ray.camera import project_to_pixels
    from hpe_ray.data.augment import shift_keypoint_conventions

    checkpoint = train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("conventions"), steps=100,
                                       mode_2d="scaled")
    arrays = load_pose_arrays(tiny_dataset, "test")
    offsets = torch.zeros(len(arrays.pose_3d_cam_mm), 6, 3, dtype=torch.float64)
    offsets[:, :, 1] = 40.0  # midline joints 40 mm up, hips and shoulders 40 mm higher too
    offsets[:, 4:, 0] = 40.0  # ... and 40 mm wider each side
    poses = shift_keypoint_conventions(torch.as_tensor(arrays.pose_3d_cam_mm, dtype=torch.float64), offsets).numpy()
    keypoints = project_to_pixels(poses, arrays.intrinsics.astype(np.float64))
    lifter = Lifter.from_checkpoint(checkpoint)
    focal, center = arrays.intrinsics[:, :2], arrays.intrinsics[:, 2:4]
    assert lifter.model.fit_2d
    fitted = lifter.lift(keypoints, focal, center).poses_3d
    lifter.model.fit_2d = False
    decoded = lifter.lift(keypoints, focal, center).poses_3d
    truth = root_relative(poses)
    assert mpjpe(fitted, truth).mean() < 0.9 * mpjpe(decoded, truth).mean()
    # Fitted: some root depth puts every joint on its keypoint's ray.
    rays = (keypoints - center[:, None]) / focal[:, None]
    root_depth = (fitted[:, 1, 0] - rays[:, 1, 0] * fitted[:, 1, 2]) / (rays[:, 1, 0] - rays[:, 0, 0])
    on_rays = rays * (root_depth[:, None] + fitted[..., 2])[..., None] - rays[:, :1] * root_depth[:, None, None]
    np.testing.assert_allclose(fitted[..., :2], on_rays, atol=0.05)


def test_fit_strength_moves_each_joint_that_share_of_the_way_onto_its_ray(tiny_checkpoint, tiny_dataset):
    """model.fit_2d between 0 and 1, set for one lifter without retraining: the root depth of the
    fit does not change with a constant strength, so fit_2d 0.5 lands exactly halfway between the
    decoded pose (0) and the pose on the rays (1), depths kept."""
    arrays = load_pose_arrays(tiny_dataset, "test")
    focal, center = arrays.intrinsics[:32, :2], arrays.intrinsics[:32, 2:4]
    poses = {strength: Lifter.from_checkpoint(tiny_checkpoint, fit_2d=strength).lift(
        arrays.keypoints_2d_px[:32], focal, center).poses_3d for strength in (0.0, 0.5, 1.0)}
    assert np.abs(poses[1.0] - poses[0.0])[..., :2].mean() > 1.0  # the fit moves the joints (mm)
    np.testing.assert_allclose(poses[0.5][..., :2], (poses[0.0][..., :2] + poses[1.0][..., :2]) / 2, atol=1e-2)
    np.testing.assert_allclose(poses[0.5][..., 2], poses[0.0][..., 2], atol=1e-3)
    assert Lifter.from_checkpoint(tiny_checkpoint).model.fit_2d == 1.0  # the stored default
    with pytest.raises(ValueError, match="model.fit_2d"):
        Lifter.from_checkpoint(tiny_checkpoint, fit_2d=1.5)
