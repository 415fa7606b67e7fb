import dataclasses
import tarfile

import numpy as np
import pytest

from hpe_ray import camera, skeleton
from hpe_ray.data import synthetic
from hpe_ray.data.synthetic import DOFS, SyntheticSpec

# Distinct lengths per bone, so a bone hung on the wrong joint shows.
BONES_MM = 100.0 + 10.0 * np.arange(16)


def _fk(**angles_deg) -> np.ndarray:
    angles = np.zeros(len(DOFS))
    for name, value in angles_deg.items():
        angles[DOFS.index(name)] = value
    return synthetic.forward_kinematics(angles, BONES_MM)


def _poses_only(**kwargs) -> SyntheticSpec:
    return SyntheticSpec(**{"image_size": 0, "sequences_per_action": 1, "frames_per_sequence": 6, "frame_step": 10,
                            **kwargs})


def test_rest_pose_hand_computed():
    pose = _fk()
    L = BONES_MM
    np.testing.assert_allclose(pose[0], [0, 0, 0])
    np.testing.assert_allclose(pose[3], [0, -L[0], -L[1] - L[2]])                # right ankle
    np.testing.assert_allclose(pose[6], [0, L[3], -L[4] - L[5]])                 # left ankle
    np.testing.assert_allclose(pose[8], [0, 0, L[6] + L[7]])                     # thorax
    np.testing.assert_allclose(pose[9] - pose[8], L[8] * np.array([0.3, 0, 1]) / np.sqrt(1.09))
    np.testing.assert_allclose(pose[10] - pose[9], L[9] * np.array([-0.25, 0, 1]) / np.sqrt(1.0625))
    np.testing.assert_allclose(pose[11] - pose[8], L[10] * np.array([0, 1, -0.1]) / np.sqrt(1.01))
    np.testing.assert_allclose(pose[13] - pose[11], [0, 0, -L[11] - L[12]])      # left arm hangs
    np.testing.assert_allclose(pose[14] - pose[8], L[13] * np.array([0, -1, -0.1]) / np.sqrt(1.01))
    np.testing.assert_allclose(pose[16] - pose[14], [0, 0, -L[14] - L[15]])


@pytest.mark.parametrize("angles, joint, parent, expected_unit", [
    ({"r_hip_flex": 90}, 2, 1, [1, 0, 0]),                         # thigh forwards
    ({"r_hip_flex": 90, "r_knee": 90}, 3, 2, [0, 0, -1]),          # seated: shin hangs
    ({"l_knee": 90}, 6, 5, [-1, 0, 0]),                            # knee bends backwards only
    ({"l_hip_abd": 30}, 5, 4, [0, 0.5, -np.sqrt(0.75)]),           # left thigh outwards = +y
    ({"r_hip_abd": 30}, 2, 1, [0, -0.5, -np.sqrt(0.75)]),          # right thigh outwards = -y
    ({"l_hip_twist": 90, "l_knee": 90}, 6, 5, [0, -1, 0]),         # knee turned out: foot to the midline
    ({"l_elbow": 90}, 13, 12, [1, 0, 0]),                          # forearm forwards
    ({"l_shoulder_elev": 90}, 12, 11, [1, 0, 0]),                  # arm raised forwards
    ({"l_shoulder_plane": 90, "l_shoulder_elev": 90}, 12, 11, [0, 1, 0]),   # sideways, left
    ({"r_shoulder_plane": 90, "r_shoulder_elev": 90}, 15, 14, [0, -1, 0]),  # sideways, right
    ({"r_shoulder_elev": -45}, 15, 14, [-np.sqrt(0.5), 0, -np.sqrt(0.5)]),  # swung backwards
    ({"trunk_flex": 90}, 8, 7, [1, 0, 0]),                         # half the bend at each trunk joint
    ({"trunk_flex": 90}, 7, 0, [np.sqrt(0.5), 0, np.sqrt(0.5)]),
    ({"trunk_side": 60}, 8, 7, [0, np.sqrt(0.75), 0.5]),           # bends to the left
    ({"neck_twist": 90, "neck_flex": 0}, 9, 8, np.array([0, 0.3, 1]) / np.sqrt(1.09)),  # looks left
])
def test_single_joint_angles_hand_computed(angles, joint, parent, expected_unit):
    pose = _fk(**angles)
    length = BONES_MM[joint - 1]  # bone i ends at joint i + 1
    np.testing.assert_allclose(pose[joint] - pose[parent], length * np.asarray(expected_unit), atol=1e-9)


