import itertools
from pathlib import Path

import numpy as np
import pytest

from hpe_ray.camera import project_to_pixels
from hpe_ray.data import bvh
from hpe_ray.data.sample import BadSampleError
from hpe_ray.skeleton import BONES, JOINT_NAMES, bone_lengths

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU_CLIP = SHARED_DATA / "cmu-131" / "131_01.bvh"
BANDAI_DIR = SHARED_DATA / "bandai-namco-1" / "data"

# Hips with a 6-channel root, a 3-channel Chest (X Y Z order), a Leg (Z Y X order) and a Knee
# with 6 channels whose positions replace its offset; End Sites on Chest and Knee.
TINY_BVH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
  JOINT Leg
  {
    OFFSET 2 0 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    JOINT Knee
    {
      OFFSET 0 -4 0
      CHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation
      End Site
      {
        OFFSET 0 -3 0
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
1 2 3 0 0 0  0 0 0  0 0 0  0 -4 0 0 0 0
0 0 0 90 0 0  90 0 0  0 90 0  1 -4 0 0 0 0
"""
TINY_NAMES = ("Hips", "Chest", "Chest_End", "Leg", "Knee", "Knee_End")
# Frame 1 by hand. Rz(90) maps (x, y, z) -> (-y, x, z), Rx(90) (0, y, 0) -> (0, 0, y) and
# Ry(90) (x, y, z) -> (z, y, -x). Chest: Rz (0, 10, 0) = (-10, 0, 0); its End Site
# Rz Rx (0, 5, 0) = (0, 0, 5). Leg: Rz (2, 0, 0) = (0, 2, 0); Knee position channels (1, -4, 0)
# replace the offset: Rz Ry (1, -4, 0) = (4, 0, -1); its End Site Rz Ry (0, -3, 0) = (3, 0, 0).
TINY_FRAME_1 = np.array([[0, 0, 0], [-10, 0, 0], [-10, 0, 5], [0, 2, 0], [4, 2, -1], [7, 2, -1]], float)
TINY_FRAME_0 = np.array([[1, 2, 3], [1, 12, 3], [1, 17, 3], [3, 2, 3], [3, -2, 3], [3, -5, 3]], float)


@pytest.fixture
def tiny_clip(tmp_path):
    path = tmp_path / "tiny.bvh"
    path.write_text(TINY_BVH)
    return bvh.read_bvh(path)


def test_parser_reads_tree_channels_and_motion(tiny_clip):
    skeleton = tiny_clip.skeleton
    assert skeleton.names == TINY_NAMES
    assert skeleton.parents == (-1, 0, 1, 0, 3, 4)
    assert skeleton.channels[1] == ("Xrotation", "Yrotation", "Zrotation")
    assert skeleton.channels[2] == ()
    np.testing.assert_array_equal(skeleton.offsets[3], [2, 0, 0])
    assert tiny_clip.motion.shape == (2, 18)
    assert tiny_clip.fps == 2.0
    tiny_clip = bvh.BvhClip(tiny_clip.path, tiny_clip.skeleton, 0.0333333, tiny_clip.motion)
    assert tiny_clip.fps == 30.0  # Frame Time rounded in the file


def test_forward_kinematics_matches_hand_computed_positions(tiny_clip):
    positions = bvh.forward_kinematics(tiny_clip.skeleton, tiny_clip.motion)
    np.testing.assert_allclose(positions[0], TINY_FRAME_0, atol=1e-12)
    np.testing.assert_allclose(positions[1], TINY_FRAME_1, atol=1e-12)


def test_euler_order_is_the_channel_order():
    point = np.array([0.0, 5.0, 0.0])
    zx = bvh.euler_to_matrix(np.array([90.0, 90.0]), "ZX")
    xz = bvh.euler_to_matrix(np.array([90.0, 90.0]), "XZ")
    np.testing.assert_allclose(zx @ point, [0, 0, 5], atol=1e-12)   # Rz (Rx p)
    np.testing.assert_allclose(xz @ point, [-5, 0, 0], atol=1e-12)  # Rx (Rz p)


def test_joint_map_midpoints_virtual_sites_units_and_up_axis(tiny_clip):
    sources = ["Hips"] * 17
    sources[1] = ("Chest_End", "Knee_End")
    sources[2] = "Top"
    joint_map = bvh.JointMap("tiny", tuple(sources), mm_per_unit=10.0,
                             virtual_sites=(("Top", "Chest", (0.0, 0.0, 2.0)),))
    poses = bvh.joints_to_h36m(tiny_clip, joint_map)
    assert poses.shape == (2, 17, 3)
    # Frame 1: midpoint (-1.5, 1, 2); Top = Chest + Rz Rx (0, 0, 2) = (-10, 0, 0) + (2, 0, 0).
    # Y up -> z up maps (x, y, z) to (x, -z, y); cm -> mm.
    np.testing.assert_allclose(poses[1, 1], [-15, -20, 10], atol=1e-9)
    np.testing.assert_allclose(poses[1, 2], [-80, 0, 0], atol=1e-9)
    np.testing.assert_allclose(poses[0, 0], [10, -30, 20], atol=1e-9)
    np.testing.assert_allclose(bvh.joints_to_h36m(tiny_clip, joint_map, mm_per_unit=1.0), poses / 10)


def test_joint_map_naming_a_missing_joint_names_the_file(tiny_clip):
    joint_map = bvh.JointMap("tiny", ("Hips",) * 16 + ("Nose",), mm_per_unit=1.0)
    with pytest.raises(BadSampleError, match=r"tiny\.bvh.*'Nose'"):
        bvh.joints_to_h36m(tiny_clip, joint_map)


@pytest.mark.parametrize("old, new, line, problem", [
    ("OFFSET 2 0 0", "OFFSET 2 zero 0", 17, "OFFSET of Leg"),
    ("CHANNELS 3 Xrotation Yrotation Zrotation", "CHANNELS 3 Xrotation Wrotation Zrotation", 9, "Wrotation"),
    ("  JOINT Leg", "  JOINT Leg\n  {\n  JOINT", 17, "expected 'OFFSET'"),
    ("0 0 0 90 0 0  90 0 0", "0 0 0 90 0 0  90 0", 34, "17 values"),
    ("1 2 3 0 0 0", "1 2 x 0 0 0", 33, "could not convert"),
    ("Frames: 2", "Frames: 3", 34, "Frames says 3"),
    ("Frame Time: 0.5", "Frame Time:", 32, "Frame Time"),
    ("MOTION", "MOTIONS", None, "no MOTION section"),
])
def test_broken_file_error_names_file_and_line(tmp_path, old, new, line, problem):
    path = tmp_path / "broken.bvh"
    assert old in TINY_BVH
    path.write_text(TINY_BVH.replace(old, new, 1))
    with pytest.raises(BadSampleError) as caught:
        bvh.read_bvh(path)
    message = str(caught.value)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(where), message
    assert problem in message


def test_resampling_counts_and_interpolates():
    ramp = np.arange(9, dtype=float)[:, None, None] * np.ones((1, 17, 3))  # 9 frames at 120 fps
    down = bvh.resample_frames(ramp, 120, 30)
    assert len(down) == 3  # floor(8 * 30 / 120) + 1
    np.testing.assert_allclose(down[:, 0, 0], [0, 4, 8])
    up = bvh.resample_frames(ramp[:4], 30, 50)  # 0.1 s at 50 fps: 6 frames
    np.testing.assert_allclose(up[:, 0, 0], [0, 0.6, 1.2, 1.8, 2.4, 3.0])


def test_keep_in_capture_area_moves_rigidly_within_the_radius():
    walk = np.zeros((9, 17, 3))
    walk[:, :, 2] = np.arange(17) * 100.0
    walk[:, :, 0] = np.arange(17) * 10.0
    walk[:, :, 1] += np.linspace(-4000, 4000, 9)[:, None] + 5000
    kept = bvh.keep_in_capture_area(walk, 1500.0)
    distance = np.linalg.norm(kept[:, 0, :2], axis=-1)
    np.testing.assert_allclose(distance, [1500, 1500, 1500, 1000, 0, 1000, 1500, 1500, 1500], atol=1e-9)
    np.testing.assert_allclose(kept - kept[:, :1], walk - walk[:, :1])


def _cmu_clip() -> Path:
    if not CMU_CLIP.is_file():
        pytest.skip(f"shared CMU clip not found at {CMU_CLIP}")
    return CMU_CLIP


def _bandai_clips(*names: str) -> list[Path]:
    paths = [BANDAI_DIR / name for name in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"shared Bandai-Namco clips not found under {BANDAI_DIR}")
    return paths


# Plausible adult bone lengths (mm) per bone kind, wide enough for both mocap skeletons.
BONE_RANGES_MM = {
    ("pelvis", "right_hip"): (50, 200), ("right_hip", "right_knee"): (300, 550),
    ("right_knee", "right_ankle"): (300, 550), ("pelvis", "spine"): (100, 350), ("spine", "thorax"): (100, 350),
    ("thorax", "neck_nose"): (50, 200), ("neck_nose", "head_top"): (50, 200), ("thorax", "right_shoulder"): (80, 250),
    ("right_shoulder", "right_elbow"): (200, 350), ("right_elbow", "right_wrist"): (150, 320),
}


def _bone_range(parent: int, child: int) -> tuple[float, float]:
    names = tuple(JOINT_NAMES[j].replace("left", "right") for j in (parent, child))
    return BONE_RANGES_MM[names]


def _check_real_clip(path: Path, joint_map: bvh.JointMap, expected_frames: int, forward_joints: tuple[str, str]):
    clip = bvh.read_bvh(path)
    settings = bvh.BvhSettings(target_fps=30)
    poses_world_mm = bvh.clip_world_poses(clip, joint_map, settings)
    assert poses_world_mm.shape == (expected_frames, 17, 3)
    lengths = bone_lengths(poses_world_mm).mean(axis=0)
    for (parent, child), length in zip(BONES, lengths):
        low, high = _bone_range(parent, child)
        assert low <= length <= high, f"{JOINT_NAMES[parent]}->{JOINT_NAMES[child]}: {length:.0f} mm"
    assert np.all(poses_world_mm[:, [3, 6], 2] < poses_world_mm[:, [10], 2])  # feet below the head, z up
    assert np.all(poses_world_mm[:, 0, 2] > 300)  # pelvis above the floor (131_01 crouches to 50 cm)
    # Left is left: the left hip lies on the body's left of its walking direction (ankle -> toe).
    raw = bvh.y_up_to_z_up(bvh.forward_kinematics(clip.skeleton, clip.motion))
    toe, ankle = (clip.skeleton.index(name, str(path)) for name in forward_joints)
    forward = (raw[:, toe] - raw[:, ankle]) * [1, 1, 0]
    left = np.cross([0.0, 0.0, 1.0], forward)
    hips = bvh.joints_to_h36m(clip, joint_map)
    assert np.mean(np.sum((hips[:, 4] - hips[:, 1]) * left, axis=-1) > 0) > 0.75

    samples = list(bvh.clip_samples(path, joint_map, subject="s", action="a", settings=settings))
    assert len(samples) == 4 * expected_frames
    for sample in samples[::37]:
        sample.validate("test")
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 1.0
        width, height = sample.intrinsics.image_size
        assert np.all((sample.keypoints_2d_px > 0) & (sample.keypoints_2d_px < [width, height]))


def test_cmu_clip_converts_to_a_plausible_h36m_body():
    # 994 frames at 120 fps -> floor(993 / 4) + 1 at 30 fps.
    _check_real_clip(_cmu_clip(), bvh.CMU, 249, ("LeftToe", "LeftAnkle"))


def test_bandai_clips_convert_to_a_plausible_h36m_body():
    walk, bow = _bandai_clips("dataset-1_walk_normal_001.bvh", "dataset-1_bow_happy_001.bvh")
    _check_real_clip(walk, bvh.BANDAI_NAMCO, len(bvh.read_bvh(walk).motion), ("Toes_L", "Foot_L"))
    _check_real_clip(bow, bvh.BANDAI_NAMCO, len(bvh.read_bvh(bow).motion), ("Toes_L", "Foot_L"))


def test_bandai_splits_hold_out_styles(tmp_path):
    names = ("dataset-1_walk_normal_001.bvh", "dataset-1_bow_old_001.bvh", "dataset-1_bye_tired_001.bvh")
    for source in _bandai_clips(*names):
        (tmp_path / source.name).symlink_to(source)
    splits = bvh.bandai_namco_splits(tmp_path, test_styles=("old",), val_styles=("tired",),
                                     settings=bvh.BvhSettings(target_fps=5))
    seen = {split: {(s.subject, s.action) for s in samples} for split, samples in splits.items()}
    assert seen == {"train": {("normal", "walk")}, "val": {("tired", "bye")}, "test": {("old", "bow")}}
    with pytest.raises(ValueError, match="happy"):
        bvh.bandai_namco_splits(tmp_path, test_styles=("happy",))


def test_parse_bandai_name():
    assert bvh.parse_bandai_name("x/dataset-1_walk-back_not-confident_001.bvh") == ("walk-back", "not-confident", "001")
    with pytest.raises(BadSampleError, match="dataset-1_"):
        bvh.parse_bandai_name("131_01.bvh")


def test_virtual_cameras_and_rendered_crops():
    settings = bvh.BvhSettings(target_fps=10, cameras="virtual", virtual_cameras=2, image_size=64)
    samples = list(itertools.islice(bvh.clip_samples(_cmu_clip(), bvh.CMU, subject="131", action="01",
                                                     settings=settings), 3))
    for sample in samples:
        sample.validate("test")
        assert sample.camera_id == "virtual0"
        assert sample.image.shape == (64, 64, 3) and sample.image.std() > 10
        x0, y0, x1, y1 = sample.crop_box_px
        assert np.all((sample.keypoints_2d_px > [x0, y0]) & (sample.keypoints_2d_px < [x1, y1]))
        reprojected = project_to_pixels(sample.pose_3d_cam_mm.astype(np.float64), sample.intrinsics)
        assert np.abs(reprojected - sample.keypoints_2d_px).max() < 1.0
