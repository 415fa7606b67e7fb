"""Lifting in the wild: the 2D files detectors write (hand values per reader), sequences,
low-confidence filling, smoothing, the camera from the image size, and the BVH/JSON outputs
read back (the BVH through the project's own BVH reader)."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest

from hpe_ray.camera import Intrinsics, intrinsics_from_image_size, project_to_pixels
from hpe_ray.cli import main
from hpe_ray.data.bvh import HPE_RAY, forward_kinematics, joints_to_h36m, read_bvh
from hpe_ray.data.pickles import load_npz_object, load_pickle
from hpe_ray.data.sample import BadSampleError
from hpe_ray.data.stream import load_pose_arrays
from hpe_ray.inference import predict_file
from hpe_ray.inference.formats import COCO_JOINT_NAMES, coco_to_h36m, fill_low_confidence, read_keypoints
from hpe_ray.inference.outputs import smooth_tracks, write_bvh
from hpe_ray.metrics import mpjpe
from hpe_ray.normalization import root_relative
from hpe_ray.skeleton import JOINT_NAMES

from conftest import train_tiny_checkpoint


@pytest.fixture(scope="module")
def camera_checkpoint(tiny_dataset, tmp_path_factory):
    """A camera-mode lifter trained long enough (60 short epochs, seconds) to depend on its input."""
    return train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("camera-lifter"), mode_2d="camera", epochs=60)


def _coco_xy(offset: float = 0.0) -> np.ndarray:
    """(17, 2) COCO keypoints: x = COCO index + offset, y = 10 * index."""
    return np.stack([np.arange(17) + offset, 10.0 * np.arange(17)], axis=1)


# ---------------------------------------------------------------- camera from the image size

def test_intrinsics_from_image_size_hand_values():
    focal, center = intrinsics_from_image_size(1920, 1080, 90.0)
    np.testing.assert_allclose(focal, [960, 960])
    np.testing.assert_allclose(center, [960, 540])
    # the field of view is across the longer side: portrait video gives the same focal length
    np.testing.assert_allclose(intrinsics_from_image_size(1080, 1920, 60.0)[0], 960 / np.tan(np.radians(30)))
    with pytest.raises(ValueError, match="field of view"):
        intrinsics_from_image_size(1920, 1080, 180.0)


# ---------------------------------------------------------------- readers

def test_openpose_body25_and_coco18_map_to_the_same_h36m_joints(tmp_path):
    coco = np.concatenate([_coco_xy(), np.full((17, 1), 0.9)], axis=1)
    body25 = np.zeros((25, 3))
    body25[[0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]] = coco
    body25[1] = [99, 99, 0.9]  # OpenPose's neck: not a COCO joint, not used
    coco18 = np.zeros((18, 3))
    coco18[[0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]] = coco
    for name, people in (("body25", body25), ("coco18", coco18)):
        folder = tmp_path / name
        folder.mkdir()
        for frame in range(3):
            people_json = [{"person_id": [-1], "pose_keypoints_2d": (people + [frame, 0, 0]).ravel().tolist()}]
            (folder / f"clip_{frame:012d}_keypoints.json").write_text(json.dumps({"people": people_json}))
        read = read_keypoints(folder)
        assert read.valid.all() and read.frames.tolist() == [0, 1, 2] and set(read.tracks) == {"0"}
        np.testing.assert_allclose(read.keypoints_2d_px[1], coco_to_h36m(_coco_xy(1.0)))
        np.testing.assert_allclose(read.scores, 0.9)


def test_mmpose_inferencer_json_of_a_video_and_of_an_image(tmp_path):
    instance = {"keypoints": _coco_xy().tolist(), "keypoint_scores": [0.8] * 17, "bbox": [[0, 0, 1, 1]]}
    video = [{"frame_id": f, "instances": [instance, instance]} for f in range(4)]
    (tmp_path / "video.json").write_text(json.dumps(video))
    read = read_keypoints(tmp_path / "video.json")
    assert len(read.names) == 8 and read.frames.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert read.tracks.tolist() == ["0", "1"] * 4
    np.testing.assert_allclose(read.keypoints_2d_px[5], coco_to_h36m(_coco_xy()))
    (tmp_path / "image.json").write_text(json.dumps([instance]))
    assert len(read_keypoints(tmp_path / "image.json").names) == 1


def test_videopose3d_custom_npz_gives_tracks_and_image_size(tmp_path):
    keypoints = np.stack([_coco_xy(t) for t in range(5)])
    metadata = {"layout_name": "coco", "num_joints": 17, "video_metadata": {"walk.mp4": {"w": 1920, "h": 1080}}}
    path = tmp_path / "data_2d_custom_myvideos.npz"
    np.savez_compressed(path, positions_2d={"walk.mp4": {"custom": [keypoints]}}, metadata=metadata)
    read = read_keypoints(path)
    assert read.tracks.tolist() == ["walk.mp4"] * 5 and read.frames.tolist() == list(range(5))
    assert read.image_size_px.tolist() == [[1920, 1080]] * 5
    np.testing.assert_allclose(read.keypoints_2d_px[3], coco_to_h36m(_coco_xy(3)))


def test_a_camera_array_of_the_wrong_shape_is_named_with_its_file(tmp_path):
    path = tmp_path / "keypoints.npz"
    np.savez(path, keypoints_2d=np.zeros((3, 17, 2)), focal=np.ones((2, 2)), center=np.zeros(2))
    with pytest.raises(ValueError, match=r"keypoints.npz: focal has shape \(2, 2\), expected \(2,\) or \(3, 2\) pixels"):
        read_keypoints(path)
    np.savez(path, keypoints_2d=np.zeros((3, 17, 2)), focal=[1000.0, 1000.0], center=np.full((3, 2), 500.0))
    read = read_keypoints(path)
    assert read.focal_px.tolist() == [[1000.0, 1000.0]] * 3 and read.center_px.shape == (3, 2)


RAN: list[str] = []


def _side_effect(text: str) -> None:
    RAN.append(text)


class _RunsCode:
    """What a crafted pickle would hold: unpickling it calls a function of the attacker's choice."""

    def __reduce__(self):
        return (_side_effect, ("this ran while loading",))