def test_pelvis_list_lowers_the_left_hip():
    pose = _fk(pelvis_list=10)
    np.testing.assert_allclose(pose[4, 2], -BONES_MM[3] * np.sin(np.radians(10)))
    np.testing.assert_allclose(pose[1, 2], BONES_MM[0] * np.sin(np.radians(10)))  # right hip rises


def test_forward_kinematics_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="forward_kinematics"):
        synthetic.forward_kinematics(np.zeros(5), BONES_MM)


def test_mirrored_angles_give_the_mirrored_body():
    rng = np.random.default_rng(3)
    low, high = np.array(list(synthetic.JOINT_LIMITS_DEG.values())).T
    angles = rng.uniform(low, high, size=(20, len(DOFS)))
    bones = synthetic.subject_bone_lengths_mm("S1", 0)  # left and right equal
    swap = list(range(17))
    for left, right in zip(skeleton.LEFT_JOINTS, skeleton.RIGHT_JOINTS):
        swap[left], swap[right] = right, left
    mirrored = synthetic.forward_kinematics(synthetic.mirror_angles(angles), bones)
    expected = synthetic.forward_kinematics(angles, bones)[:, swap] * np.array([1, -1, 1])
    np.testing.assert_allclose(mirrored, expected, atol=1e-9)
    np.testing.assert_array_equal(synthetic.mirror_angles(synthetic.mirror_angles(angles)), angles)


def test_clip_to_limits():
    angles = np.zeros(len(DOFS))
    angles[DOFS.index("r_knee")] = -20
    angles[DOFS.index("l_elbow")] = 170
    clipped = synthetic.clip_to_limits(angles)
    assert clipped[DOFS.index("r_knee")] == 0 and clipped[DOFS.index("l_elbow")] == 150


def test_subject_bodies_are_deterministic_symmetric_and_distinct():
    s1 = synthetic.subject_bone_lengths_mm("S1", 0)
    np.testing.assert_array_equal(s1, synthetic.subject_bone_lengths_mm("S1", 0))
    np.testing.assert_array_equal(s1[0:3], s1[3:6])      # legs
    np.testing.assert_array_equal(s1[10:13], s1[13:16])  # arms
    assert np.abs(s1 - synthetic.subject_bone_lengths_mm("S5", 0)).max() > 5
    assert np.abs(s1 - synthetic.subject_bone_lengths_mm("S1", 1)).max() > 5
    rest = np.array([synthetic.REST_BONE_LENGTH_MM[k] for k in synthetic.BONE_KINDS])
    assert np.all(np.abs(s1 / rest - 1) < 0.17)


def test_bone_lengths_constant_per_subject_and_differ_between_subjects():
    per_subject = {}
    for sample in synthetic.generate_samples(_poses_only(), ["S1", "S9"]):
        lengths = skeleton.bone_lengths(sample.pose_3d_cam_mm.astype(float))
        per_subject.setdefault(sample.subject, []).append(lengths)
    for subject, lengths in per_subject.items():
        expected = synthetic.subject_bone_lengths_mm(subject, 0)
        np.testing.assert_allclose(np.array(lengths), np.broadcast_to(expected, (len(lengths), 16)), atol=0.01)
    assert np.abs(per_subject["S1"][0] - per_subject["S9"][0]).max() > 5


def test_knees_never_hyperextend_and_joints_stay_in_range():
    poses = np.array([s.pose_3d_cam_mm for s in synthetic.generate_samples(_poses_only(), ["S1", "S11"])], float)
    left_mm = poses[:, 4] - poses[:, 1]  # pelvis's left axis
    for hip, knee, ankle in ((1, 2, 3), (4, 5, 6)):
        thigh, shin = poses[:, knee] - poses[:, hip], poses[:, ankle] - poses[:, knee]
        # thigh x shin points to the body's left exactly when the shin folds backwards.
        bend = np.einsum("ni,ni->n", np.cross(thigh, shin), left_mm)
        bend /= np.linalg.norm(thigh, axis=1) * np.linalg.norm(shin, axis=1) * np.linalg.norm(left_mm, axis=1)
        assert bend.min() > -1e-4
        assert bend.max() > 0.5  # and they do bend
    for a, b, c in ((1, 2, 3), (4, 5, 6), (11, 12, 13), (14, 15, 16)):  # flexion at most 150 degrees
        u, v = poses[:, b] - poses[:, a], poses[:, c] - poses[:, b]
        cosine = np.einsum("ni,ni->n", u, v) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
        assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() <= 150.01


