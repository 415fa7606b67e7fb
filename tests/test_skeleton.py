import numpy as np
import pytest
import torch

from hpe_ray import skeleton


def test_tables_match_h36m_conventions():
    assert len(skeleton.JOINT_NAMES) == skeleton.NUM_JOINTS == 17
    assert skeleton.PARENTS == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert skeleton.H36M32_TO_17 == (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
    assert len(skeleton.BONES) == 16
    assert skeleton.BONES[0] == (0, 1) and skeleton.BONES[-1] == (15, 16)
    for left, right in zip(skeleton.LEFT_JOINTS, skeleton.RIGHT_JOINTS):
        assert skeleton.JOINT_NAMES[left].replace("left", "right") == skeleton.JOINT_NAMES[right]


def test_bone_lengths_of_a_hand_pose():
    pose = np.zeros((17, 3))
    pose[1] = [3.0, 4.0, 0.0]   # pelvis -> right hip: 5
    pose[2] = [3.0, 4.0, 12.0]  # right hip -> right knee: 12
    lengths = skeleton.bone_lengths(pose)
    assert lengths.shape == (16,)
    assert lengths[0] == 5.0 and lengths[1] == 12.0
    assert lengths[2] == 13.0  # right knee -> right ankle (ankle at origin): sqrt(9 + 16 + 144)


def test_bone_lengths_batched_numpy_and_torch_agree():
    poses = np.random.default_rng(0).normal(size=(4, 2, 17, 3))
    lengths = skeleton.bone_lengths(poses)
    assert lengths.shape == (4, 2, 16)
    np.testing.assert_allclose(skeleton.bone_lengths(torch.tensor(poses)).numpy(), lengths, atol=1e-12)


def test_flip_left_right_swaps_joints_and_negates_x():
    pose = np.random.default_rng(1).normal(size=(17, 3))
    original = pose.copy()
    flipped = skeleton.flip_left_right(pose)
    np.testing.assert_array_equal(pose, original)  # input untouched
    np.testing.assert_array_equal(flipped[4], [-pose[1, 0], pose[1, 1], pose[1, 2]])   # left hip <- right hip
    np.testing.assert_array_equal(flipped[16], [-pose[13, 0], pose[13, 1], pose[13, 2]])  # right wrist <- left
    np.testing.assert_array_equal(flipped[9], [-pose[9, 0], pose[9, 1], pose[9, 2]])   # centre joint stays
    np.testing.assert_array_equal(skeleton.flip_left_right(flipped), pose)
    np.testing.assert_allclose(skeleton.bone_lengths(flipped)[[0, 1, 2]], skeleton.bone_lengths(pose)[[3, 4, 5]])
    flipped_torch = skeleton.flip_left_right(torch.tensor(pose))
    np.testing.assert_array_equal(flipped_torch.numpy(), flipped)


def test_wrong_joint_count_is_rejected():
    with pytest.raises(ValueError, match="17"):
        skeleton.bone_lengths(np.zeros((16, 3)))
