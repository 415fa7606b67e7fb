import json
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
from cdflib.cdfwrite import CDF

from hpe_ray.camera import H36M_CAMERA_IDS, H36M_INTRINSICS, project_to_pixels, world_to_camera
from hpe_ray.data import h36m, synthetic
from hpe_ray.data.render import crop_box_around, render_person
from hpe_ray.data.sample import BadSampleError
from hpe_ray.skeleton import H36M32_TO_17

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MMPOSE_FIXTURE = SHARED_DATA / "h36m-fixtures" / "test_h36m_body3d.npz"
YAWS_DEG = (0.0, 90.0, 180.0, 270.0)  # one per camera in H36M_CAMERA_IDS order
CAMERA_HEIGHT_MM = 900.0
CAMERA_DISTANCE_MM = 4500.0


def walking_world_mm(frames: int, seed: int = 0) -> np.ndarray:
    """(frames, 17, 3) a synthetic walk in world mm, z up, near the origin."""
    rng = np.random.default_rng(seed)
    return synthetic.sequence_poses_world("Walking", synthetic.subject_bone_lengths_mm("S1", seed), frames, 1, rng)


def to_32_joints(poses_17: np.ndarray, seed: int = 0) -> np.ndarray:
    """The 17 joints in their slots of the 32-joint mocap skeleton; the other 15 are noise."""
    poses_32 = np.random.default_rng(seed).normal(0, 5000, size=(len(poses_17), 32, 3))
    poses_32[:, list(H36M32_TO_17)] = poses_17
    return poses_32


def _quaternion_product(a, b):
    return np.concatenate([[a[0] * b[0] - np.dot(a[1:], b[1:])], a[0] * b[1:] + b[0] * a[1:] + np.cross(a[1:], b[1:])])


def horizontal_camera(yaw_deg: float) -> tuple[list[float], list[float]]:
    """VideoPose3D extrinsics of a level camera at CAMERA_HEIGHT_MM looking at the z axis.

    Camera-to-world: first Rx(-90) (camera z -> world +y, camera y -> world -z), then yaw about z.
    """
    tilt = np.array([np.cos(np.radians(-45)), np.sin(np.radians(-45)), 0, 0])
    yaw = np.array([np.cos(np.radians(yaw_deg / 2)), 0, 0, np.sin(np.radians(yaw_deg / 2))])
    forward = np.array([-np.sin(np.radians(yaw_deg)), np.cos(np.radians(yaw_deg)), 0])
    position = -CAMERA_DISTANCE_MM * forward + [0, 0, CAMERA_HEIGHT_MM]
    return list(_quaternion_product(yaw, tilt)), list(position)