@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_sequences_stand_on_the_floor(action):
    bones = synthetic.subject_bone_lengths_mm("S6", 0)
    poses = synthetic.sequence_poses_world(action, bones, 30, 5, np.random.default_rng(1))
    lowest_ankle = poses[:, [3, 6], 2].min(axis=1)
    if action == "Jumping":
        assert lowest_ankle.min() == pytest.approx(synthetic.ANKLE_HEIGHT_MM)
        assert lowest_ankle.max() > synthetic.ANKLE_HEIGHT_MM + 40  # airborne in between
    else:
        np.testing.assert_allclose(lowest_ankle, synthetic.ANKLE_HEIGHT_MM)
    assert poses[..., 2].min() > 0
    assert np.abs(poses[..., :2]).max() < 3500  # inside the capture area


def test_samples_reproject_within_a_thousandth_of_a_pixel():
    for cameras in ("h36m", "virtual"):
        spec = _poses_only(cameras=cameras, actions=("Walking", "Sitting"))
        for sample in synthetic.generate_samples(spec, ["S5"]):
            uv = camera.project_to_pixels(sample.pose_3d_cam_mm, sample.intrinsics)
            np.testing.assert_allclose(uv, sample.keypoints_2d_px, atol=1e-3)
            stored = camera.Intrinsics.from_vector(sample.intrinsics.as_vector(), sample.intrinsics.image_size)
            np.testing.assert_allclose(camera.project_to_pixels(sample.pose_3d_cam_mm, stored),
                                       sample.keypoints_2d_px, atol=1e-3)


def test_sample_fields_keys_and_shapes():
    spec = SyntheticSpec(actions=("Greeting", "Squatting"), sequences_per_action=2, frames_per_sequence=2,
                         frame_step=7, image_size=32)
    samples = list(synthetic.generate_samples(spec, ["S7"]))
    assert len(samples) == 2 * 2 * 2 * 4
    assert len({s.key for s in samples}) == len(samples)
    first = samples[0]
    assert first.key == "synthetic_S7_Greeting-1_54138969_000000"
    assert [s.frame for s in samples[:2]] == [0, 7]
    assert {s.camera_id for s in samples} == set(camera.H36M_CAMERA_IDS)
    assert {s.action for s in samples} == {"Greeting", "Squatting"}
    for s in samples:
        assert s.keypoints_2d_px.dtype == np.float32 and s.pose_3d_cam_mm.dtype == np.float32
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        x0, y0, x1, y1 = s.crop_box_px
        assert x1 - x0 == pytest.approx(y1 - y0)
        assert np.all(s.keypoints_2d_px >= [x0, y0]) and np.all(s.keypoints_2d_px <= [x1, y1])
        assert s.intrinsics is camera.H36M_INTRINSICS[s.camera_id]