def test_pickles_in_users_files_are_refused_unrun(tmp_path):
    crafted = tmp_path / "data_2d_custom_evil.npz"
    np.savez(crafted, positions_2d=np.array(_RunsCode(), dtype=object), metadata=np.array({}, dtype=object))
    with pytest.raises(BadSampleError, match=r"refused to load \S*_side_effect") as error:
        load_npz_object(crafted, "positions_2d")
    assert str(crafted) in str(error.value)
    cameras = tmp_path / "cameras.pkl"
    cameras.write_bytes(pickle.dumps({("S1", "54138969"): _RunsCode()}))
    with pytest.raises(BadSampleError, match="refused"):
        load_pickle(cameras)
    assert RAN == []
    # plain data still loads: dicts, lists, strings, numbers, numpy arrays
    plain = {"a": [1, 2.5, "x"], "b": np.arange(3.0), "c": (None, True)}
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(plain))
    loaded = load_pickle(tmp_path / "plain.pkl")
    assert loaded["a"] == [1, 2.5, "x"] and loaded["c"] == (None, True)
    np.testing.assert_array_equal(loaded["b"], np.arange(3.0))
    with zipfile.ZipFile(tmp_path / "not.npz", "w") as archive:
        archive.writestr("other.npy", b"")
    with pytest.raises(BadSampleError, match="no array 'positions_2d'"):
        load_npz_object(tmp_path / "not.npz", "positions_2d")


def test_csv_with_coco_joint_names(tmp_path):
    header = ["frame", "track"] + [f"{name}_{axis}" for name in COCO_JOINT_NAMES for axis in ("x", "y", "score")]
    rows = [[f, "a"] + [v for x, y in _coco_xy(f) for v in (x, y, 0.7)] for f in range(3)]
    path = tmp_path / "keypoints.csv"
    path.write_text("\n".join(",".join(map(str, row)) for row in [header] + rows))
    read = read_keypoints(path)
    assert read.tracks.tolist() == ["a"] * 3 and read.frames.tolist() == [0, 1, 2]
    np.testing.assert_allclose(read.keypoints_2d_px[2], coco_to_h36m(_coco_xy(2)))
    np.testing.assert_allclose(read.scores, 0.7)
    (tmp_path / "bad.csv").write_text("frame,x,y\n0,1,2\n")
    with pytest.raises(BadSampleError, match="bad.csv: the header needs <joint>_x"):
        read_keypoints(tmp_path / "bad.csv")