def expected_camera_mm(poses_world_mm: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Camera frame of `horizontal_camera(yaw_deg)` by hand: x right, y down, z forward."""
    yaw = np.radians(yaw_deg)
    right, forward = np.array([np.cos(yaw), np.sin(yaw), 0]), np.array([-np.sin(yaw), np.cos(yaw), 0])
    relative = poses_world_mm - horizontal_camera(yaw_deg)[1]
    return np.stack([relative @ right, -relative[..., 2], relative @ forward], axis=-1)


def write_extrinsics(path: Path, subjects: tuple[str, ...]) -> Path:
    cameras = [dict(zip(("orientation", "translation"), horizontal_camera(yaw))) for yaw in YAWS_DEG]
    # First subject in VideoPose3D's list form, the others keyed by camera id.
    tree = {subject: cameras if i == 0 else dict(zip(H36M_CAMERA_IDS, cameras)) for i, subject in enumerate(subjects)}
    path.write_text(json.dumps(tree))
    return path


def test_action_labels():
    assert h36m.action_label("Walking 1") == "Walking"
    assert h36m.action_label("Walking") == "Walking"
    assert h36m.action_label("TakingPhoto 1") == "Photo"
    assert h36m.action_label("WalkingDog_1") == "WalkDog"
    assert h36m.action_label("WalkTogether 2") == "WalkTogether"
    assert h36m.action_label("SittingDown") == "SittingDown"


def test_split_subjects():
    assert h36m.split_subjects() == {"train": ("S1", "S5", "S6", "S7"), "val": ("S8",), "test": ("S9", "S11")}
    assert h36m.split_subjects(())["train"] == ("S1", "S5", "S6", "S7", "S8")
    with pytest.raises(ValueError, match="S9"):
        h36m.split_subjects(("S9",))


def test_videopose3d_world_frame_with_extrinsics(tmp_path):
    walk, photo = walking_world_mm(7, seed=1), walking_world_mm(5, seed=2)
    data_3d = tmp_path / "data_3d_h36m.npz"
    np.savez(data_3d, positions_3d={
        "S1": {"Walking 1": to_32_joints(walk) / 1000, "TakingPhoto": to_32_joints(photo) / 1000},
        "S9": {"Directions": to_32_joints(walk) / 1000}})
    extrinsics = write_extrinsics(tmp_path / "extrinsics.json", ("S1", "S9"))
    splits = h36m.load_videopose3d(data_3d, extrinsics_path=extrinsics, frame_step=2, val_subjects=())

    train = list(splits["train"])
    assert list(splits["val"]) == []
    assert len(train) == 4 * (4 + 3)  # cameras x (frames 0 2 4 6 + frames 0 2 4)
    assert {s.subject for s in splits["test"]} == {"S9"}
    by_key = {s.key: s for s in train}
    assert len(by_key) == len(train)
    sample = by_key["h36m_S1_Walking-1_58860488_000004"]
    assert (sample.action, sample.camera_id, sample.frame) == ("Walking", "58860488", 4)
    np.testing.assert_allclose(sample.pose_3d_cam_mm, expected_camera_mm(walk[4], YAWS_DEG[2]), atol=0.01)
    assert {s.action for s in train} == {"Walking", "Photo"}
    for sample in train:
        sample.validate("test")
        yaw = YAWS_DEG[H36M_CAMERA_IDS.index(sample.camera_id)]
        source = walk if sample.action == "Walking" else photo
        np.testing.assert_allclose(sample.pose_3d_cam_mm, expected_camera_mm(source[sample.frame], yaw), atol=0.01)
        assert sample.intrinsics is H36M_INTRINSICS[sample.camera_id]
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 1.0


def test_videopose3d_camera_frame_uses_given_2d_cut_to_3d_length(tmp_path):
    walk = walking_world_mm(6)
    per_camera_m = [world_to_camera(walk, synthetic.h36m_like_cameras()[i][2]) / 1000 for i in range(4)]
    keypoints_2d = [np.random.default_rng(i).uniform(0, 1000, size=(9, 17, 2)) for i in range(4)]
    data_3d, data_2d = tmp_path / "data_3d.npz", tmp_path / "data_2d.npz"
    np.savez(data_3d, positions_3d={"S8": {"Greeting 2": per_camera_m}})
    np.savez(data_2d, positions_2d={"S8": {"Greeting 2": keypoints_2d}},
             metadata={"num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]})
    splits = h36m.load_videopose3d(data_3d, data_2d)

    assert list(splits["train"]) == [] and list(splits["test"]) == []
    val = list(splits["val"])
    assert len(val) == 4 * 6
    for sample in val:
        index = H36M_CAMERA_IDS.index(sample.camera_id)
        np.testing.assert_allclose(sample.pose_3d_cam_mm, per_camera_m[index][sample.frame] * 1000, rtol=1e-6)
        np.testing.assert_allclose(sample.keypoints_2d_px, keypoints_2d[index][sample.frame], rtol=1e-6)
        assert sample.action == "Greeting"


def test_videopose3d_errors_name_the_file(tmp_path):
    data_3d = tmp_path / "data_3d.npz"
    np.savez(data_3d, positions_3d={"S1": {"Posing": to_32_joints(walking_world_mm(3)) / 1000}})
    with pytest.raises(BadSampleError, match=r"data_3d\.npz.*extrinsics"):
        list(h36m.load_videopose3d(data_3d)["train"])
    extrinsics = write_extrinsics(tmp_path / "extrinsics.json", ("S5",))
    with pytest.raises(BadSampleError, match="no camera 54138969 for S1"):
        list(h36m.load_videopose3d(data_3d, extrinsics_path=extrinsics)["train"])
    data_2d = tmp_path / "data_2d.npz"
    np.savez(data_2d, positions_2d={"S1": {"Posing": [np.zeros((2, 17, 2))] * 4}})
    per_camera = tmp_path / "per_camera.npz"
    np.savez(per_camera, positions_3d={"S1": {"Posing": [np.ones((3, 17, 3))] * 4}})
    with pytest.raises(BadSampleError, match=r"data_2d\.npz.*2 2D frames"):
        list(h36m.load_videopose3d(per_camera, data_2d)["train"])
    (tmp_path / "bad.json").write_text('{"S1": [1, 2]}')
    with pytest.raises(BadSampleError, match=r"bad\.json.*2 cameras"):
        h36m.read_extrinsics(tmp_path / "bad.json")


def test_parse_mmpose_image_names():
    assert h36m.parse_mmpose_image_name("S1/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg") == (
        "S1", "Directions 1", "54138969", 0)
    assert h36m.parse_mmpose_image_name("S7_Greeting.55011271_000396.jpg") == ("S7", "Greeting", "55011271", 395)
    with pytest.raises(ValueError, match="not like"):
        h36m.parse_mmpose_image_name("frame_0001.jpg")


def _mmpose_fixture() -> Path:
    if not MMPOSE_FIXTURE.is_file():
        pytest.skip(f"MMPose fixture not found at {MMPOSE_FIXTURE}")
    return MMPOSE_FIXTURE


def test_mmpose_fixture_3d_and_2d_agree_through_the_public_intrinsics():
    splits = h36m.load_mmpose([_mmpose_fixture()])
    samples = {split: list(it) for split, it in splits.items()}
    assert [s.subject for s in samples["train"]] == ["S1", "S5", "S7"]
    assert [s.subject for s in samples["val"]] == ["S8"] and samples["test"] == []
    first = samples["train"][0]
    assert (first.action, first.camera_id, first.frame) == ("Directions", "54138969", 0)
    assert first.key == "h36m_S1_Directions-1_54138969_000000"
    assert [s.action for s in samples["train"][1:] + samples["val"]] == ["SittingDown", "Greeting", "WalkDog"]
    for sample in samples["train"] + samples["val"]:
        sample.validate("fixture")
        assert sample.keypoints_2d_px.shape == (17, 2) and sample.pose_3d_cam_mm.shape == (17, 3)
        assert 2000 < sample.pose_3d_cam_mm[0, 2] < 8000  # metres became mm: a person 2-8 m away
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        # The released 2D is the projection of the 3D with lens distortion: agreement to 1e-4 px.
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 0.01


def test_mmpose_cameras_file_and_frame_step(tmp_path):
    # cameras.pkl as MMPose writes it: (2, 1) columns, tangential in the metadata's order.
    cameras = {(subject, camera_id): {"f": intr.focal_px[:, None], "c": intr.center_px[:, None],
                                      "k": intr.radial[:, None], "p": intr.tangential[::-1, None],
                                      "w": intr.image_size[0], "h": intr.image_size[1]}
               for subject in ("S1", "S5", "S7", "S8") for camera_id, intr in H36M_INTRINSICS.items()}
    cameras_path = tmp_path / "cameras.pkl"
    cameras_path.write_bytes(pickle.dumps(cameras))
    splits = h36m.load_mmpose([_mmpose_fixture()], cameras_path, frame_step=5, val_subjects=())
    train = list(splits["train"])
    # Frames 0 (S1), 2060 (S5), 395 (S7), 25 (S8): multiples of 5 only.
    assert [s.frame for s in train] == [0, 2060, 395, 25]
    for sample in train:
        np.testing.assert_allclose(sample.intrinsics.tangential, H36M_INTRINSICS[sample.camera_id].tangential)
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 0.01
    assert [s.frame for s in h36m.load_mmpose([_mmpose_fixture()], frame_step=2, val_subjects=())["train"]] == [0, 2060]


# Original release ---------------------------------------------------------------------------

def write_cdf(path: Path, poses_32_mm: np.ndarray) -> None:
    """A Human3.6M-like CDF: variable Pose, one record of shape (T, 96)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = len(poses_32_mm)
    cdf = CDF(str(path), delete=True)
    cdf.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_FLOAT, "Num_Elements": 1, "Rec_Vary": True,
                   "Dim_Sizes": [frames, 96]}, var_data=poses_32_mm.reshape(1, frames, 96).astype(np.float32))
    cdf.close()


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def rendered_video_frames(poses_cam_mm: np.ndarray, camera_id: str) -> list[np.ndarray]:
    """Full 1000 x 1000 frames: each pose rendered at 250 px (own background) and upscaled 4x."""
    intrinsics = H36M_INTRINSICS[camera_id]
    full_image = np.array([0, 0, 1000, 1000], np.float32)
    return [np.repeat(np.repeat(render_person(pose, intrinsics, full_image, 250, np.random.default_rng(i)), 4, 0), 4, 1)
            for i, pose in enumerate(poses_cam_mm)]