def test_same_seed_same_data_other_seed_other_data():
    spec = SyntheticSpec(actions=("Walking", "Phoning"), sequences_per_action=1, frames_per_sequence=2,
                         image_size=48, cameras="virtual", virtual_cameras=2)
    first, again = (list(synthetic.generate_samples(spec, ["S8"])) for _ in range(2))
    other = list(synthetic.generate_samples(dataclasses.replace(spec, seed=1), ["S8"]))
    for a, b in zip(first, again):
        assert a.key == b.key
        for field in ("keypoints_2d_px", "pose_3d_cam_mm", "image", "crop_box_px"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(a.intrinsics.as_vector(), b.intrinsics.as_vector())
    assert not np.allclose(first[0].pose_3d_cam_mm, other[0].pose_3d_cam_mm)


def test_poses_do_not_depend_on_rendering():
    spec = _poses_only(actions=("Discussion",))
    with_images = dataclasses.replace(spec, image_size=16)
    for a, b in zip(synthetic.generate_samples(spec, ["S1"]), synthetic.generate_samples(with_images, ["S1"])):
        assert a.image is None and b.image is not None
        np.testing.assert_array_equal(a.pose_3d_cam_mm, b.pose_3d_cam_mm)


def test_splits_are_disjoint_and_counts_match():
    subjects = synthetic.split_subjects()
    assert subjects["train"] == ("S1", "S5", "S6", "S7", "S8") and subjects["test"] == ("S9", "S11")
    assert not (set(subjects["train"]) & set(subjects["val"]) or set(subjects["train"]) & set(subjects["test"])
                or set(subjects["val"]) & set(subjects["test"]))
    spec = _poses_only(actions=("Jumping",), frames_per_sequence=3)
    for split, samples in synthetic.synthetic_splits(spec).items():
        samples = list(samples)
        assert len(samples) == spec.count(split) == len(subjects[split]) * 3 * 4
        assert {s.subject for s in samples} == set(subjects[split])


def test_h36m_like_cameras_look_at_the_centre_from_afar():
    for camera_id, intrinsics, extrinsics in synthetic.h36m_like_cameras():
        position = extrinsics.position_world_mm
        assert 4000 <= np.linalg.norm(position[:2]) <= 5600 and 1400 <= position[2] <= 1800
        centre_cam = camera.world_to_camera(np.array([synthetic.CAPTURE_CENTRE_MM]), extrinsics)
        np.testing.assert_allclose(camera.project_to_pixels(centre_cam, intrinsics)[0], intrinsics.center_px,
                                   atol=1e-6)


def test_virtual_cameras_cover_the_requested_ranges():
    rng = np.random.default_rng(0)
    target = np.array([300.0, -200.0, 900.0])
    for _ in range(200):
        intrinsics, extrinsics = synthetic.sample_virtual_camera(rng, target)
        assert 600 <= intrinsics.focal_px[0] <= 2000 and intrinsics.image_size in synthetic.VIRTUAL_IMAGE_SIZES
        assert not intrinsics.radial.any() and not intrinsics.tangential.any()
        offset = extrinsics.position_world_mm - target
        assert 2500 <= np.linalg.norm(offset[:2]) <= 8000 and 500 <= extrinsics.position_world_mm[2] <= 2500
        target_cam = camera.world_to_camera(target[None], extrinsics)
        assert target_cam[0, 2] > 0
        assert np.all(np.abs(target_cam[0, :2] / target_cam[0, 2]) < 0.3)  # aimed near the target


def test_virtual_camera_samples_keep_the_person_in_view():
    spec = _poses_only(cameras="virtual", virtual_cameras=3, actions=("Walking", "Jumping"))
    samples = list(synthetic.generate_samples(spec, ["S9"]))
    assert spec.count("test") == 2 * len(samples)
    assert {s.camera_id for s in samples} == {"virtual0", "virtual1", "virtual2"}
    assert len({tuple(s.intrinsics.as_vector()) for s in samples}) == 6  # per sequence and camera
    for s in samples:
        assert np.all((s.keypoints_2d_px >= 0) & (s.keypoints_2d_px < s.intrinsics.image_size))
        assert s.pose_3d_cam_mm[:, 2].min() >= 1000


@pytest.mark.parametrize("bad", [{"actions": ("Dancing",)}, {"actions": ()}, {"cameras": "kinect"},
                                 {"frames_per_sequence": 0}, {"image_size": -1}, {"seed": -3}])
def test_spec_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="SyntheticSpec"):
        SyntheticSpec(**bad)


def _tar_members(directory) -> dict[str, bytes]:
    members = {}
    for path in sorted(directory.glob("*.tar")):
        with tarfile.open(path) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return members


def test_write_synthetic_dataset_writes_every_split(tmp_path):
    spec = SyntheticSpec(actions=("Sitting",), sequences_per_action=1, frames_per_sequence=2, image_size=16)
    manifest = synthetic.write_synthetic_dataset(spec, tmp_path / "data", max_samples_per_shard=10)
    assert manifest["source"] == "synthetic" and list(manifest["settings"]["actions"]) == ["Sitting"]
    assert {split: entry["count"] for split, entry in manifest["splits"].items()} == {
        split: spec.count(split) for split in ("train", "val", "test")}
    assert (tmp_path / "data" / "manifest.json").is_file()


@pytest.mark.slow
def test_parallel_writing_gives_the_same_shards(tmp_path):
    spec = SyntheticSpec(actions=("Walking", "Photo"), sequences_per_action=2, frames_per_sequence=2, image_size=16)
    for workers in (1, 2):
        synthetic.write_synthetic_dataset(spec, tmp_path / f"w{workers}", max_samples_per_shard=7, workers=workers)
    serial, parallel = _tar_members(tmp_path / "w1"), _tar_members(tmp_path / "w2")
    assert len(serial) == sum(spec.count(split) for split in ("train", "val", "test")) * 5  # jpg + 4 pose fields
    assert serial == parallel
