"""The Human3.6M 17-joint skeleton shared by every public 3D-lifting codebase.

Joint order, parents and the 32 -> 17 selection follow VideoPose3D / 3d-pose-baseline, so
preprocessed files and published numbers line up with ours.
"""

from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck_nose", "head_top",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
NUM_JOINTS = 17
ROOT = 0
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
LEFT_JOINTS: tuple[int, ...] = (4, 5, 6, 11, 12, 13)
RIGHT_JOINTS: tuple[int, ...] = (1, 2, 3, 14, 15, 16)
BONES: tuple[tuple[int, int], ...] = tuple(
    (parent, child) for child, parent in enumerate(PARENTS) if parent >= 0
)
# Each joint's neighbours in the skeleton (its parent and its children), in index order.
JOINT_NEIGHBOURS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted({p for p in (PARENTS[j],) if p >= 0} | {c for c, p in enumerate(PARENTS) if p == j}))
    for j in range(NUM_JOINTS))
# Indices kept from the original 32-joint mocap skeleton.
H36M32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

_BONE_PARENTS = [parent for parent, _ in BONES]
_BONE_CHILDREN = [child for _, child in BONES]
# Joint i of a mirrored pose is joint _MIRROR[i] of the original.
_MIRROR = list(range(NUM_JOINTS))
for _left, _right in zip(LEFT_JOINTS, RIGHT_JOINTS):
    _MIRROR[_left], _MIRROR[_right] = _right, _left


def bone_lengths(pose_3d):
    """Length of each bone in BONES order: (..., 17, 3) -> (..., 16), unit of the input.

    Works on numpy arrays and torch tensors alike.
    """
    _check_joints(pose_3d)
    offsets = pose_3d[..., _BONE_CHILDREN, :] - pose_3d[..., _BONE_PARENTS, :]
    return (offsets * offsets).sum(-1) ** 0.5


def flip_left_right(pose):
    """Mirror a pose in the camera's x axis: (..., 17, D) -> (..., 17, D), D = 2 or 3.

    Left and right joints swap names, so the result is again an anatomically labelled pose.
    x is negated about 0, which suits root-relative 3D poses (camera frame, x right); 2D
    pixel keypoints must be mirrored about the image centre by the caller instead.
    """
    _check_joints(pose)
    mirrored = pose[..., _MIRROR, :]  # advanced indexing copies: the caller's pose is untouched
    mirrored[..., 0] = -mirrored[..., 0]
    return mirrored


def _check_joints(pose) -> None:
    if pose.ndim < 2 or pose.shape[-2] != NUM_JOINTS:
        raise ValueError(f"hpe_ray.skeleton: expected a pose of shape (..., {NUM_JOINTS}, D), "
                         f"got {tuple(pose.shape)}")