def test_original_release_mono_cdf_and_video_crops(tmp_path):
    camera_id, _, extrinsics = synthetic.h36m_like_cameras()[1]
    poses_cam_mm = world_to_camera(walking_world_mm(6), extrinsics)
    mono = tmp_path / "S9/MyPoseFeatures/D3_Positions_mono"
    write_cdf(mono / f"Walking 1.{camera_id}.cdf", to_32_joints(poses_cam_mm))
    frames = rendered_video_frames(np.concatenate([poses_cam_mm, poses_cam_mm[:2]]), camera_id)  # video 2 frames longer
    write_mp4(tmp_path / "S9/Videos" / f"Walking 1.{camera_id}.mp4", frames)
    # S11 Directions has no video: skipped when images are asked for (its video is corrupt).
    write_cdf(tmp_path / "S11/MyPoseFeatures/D3_Positions_mono" / f"Directions 1.{camera_id}.cdf",
              to_32_joints(poses_cam_mm))

    test = list(h36m.load_original_release(tmp_path, image_size=64, frame_step=2)["test"])
    assert [(s.subject, s.frame) for s in test] == [("S9", 0), ("S9", 2), ("S9", 4)]
    for sample in test:
        sample.validate("test")
        assert sample.key == f"h36m_S9_Walking-1_{camera_id}_{sample.frame:06d}"
        np.testing.assert_allclose(sample.pose_3d_cam_mm, poses_cam_mm[sample.frame], atol=0.01)
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 1.0
        np.testing.assert_array_equal(sample.crop_box_px, np.round(crop_box_around(sample.keypoints_2d_px, 0.15)))
        assert sample.image.shape == (64, 64, 3) and sample.image.std() > 10
        # The crop shows this frame at this place: close to the drawn frame's same box, far from
        # the next frame's (other background) and from a box shifted by half its side.
        x0, y0, x1, y1 = sample.crop_box_px
        shifted = sample.crop_box_px + np.array([1, 0, 1, 0]) * (x1 - x0) / 2
        same, other, moved = (_mean_abs_difference(sample.image, h36m.crop_and_resize(frames[index], box, 64))
                              for index, box in ((sample.frame, sample.crop_box_px),
                                                 (sample.frame + 1, sample.crop_box_px),
                                                 (sample.frame, shifted)))
        assert same < 6 and other > 3 * same and moved > 3 * same, (same, other, moved)

    poses_only = list(h36m.load_original_release(tmp_path)["test"])
    assert {(s.subject, s.action) for s in poses_only} == {("S9", "Walking"), ("S11", "Directions")}
    assert all(s.image is None and not s.crop_box_px.any() for s in poses_only)


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_original_release_world_cdf_with_extrinsics(tmp_path):
    walk = walking_world_mm(4)
    write_cdf(tmp_path / "S5/MyPoseFeatures/D3_Positions/Posing 1.cdf", to_32_joints(walk))
    with pytest.raises(BadSampleError, match="extrinsics"):
        list(h36m.load_original_release(tmp_path)["train"])
    extrinsics = write_extrinsics(tmp_path / "extrinsics.json", ("S5",))
    train = list(h36m.load_original_release(tmp_path, extrinsics_path=extrinsics)["train"])
    assert len(train) == 4 * 4
    for sample in train:
        yaw = YAWS_DEG[H36M_CAMERA_IDS.index(sample.camera_id)]
        np.testing.assert_allclose(sample.pose_3d_cam_mm, expected_camera_mm(walk[sample.frame], yaw), atol=0.01)
        assert sample.action == "Posing"


def test_original_release_broken_inputs_name_the_file(tmp_path):
    camera_id = H36M_CAMERA_IDS[0]
    broken = tmp_path / "S1/MyPoseFeatures/D3_Positions_mono" / f"Eating.{camera_id}.cdf"
    broken.parent.mkdir(parents=True)
    broken.write_text("not a cdf")
    with pytest.raises(BadSampleError, match=r"Eating\.54138969\.cdf"):
        list(h36m.load_original_release(tmp_path, val_subjects=())["train"])

    poses_cam_mm = world_to_camera(walking_world_mm(4), synthetic.h36m_like_cameras()[0][2])
    write_cdf(broken, to_32_joints(poses_cam_mm))
    video = tmp_path / "S1/Videos" / f"Eating.{camera_id}.mp4"
    write_mp4(video, [np.zeros((1002, 1000, 3), np.uint8)] * 2)
    with pytest.raises(BadSampleError, match=r"Eating\.54138969\.mp4: video ends before frame 2"):
        list(h36m.load_original_release(tmp_path, image_size=32, val_subjects=())["train"])