def test_coco_results_with_track_ids_and_a_dropped_joint_filled_from_neighbours(tmp_path):
    entries = []
    for frame in range(5):
        for track in (7, 3):
            triplets = np.concatenate([_coco_xy(frame + track), np.ones((17, 1))], axis=1)
            if track == 7 and frame == 2:
                triplets[9] = 0  # left wrist not detected
            if track == 3 and frame == 1:
                triplets[10, 2] = 0.1  # right wrist detected with low confidence
            entries.append({"image_id": frame, "track_id": track, "keypoints": triplets.ravel().tolist()})
    (tmp_path / "results.json").write_text(json.dumps(entries))
    read = read_keypoints(tmp_path / "results.json")
    assert not read.valid[4] and "left_wrist" in read.problems[4]
    filled, low = fill_low_confidence(read, 0.3)
    assert filled.valid.all() and filled.problems == {}
    assert np.argwhere(low).tolist() == [[3, 16], [4, 13]]  # H36M right wrist (16), left wrist (13)
    # x moves by 1 px per frame along each track, so the filled joints land halfway between neighbours
    np.testing.assert_allclose(filled.keypoints_2d_px[4, 13], coco_to_h36m(_coco_xy(9))[13])
    np.testing.assert_allclose(filled.keypoints_2d_px[3, 16], coco_to_h36m(_coco_xy(4))[16])


def test_smooth_tracks_hand_values():
    poses = np.zeros((5, 1, 3))
    poses[:, 0, 0] = [0, 3, 0, 3, 0]
    poses[2] = np.nan  # an invalid frame takes no part and stays NaN
    tracks = np.array(["a"] * 5)
    smoothed = smooth_tracks(poses, tracks, np.arange(5), 3)
    # valid frames 0, 1, 3, 4 (values 0, 3, 3, 0) averaged over 3 neighbours, fewer at the ends
    np.testing.assert_allclose(smoothed[[0, 1, 3, 4], 0, 0], [1.5, 2.0, 2.0, 1.5])
    assert np.isnan(smoothed[2]).all()


# ---------------------------------------------------------------- outputs

def _camera_poses(tiny_dataset, count: int = 60) -> np.ndarray:
    return load_pose_arrays(tiny_dataset, "test").pose_3d_cam_mm[:count].astype(np.float64)


def test_bvh_reads_back_through_the_project_reader_to_the_same_positions(tiny_dataset, tmp_path):
    poses = root_relative(_camera_poses(tiny_dataset))
    poses += np.random.default_rng(0).normal(0, 8, poses.shape) * (np.arange(17) > 0)[:, None]
    clip = read_bvh(write_bvh(tmp_path / "clip.bvh", poses, 50.0))
    joints = [clip.skeleton.names.index(name) for name in JOINT_NAMES]
    assert [n for n in clip.skeleton.names if not n.endswith("_End")] == list(JOINT_NAMES)
    assert abs(clip.fps - 50.0) < 1e-3
    world_z_up = joints_to_h36m(clip, HPE_RAY)
    # the file is Y up with the person facing +z: camera (x, y, z) -> z-up world (x, z, -y)
    back = np.stack([world_z_up[..., 0], -world_z_up[..., 2], world_z_up[..., 1]], axis=-1)
    error_mm = np.linalg.norm(back - poses, axis=-1).max()
    print(f"BVH read back: largest joint position error {error_mm:.4f} mm over {len(poses)} frames")
    assert error_mm < 1.0
    # The rotations alone (rest offsets, position channels ignored) point each limb bone along the
    # prediction; at the pelvis and thorax one rotation serves three bones (a best fit).
    rotations_only = clip.motion.copy().reshape(len(poses), 17, 6)
    rotations_only[:, 1:, :3] = clip.skeleton.offsets[joints[1:]]
    skeleton_points = forward_kinematics(clip.skeleton, rotations_only.reshape(len(poses), -1))[:, joints]
    for parent, child, least in ((1, 2, 0.999), (2, 3, 0.999), (4, 5, 0.999), (11, 12, 0.999), (12, 13, 0.999),
                                 (15, 16, 0.999), (9, 10, 0.999), (0, 1, 0.9), (0, 7, 0.9), (8, 14, 0.9)):
        predicted = back[:, child] - back[:, parent]
        solved = skeleton_points[:, child] - skeleton_points[:, parent]
        solved = np.stack([solved[:, 0], -solved[:, 1], -solved[:, 2]], axis=-1)
        cosine = np.einsum("ti,ti->t", predicted, solved) / np.linalg.norm(predicted, axis=1) / np.linalg.norm(solved, axis=1)
        assert cosine.min() > least, (parent, child)


def test_coco_sequence_from_a_1920x1080_video_lifts_without_intrinsics(tiny_dataset, camera_checkpoint, tmp_path):
    """Keypoints of a 1920x1080 phone-like camera (focal 1500 px, not the default field of view),
    no intrinsics in the file: the camera derived from the image size gives 3D within 10% of
    the error with the true intrinsics; the training camera's fallback does not."""
    truth = _camera_poses(tiny_dataset)
    camera = Intrinsics(np.array([1500.0, 1500.0]), np.array([960.0, 540.0]), np.zeros(3), np.zeros(2), (1920, 1080))
    keypoints = project_to_pixels(truth, camera)
    assert keypoints.min() > 0 and keypoints[..., 0].max() < 1920 and keypoints[..., 1].max() < 1080
    entries = [{"image_id": frame, "track_id": 1, "score": 1.0,
                "keypoints": np.concatenate([row, np.ones((17, 1))], axis=1).ravel().tolist()}
               for frame, row in enumerate(keypoints)]
    (tmp_path / "video.json").write_text(json.dumps(entries))

    def error_mm(**camera_args) -> float:
        out = tmp_path / f"out-{len(camera_args)}-{sorted(camera_args)}.npz"
        predict_file(camera_checkpoint, tmp_path / "video.json", out, keypoint_format="h36m", **camera_args)
        with np.load(out) as result:
            return float(mpjpe(result["poses_3d"].astype(np.float64), root_relative(truth)).mean())

    true_error = error_mm(focal_px=camera.focal_px, center_px=camera.center_px)
    derived_error = error_mm(image_size_px=(1920, 1080))
    with pytest.warns(UserWarning, match="most common camera"):
        fallback_error = error_mm()
    print(f"MPJPE true intrinsics {true_error:.1f} mm, derived from 1920x1080 {derived_error:.1f} mm, "
          f"training camera {fallback_error:.1f} mm")
    assert derived_error <= 1.10 * true_error
    assert fallback_error > 1.10 * true_error


def test_predict_cli_writes_npz_json_and_one_bvh_per_track(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    truth = _camera_poses(tiny_dataset, 12)
    camera = Intrinsics(np.array([1500.0, 1500.0]), np.array([960.0, 540.0]), np.zeros(3), np.zeros(2), (1920, 1080))
    keypoints = project_to_pixels(truth, camera)
    np.savez(tmp_path / "two.npz", keypoints_2d=keypoints, frames=np.tile(np.arange(6), 2),
             tracks=np.repeat(["left", "right"], 6), image_size=[1920, 1080])
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "two.npz"),
                 "--out", str(tmp_path / "poses.npz"), "--also", "json", "bvh", "--smooth", "3", "--fps", "25"])
    printed = capsys.readouterr().out
    assert code == 0 and "derived from the 1920x1080 px image and a 60 degree field of view" in printed
    viewer = json.loads((tmp_path / "poses.json").read_text())
    assert [t["track"] for t in viewer["tracks"]] == ["left", "right"] and viewer["fps"] == 25.0
    assert len(viewer["tracks"][1]["poses_3d_mm"]) == 6 and viewer["joint_names"] == list(JOINT_NAMES)
    for track in ("left", "right"):
        assert read_bvh(tmp_path / f"poses_{track}.bvh").motion.shape[0] == 6
    with np.load(tmp_path / "poses.npz") as out:
        assert out["tracks"].tolist() == ["left"] * 6 + ["right"] * 6
        np.testing.assert_allclose(np.asarray(viewer["tracks"][0]["poses_3d_mm"]), out["poses_3d"][:6], atol=0.06)
