"""The embedded default dataset: a synthetic Human3.6M look-alike the project generates itself.

Bodies are the 17-joint Human3.6M skeleton with Human3.6M-like bone lengths, scaled per subject.
Each action is a parametric family of joint-angle sequences, varied per sequence in speed,
amplitude, handedness, heading and place on the floor. Joint angles are clipped to anatomical
ranges before forward kinematics, so knees and elbows bend one way only. The poses are filmed
by four cameras placed like Human3.6M's (or by random virtual cameras) and rendered by
`hpe_ray.data.render`. World frame: z up, floor at z = 0, millimetres. Everything follows
from the seed: the same spec gives identical arrays and images.

Splits: train S1, S5, S6, S7, S8 and test S9, S11 as in Human3.6M Protocol 1. Validation uses
two further synthetic bodies, S2 and S3 (names Human3.6M never released), so that model
selection, like the test, measures generalisation to unseen people.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import NamedTuple

import numpy as np

from hpe_ray.camera import (H36M_CAMERA_IDS, H36M_INTRINSICS, Extrinsics, Intrinsics, look_at,
                            project_to_pixels, world_to_camera)
from hpe_ray.data.render import crop_box_around, render_person
from hpe_ray.data.sample import PoseSample, make_key
from hpe_ray.rotation import axis_rotation
from hpe_ray.skeleton import BONES

FPS = 50  # Human3.6M's capture rate; frame numbers count at this rate

SPLIT_SUBJECTS: dict[str, tuple[str, ...]] = {
    "train": ("S1", "S5", "S6", "S7", "S8"),
    "val": ("S2", "S3"),
    "test": ("S9", "S11"),
}

# ---------------------------------------------------------------------------------------------
# Bodies

# Rest length (mm) of each kind of bone, close to the average Human3.6M subject.
REST_BONE_LENGTH_MM: dict[str, float] = {
    "hip": 130.0, "thigh": 445.0, "shin": 440.0, "spine": 230.0, "thorax": 255.0, "neck": 115.0,
    "head": 115.0, "shoulder": 150.0, "upper_arm": 280.0, "forearm": 250.0,
}
BONE_KINDS: tuple[str, ...] = (  # per bone of skeleton.BONES
    "hip", "thigh", "shin", "hip", "thigh", "shin", "spine", "thorax", "neck", "head",
    "shoulder", "upper_arm", "forearm", "shoulder", "upper_arm", "forearm",
)
ANKLE_HEIGHT_MM = 80.0  # the ankle joint stands this far above the floor


def _unit(*xyz: float) -> np.ndarray:
    v = np.array(xyz, dtype=np.float64)
    return v / np.linalg.norm(v)


_DOWN, _UP = _unit(0, 0, -1), _unit(0, 0, 1)
# Per bone of skeleton.BONES: the segment frame its offset is fixed in, and the offset's
# direction there. Body frame: x forward, y left, z up.
_BONE_FRAME_AND_DIRECTION: tuple[tuple[str, np.ndarray], ...] = (
    ("pelvis", _unit(0, -1, 0)), ("right_thigh", _DOWN), ("right_shin", _DOWN),
    ("pelvis", _unit(0, 1, 0)), ("left_thigh", _DOWN), ("left_shin", _DOWN),
    ("lower_trunk", _UP), ("chest", _UP),
    ("head", _unit(0.3, 0, 1)),    # the "neck/nose" joint sits forward of the thorax
    ("head", _unit(-0.25, 0, 1)),  # head top, back above the nose
    ("chest", _unit(0, 1, -0.1)), ("left_upper_arm", _DOWN), ("left_forearm", _DOWN),
    ("chest", _unit(0, -1, -0.1)), ("right_upper_arm", _DOWN), ("right_forearm", _DOWN),
)


def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator determined by the seed and names (crc32: Python's str hash is salted per run)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(n).encode()) for n in names)])


def subject_bone_lengths_mm(subject: str, seed: int) -> np.ndarray:
    """(16,) bone lengths in skeleton.BONES order: a height scale times a scale per bone kind.

    Left and right stay symmetric; each factor varies within about +-8% across subjects.
    """
    rng = _rng(seed, "body", subject)
    height_scale = rng.uniform(0.92, 1.08)
    kind_scale = {kind: rng.uniform(0.93, 1.07) for kind in REST_BONE_LENGTH_MM}
    return np.array([REST_BONE_LENGTH_MM[k] * kind_scale[k] * height_scale for k in BONE_KINDS])


# ---------------------------------------------------------------------------------------------
# Joint angles and forward kinematics

# Degrees of freedom and their anatomical ranges (degrees). Left and right use mirrored
# conventions (abduction and twist positive outwards on both), so swapping the l_/r_ columns
# and negating the lateral trunk angles mirrors a motion.
JOINT_LIMITS_DEG: dict[str, tuple[float, float]] = {
    "pelvis_tilt": (-25.0, 30.0),   # top of the pelvis forwards
    "pelvis_list": (-15.0, 15.0),   # left hip lower
    "trunk_flex": (-25.0, 90.0),    # bend forwards
    "trunk_side": (-35.0, 35.0),    # bend to the left
    "trunk_twist": (-45.0, 45.0),   # chest turned to the left
    "neck_flex": (-45.0, 60.0),     # look down
    "neck_side": (-35.0, 35.0),     # tilt to the left
    "neck_twist": (-70.0, 70.0),    # look to the left
    **{f"{side}_{name}": limits for side in "lr" for name, limits in (
        ("hip_flex", (-30.0, 125.0)),        # thigh forwards
        ("hip_abd", (-20.0, 50.0)),          # thigh outwards
        ("hip_twist", (-40.0, 40.0)),        # knee turned outwards
        ("knee", (0.0, 150.0)),              # shin backwards only: no hyperextension
        ("shoulder_plane", (-40.0, 130.0)),  # plane of elevation: 0 forwards, 90 sideways
        ("shoulder_elev", (-50.0, 175.0)),   # arm raised in that plane (negative: backwards)
        ("shoulder_twist", (-80.0, 80.0)),   # forearm turned outwards
        ("elbow", (0.0, 150.0)),             # forearm forwards only
    )},
}
DOFS: tuple[str, ...] = tuple(JOINT_LIMITS_DEG)
_DOF = {name: i for i, name in enumerate(DOFS)}
_LOWER_DEG = np.array([low for low, _ in JOINT_LIMITS_DEG.values()])
_UPPER_DEG = np.array([high for _, high in JOINT_LIMITS_DEG.values()])
_LATERAL_DOFS = ("pelvis_list", "trunk_side", "trunk_twist", "neck_side", "neck_twist")


def _mirror_name(dof: str) -> str:
    return {"l_": "r_", "r_": "l_"}.get(dof[:2], dof[:2]) + dof[2:]


_MIRROR_SOURCE = [_DOF[_mirror_name(name)] for name in DOFS]
_MIRROR_SIGN = np.array([-1.0 if name in _LATERAL_DOFS else 1.0 for name in DOFS])


def clip_to_limits(angles_deg: np.ndarray) -> np.ndarray:
    """(..., D) joint angles clipped to JOINT_LIMITS_DEG."""
    return np.clip(angles_deg, _LOWER_DEG, _UPPER_DEG)


def mirror_angles(angles_deg: np.ndarray) -> np.ndarray:
    """(..., D) -> (..., D): the left-right mirrored motion (a right-handed wave becomes left-handed)."""
    return angles_deg[..., _MIRROR_SOURCE] * _MIRROR_SIGN


def _chain(*rotations: np.ndarray) -> np.ndarray:
    return functools.reduce(np.matmul, rotations)


def _segment_frames(angles_deg: np.ndarray) -> dict[str, np.ndarray]:
    """Orientation (..., 3, 3) of each body segment in the body frame, from (..., D) angles."""
    a = {name: np.radians(angles_deg[..., i]) for i, name in enumerate(DOFS)}
    # The trunk bends at two places, half the angle each, so the back curves.
    trunk_half = _chain(axis_rotation("y", a["trunk_flex"] / 2), axis_rotation("x", -a["trunk_side"] / 2),
                        axis_rotation("z", a["trunk_twist"] / 2))
    pelvis = _chain(axis_rotation("y", a["pelvis_tilt"]), axis_rotation("x", -a["pelvis_list"]))
    frames = {"pelvis": pelvis, "lower_trunk": pelvis @ trunk_half}
    frames["chest"] = frames["lower_trunk"] @ trunk_half
    frames["head"] = _chain(frames["chest"], axis_rotation("y", a["neck_flex"]), axis_rotation("x", -a["neck_side"]),
                            axis_rotation("z", a["neck_twist"]))
    for side, outwards in (("left", 1.0), ("right", -1.0)):
        s = side[0]
        frames[f"{side}_thigh"] = _chain(pelvis, axis_rotation("y", -a[f"{s}_hip_flex"]),
                                         axis_rotation("x", outwards * a[f"{s}_hip_abd"]),
                                         axis_rotation("z", outwards * a[f"{s}_hip_twist"]))
        frames[f"{side}_shin"] = frames[f"{side}_thigh"] @ axis_rotation("y", a[f"{s}_knee"])
        frames[f"{side}_upper_arm"] = _chain(frames["chest"], axis_rotation("z", outwards * a[f"{s}_shoulder_plane"]),
                                             axis_rotation("y", -a[f"{s}_shoulder_elev"]),
                                             axis_rotation("z", outwards * a[f"{s}_shoulder_twist"]))
        frames[f"{side}_forearm"] = frames[f"{side}_upper_arm"] @ axis_rotation("y", -a[f"{s}_elbow"])
    return frames


def forward_kinematics(angles_deg: np.ndarray, bone_lengths_mm: np.ndarray) -> np.ndarray:
    """Joint positions in the body frame: (..., D) degrees and (16,) mm -> (..., 17, 3) mm.

    Body frame: pelvis at the origin, x forwards, y to the left, z up. Each bone is a fixed
    offset in the frame of its segment, turned by the joint angles between it and the pelvis.
    """
    angles_deg = np.asarray(angles_deg, dtype=np.float64)
    if angles_deg.shape[-1] != len(DOFS) or np.shape(bone_lengths_mm) != (len(BONES),):
        raise ValueError(f"hpe_ray.data.synthetic.forward_kinematics: expected angles (..., {len(DOFS)}) "
                         f"and bone lengths ({len(BONES)},), got {angles_deg.shape} and "
                         f"{np.shape(bone_lengths_mm)}")
    frames = _segment_frames(angles_deg)
    joints = [np.zeros(angles_deg.shape[:-1] + (3,))]
    for (parent, _), (frame, direction), length in zip(BONES, _BONE_FRAME_AND_DIRECTION, bone_lengths_mm):
        joints.append(joints[parent] + frames[frame] @ direction * length)  # BONES' children are 1, 2, ..., 16
    return np.stack(joints, axis=-2)


def place_on_floor(pose_body_mm: np.ndarray, heading_rad: np.ndarray, position_xy_mm: np.ndarray,
                   lift_mm: np.ndarray) -> np.ndarray:
    """Body-frame poses (T, 17, 3) -> world (T, 17, 3): turned to heading_rad (T,) about z,
    moved to position_xy_mm (T, 2), lowest ankle ANKLE_HEIGHT_MM + lift_mm (T,) above the floor."""
    turned = np.einsum("tij,tkj->tki", axis_rotation("z", heading_rad), pose_body_mm)
    lowest_ankle_mm = turned[:, [3, 6], 2].min(axis=1)
    height_mm = ANKLE_HEIGHT_MM + lift_mm - lowest_ankle_mm
    return turned + np.concatenate([position_xy_mm, height_mm[:, None]], axis=1)[:, None, :]


# ---------------------------------------------------------------------------------------------
# Motions: one parametric family per action

class Motion(NamedTuple):
    """A motion before per-sequence style: angles_deg (T, D); offset_xy_mm (T, 2) travel on the
    floor; heading_rad (T,) relative to the sequence's yaw; lift_mm (T,) feet above the floor."""

    angles_deg: np.ndarray
    offset_xy_mm: np.ndarray
    heading_rad: np.ndarray
    lift_mm: np.ndarray


_NEUTRAL_DEG = {"l_hip_abd": 3.0, "r_hip_abd": 3.0, "l_knee": 3.0, "r_knee": 3.0,
                "l_shoulder_plane": 10.0, "r_shoulder_plane": 10.0, "l_shoulder_elev": 8.0,
                "r_shoulder_elev": 8.0, "l_elbow": 12.0, "r_elbow": 12.0}


def _pose(t_s: np.ndarray, **angles_deg) -> np.ndarray:
    """(T, D) angles: the neutral stance with the named DOFs set (scalars or (T,) arrays)."""
    angles = np.zeros((len(t_s), len(DOFS)))
    for name, value in {**_NEUTRAL_DEG, **angles_deg}.items():
        angles[:, _DOF[name]] = value
    return angles


def _both(**angles_deg) -> dict:
    """The same angles for the left and right side: _both(knee=20) -> {l_knee: 20, r_knee: 20}."""
    return {f"{side}_{name}": value for name, value in angles_deg.items() for side in "lr"}


def _in_place(angles_deg: np.ndarray, lift_mm: np.ndarray | None = None) -> Motion:
    frames = len(angles_deg)
    return Motion(angles_deg, np.zeros((frames, 2)), np.zeros(frames),
                  np.zeros(frames) if lift_mm is None else lift_mm)


def _wave(t_s: np.ndarray, freq_hz: float, phase: float = 0.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq_hz * t_s + phase)


def _rise(x: np.ndarray) -> np.ndarray:
    """0..1 with smooth ends: a raise/lower envelope from any signal (clipped to [0, 1])."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _wander(t_s: np.ndarray, rng: np.random.Generator, low: float, high: float, period_s: float) -> np.ndarray:
    """A smooth random curve in [low, high]: a random value every period_s, eased in between."""
    position = t_s / period_s
    knots = rng.uniform(low, high, size=int(position.max()) + 2)
    index = position.astype(int)
    ease = (1 - np.cos(np.pi * (position - index))) / 2
    return knots[index] * (1 - ease) + knots[index + 1] * ease


# Motions are written right-handed; the caller mirrors half the sequences. Each gets the time
# (s, already scaled by the sequence's speed), an amplitude factor and the sequence's rng.

def _walking(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Gait around a circle, as Human3.6M subjects walk around the capture area."""
    p = 2 * np.pi * 0.9 * t  # stride phase at 0.9 strides/s

    def swing(phase: float) -> np.ndarray:  # the knee bends in early swing, straight at heel strike
        return np.maximum(np.cos(p + phase + 0.2), 0) ** 1.5

    angles = _pose(t, r_hip_flex=8 + 22 * amp * np.sin(p), l_hip_flex=8 + 22 * amp * np.sin(p + np.pi),
                   r_knee=5 + 55 * amp * swing(0), l_knee=5 + 55 * amp * swing(np.pi),
                   r_shoulder_elev=6 + 20 * amp * np.sin(p + np.pi), l_shoulder_elev=6 + 20 * amp * np.sin(p),
                   r_elbow=20 + 12 * amp * (1 + np.sin(p + np.pi)), l_elbow=20 + 12 * amp * (1 + np.sin(p)),
                   trunk_flex=5, trunk_twist=-6 * amp * np.sin(p), pelvis_list=3 * np.sin(2 * p))
    radius_mm = rng.uniform(900, 1500)
    turn = rng.choice([-1.0, 1.0])
    around = turn * 1150 * amp * t / radius_mm  # 1.15 m/s at amplitude 1
    offset = radius_mm * np.stack([np.cos(around), np.sin(around)], axis=1)
    return Motion(angles, offset, around + turn * np.pi / 2, np.zeros(len(t)))


def _sitting(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Seated on a chair, leaning and bringing a hand to the mouth now and then (eating)."""
    to_mouth = _rise(1.5 * _wave(t, 0.25) + 0.3)
    angles = _pose(t, pelvis_tilt=-10, trunk_flex=15 + 10 * amp * _wave(t, 0.1),
                   **_both(hip_flex=80, hip_abd=10, knee=85 + 10 * _wave(t, 0.07)),
                   r_shoulder_plane=15, r_shoulder_elev=20 + 58 * to_mouth, r_shoulder_twist=-65 * to_mouth,
                   r_elbow=60 + 78 * to_mouth, l_shoulder_elev=15, l_elbow=70, neck_flex=15 - 10 * to_mouth)
    return _in_place(angles)


def _squatting(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Deep squats with the arms forwards for balance."""
    depth = amp * _rise(0.3 + 0.6 * (1 - np.cos(2 * np.pi * 0.3 * t)))  # bouncing low, rarely upright
    angles = _pose(t, trunk_flex=35 * depth, pelvis_tilt=10 * depth,
                   **_both(hip_flex=105 * depth, hip_abd=15, hip_twist=15, knee=135 * depth,
                           shoulder_plane=5, shoulder_elev=10 + 75 * depth, elbow=15))
    return _in_place(angles)


def _greeting(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Raising a hand overhead and waving."""
    raised = _rise(3 * _wave(t, 0.15) + 2.4)  # up about 80% of the time
    wave = _wave(t, 2.2)
    angles = _pose(t, r_shoulder_plane=70, r_shoulder_elev=10 + 135 * raised,
                   r_shoulder_twist=(30 + 15 * amp * wave) * raised, r_elbow=10 + (35 + 25 * amp * wave) * raised,
                   neck_twist=-15 * raised, neck_flex=-10 * raised, pelvis_list=4 * _wave(t, 0.2))
    return _in_place(angles)


def _directions(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Pointing with a straight arm, the trunk and head turning towards where it points."""
    raised = _rise(3 * _wave(t, 0.18) + 2.4)
    plane = _wander(t, rng, -10, 95, period_s=2.0)
    towards = -(plane - 30) * raised
    angles = _pose(t, r_shoulder_plane=plane, r_shoulder_elev=10 + 80 * amp * raised, r_elbow=12 - 8 * raised,
                   trunk_twist=0.3 * towards, neck_twist=0.5 * towards,
                   l_shoulder_plane=60, l_shoulder_elev=25, l_elbow=90, l_shoulder_twist=-60)  # hand on hip
    return _in_place(angles)


def _phoning(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Holding a phone at the right ear, gesturing with the free hand, turning slowly."""
    gesture = _wave(t, 0.5)
    angles = _pose(t, r_shoulder_plane=25, r_shoulder_elev=72, r_shoulder_twist=-25, r_elbow=148,
                   neck_side=-12, neck_flex=10,
                   l_shoulder_plane=25, l_shoulder_elev=25 + 20 * amp * gesture,
                   l_elbow=55 + 30 * amp * _wave(t, 0.5, 1.0), pelvis_list=4 * _wave(t, 0.15))
    motion = _in_place(angles)
    return motion._replace(heading_rad=np.radians(_wander(t, rng, -40, 40, period_s=3.0)))


def _photo(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Holding a camera to the eyes with both hands, crouching a little, scanning the scene."""
    raised = _rise(3 * _wave(t, 0.12) + 2.4)
    angles = _pose(t, **_both(shoulder_plane=30, shoulder_elev=10 + 85 * raised, shoulder_twist=-60 * raised,
                              elbow=15 + 110 * raised, hip_flex=15 * amp, knee=25 * amp, hip_abd=8),
                   trunk_twist=25 * amp * _wave(t, 0.15), neck_flex=5)
    return _in_place(angles)


def _purchases(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Bending down to pick something from a low shelf and standing up again."""
    bent = amp * _rise(2.5 * _wave(t, 0.22) + 1.5)  # down about 70% of the time
    angles = _pose(t, trunk_flex=75 * bent, pelvis_tilt=15 * bent, neck_flex=-25 * bent,
                   **_both(hip_flex=20 * bent, knee=30 * bent),
                   r_shoulder_plane=15, r_shoulder_elev=8 + 70 * bent, r_elbow=10,
                   l_shoulder_elev=8 + 30 * bent, l_elbow=40 * bent + 12)
    return _in_place(angles)


def _discussion(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Standing and talking with both hands, shifting weight and turning the head."""
    angles = _pose(t, **_both(shoulder_plane=20, shoulder_twist=-10),
                   r_shoulder_elev=30 + 20 * amp * _wave(t, 0.6), r_elbow=85 + 30 * amp * _wave(t, 0.6, 1.0),
                   l_shoulder_elev=30 + 20 * amp * _wave(t, 0.45, 2.0),
                   l_elbow=85 + 30 * amp * _wave(t, 0.45, 3.0),
                   trunk_twist=10 * _wave(t, 0.2), neck_twist=30 * _wave(t, 0.13),
                   pelvis_list=6 * _wave(t, 0.1), r_hip_abd=8, l_hip_abd=8)
    return _in_place(angles)


def _jumping(t: np.ndarray, amp: float, rng: np.random.Generator) -> Motion:
    """Jumping jacks: arms and legs open and close, airborne in between, crouched on landing."""
    p = 2 * np.pi * 0.9 * t
    spread = 0.5 - 0.5 * np.cos(p)
    landing = np.maximum(np.cos(2 * p), 0)  # the feet touch down when fully open or closed
    angles = _pose(t, **_both(shoulder_plane=85, shoulder_elev=15 + 150 * amp * spread, elbow=10,
                              hip_abd=4 + 22 * spread, hip_flex=5 + 25 * landing, knee=8 + 40 * landing),
                   trunk_flex=5 + 10 * landing)
    return _in_place(angles, lift_mm=120 * amp * np.maximum(-np.cos(2 * p), 0))


MOTIONS = {
    "Directions": _directions, "Discussion": _discussion, "Greeting": _greeting, "Jumping": _jumping,
    "Phoning": _phoning, "Photo": _photo, "Purchases": _purchases, "Sitting": _sitting,
    "Squatting": _squatting, "Walking": _walking,
}
ACTIONS: tuple[str, ...] = tuple(MOTIONS)


def _wobble(t_s: np.ndarray, rng: np.random.Generator, amplitude_deg: float) -> np.ndarray:
    """(T, D) slow random sway of every joint: two sinusoids each, so no two sequences match."""
    freq_hz = rng.uniform(0.1, 0.5, size=(2, len(DOFS)))
    phase = rng.uniform(0, 2 * np.pi, size=(2, len(DOFS)))
    scale = amplitude_deg * rng.uniform(0.3, 1.0, size=(2, len(DOFS)))
    return (scale * np.sin(2 * np.pi * freq_hz * t_s[:, None, None] + phase)).sum(axis=1)


def sequence_poses_world(action: str, bone_lengths_mm: np.ndarray, num_frames: int, frame_step: int,
                         rng: np.random.Generator) -> np.ndarray:
    """One sequence of `action` in the world frame: (num_frames, 17, 3) mm, sampled every
    `frame_step` frames at 50 fps, with random speed, amplitude, style, handedness, yaw and place."""
    t_s = np.arange(num_frames) * frame_step / FPS
    speed, amplitude, start_s = rng.uniform(0.75, 1.3), rng.uniform(0.75, 1.15), rng.uniform(0, 20)
    motion = MOTIONS[action](start_s + speed * t_s, amplitude, rng)
    angles = motion.angles_deg + rng.normal(0, 3, size=len(DOFS)) + _wobble(t_s, rng, 3.0)
    if rng.random() < 0.5:
        angles = mirror_angles(angles)
    pose_body_mm = forward_kinematics(clip_to_limits(angles), bone_lengths_mm)
    yaw = rng.uniform(0, 2 * np.pi)
    where = rng.uniform(0, 2 * np.pi)
    place_mm = np.sqrt(rng.uniform(0, 1)) * 700 * np.array([np.cos(where), np.sin(where)])  # uniform in a disc
    turn = axis_rotation("z", yaw)[:2, :2]
    return place_on_floor(pose_body_mm, yaw + motion.heading_rad, place_mm + motion.offset_xy_mm @ turn.T,
                          motion.lift_mm)


# ---------------------------------------------------------------------------------------------
# Cameras

# Camera centres (mm) like Human3.6M's, around the capture area (cf. VideoPose3D's extrinsics).
H36M_LIKE_POSITIONS_MM: dict[str, tuple[float, float, float]] = {
    "54138969": (1841.0, 4955.0, 1563.0), "55011271": (1761.0, -5078.0, 1606.0),
    "58860488": (-1847.0, 5215.0, 1492.0), "60457274": (-1795.0, -3723.0, 1575.0),
}
CAPTURE_CENTRE_MM = (0.0, 0.0, 900.0)  # where the fixed cameras look
VIRTUAL_IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480), (800, 600), (1000, 1000), (1280, 720), (1024, 768), (1920, 1080), (1080, 1920))


def h36m_like_cameras() -> list[tuple[str, Intrinsics, Extrinsics]]:
    """The four fixed cameras: (camera_id, H36M intrinsics, extrinsics looking at the centre)."""
    return [(camera_id, H36M_INTRINSICS[camera_id], look_at(H36M_LIKE_POSITIONS_MM[camera_id], CAPTURE_CENTRE_MM))
            for camera_id in H36M_CAMERA_IDS]


def sample_virtual_camera(rng: np.random.Generator,
                          target_world_mm=CAPTURE_CENTRE_MM) -> tuple[Intrinsics, Extrinsics]:
    """A random pinhole camera looking near `target_world_mm` from anywhere around it.

    Focal 600-2000 px, horizontal distance 2.5-8 m, height 0.5-2.5 m, one of
    VIRTUAL_IMAGE_SIZES, principal point within 2% of the image centre, no distortion.
    Values are float32-exact so the stored (9,) vector reproduces them.
    """
    width, height = VIRTUAL_IMAGE_SIZES[rng.integers(len(VIRTUAL_IMAGE_SIZES))]
    focal_px = rng.uniform(600, 2000)
    center_px = np.array([width, height]) * (0.5 + rng.uniform(-0.02, 0.02, size=2))
    vector = np.concatenate([[focal_px, focal_px], center_px, np.zeros(5)]).astype(np.float32)
    azimuth, distance_mm = rng.uniform(0, 2 * np.pi), rng.uniform(2500, 8000)
    target = np.asarray(target_world_mm, dtype=np.float64)
    position = [target[0] + distance_mm * np.cos(azimuth), target[1] + distance_mm * np.sin(azimuth),
                rng.uniform(500, 2500)]
    aim = target + rng.normal(0, 150, size=3)  # the person is not always centred
    return Intrinsics.from_vector(vector, (width, height)), look_at(position, aim)


def virtual_cameras_seeing(poses_world_mm: np.ndarray, count: int,
                            rng: np.random.Generator) -> list[tuple[str, Intrinsics, Extrinsics]]:
    """`count` virtual cameras that see every joint of the sequence (T, 17, 3) inside the image."""
    cameras = []
    for _ in range(1000):
        intrinsics, extrinsics = sample_virtual_camera(rng, poses_world_mm.mean(axis=(0, 1)))
        pose_cam_mm = world_to_camera(poses_world_mm, extrinsics)
        if pose_cam_mm[..., 2].min() < 1000:
            continue
        keypoints_px = project_to_pixels(pose_cam_mm, intrinsics)
        if np.all((keypoints_px >= 0) & (keypoints_px < intrinsics.image_size)):
            cameras.append((f"virtual{len(cameras)}", intrinsics, extrinsics))
            if len(cameras) == count:
                return cameras
    raise RuntimeError("hpe_ray.data.synthetic: no virtual camera sees the whole sequence after 1000 tries")


# ---------------------------------------------------------------------------------------------
# Samples

@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Per split: subjects x actions x sequences x frames x cameras samples.

    cameras: "h36m" (the four fixed Human3.6M-like cameras) or "virtual" (`virtual_cameras`
    random views per sequence: unseen viewpoints, focal lengths and image sizes).
    image_size: side (px) of the rendered square crop; 0 or None for poses only.
    frame_step: frames (at 50 fps) between consecutive samples of a sequence.
    """

    seed: int = 0
    actions: tuple[str, ...] = ACTIONS
    sequences_per_action: int = 4
    frames_per_sequence: int = 20
    frame_step: int = 10
    cameras: str = "h36m"
    virtual_cameras: int = 4
    image_size: int | None = 256
    crop_margin: float = 0.15

    def __post_init__(self) -> None:
        where = "hpe_ray.data.synthetic.SyntheticSpec"
        unknown = sorted(set(self.actions) - set(MOTIONS))
        if unknown or not self.actions:
            raise ValueError(f"{where}: actions must be a non-empty subset of {ACTIONS}, got unknown {unknown}")
        if self.cameras not in ("h36m", "virtual"):
            raise ValueError(f"{where}: cameras must be 'h36m' or 'virtual', got {self.cameras!r}")
        for name in ("sequences_per_action", "frames_per_sequence", "frame_step", "virtual_cameras"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0 or (self.image_size or 0) < 0 or self.crop_margin < 0:
            raise ValueError(f"{where}: seed, image_size and crop_margin must not be negative")

    @property
    def cameras_per_sequence(self) -> int:
        return len(H36M_CAMERA_IDS) if self.cameras == "h36m" else self.virtual_cameras

    def count(self, split: str) -> int:
        """Number of samples `synthetic_splits` yields for `split` (for progress bars)."""
        return (len(SPLIT_SUBJECTS[split]) * len(self.actions) * self.sequences_per_action
                * self.frames_per_sequence * self.cameras_per_sequence)


def split_subjects() -> dict[str, tuple[str, ...]]:
    """{"train": (S1, S5, S6, S7, S8), "val": (S2, S3), "test": (S9, S11)}: disjoint bodies."""
    return dict(SPLIT_SUBJECTS)


def generate_samples(spec: SyntheticSpec, subjects: Sequence[str]) -> Iterator[PoseSample]:
    """PoseSamples of `subjects`, sequence by sequence, camera by camera, frame by frame.

    Each sequence draws from its own generator (seed, subject, action, sequence), so any subset
    is reproducible on its own; poses do not depend on whether images are rendered.
    """
    for subject, action, sequence in _sequences(spec, subjects):
        yield from sequence_samples(spec, subject, action, sequence)


def synthetic_splits(spec: SyntheticSpec) -> dict[str, Iterator[PoseSample]]:
    """{"train" | "val" | "test": lazy sample iterator}; sizes from `spec.count(split)`."""
    return {split: generate_samples(spec, subjects) for split, subjects in SPLIT_SUBJECTS.items()}


def write_synthetic_dataset(spec: SyntheticSpec, out_dir: str | os.PathLike, *, max_samples_per_shard: int = 2000,
                            overwrite: bool = False, workers: int = 1) -> dict:
    """Generate every split and write it as shards of `out_dir` (shards.write_shards); returns the manifest.

    workers > 1: that many processes generate whole sequences while this one encodes and writes;
    the samples and their order are exactly those of one worker. The processes are spawned, so
    a script calling this with workers > 1 needs the usual `if __name__ == "__main__":` guard.
    """
    from hpe_ray.data.shards import write_shards  # pulls in webdataset and torch; generating needs neither

    totals = {split: spec.count(split) for split in SPLIT_SUBJECTS}
    write = functools.partial(write_shards, out_dir=out_dir, source="synthetic", settings=dataclasses.asdict(spec),
                              max_samples_per_shard=max_samples_per_shard, totals=totals, overwrite=overwrite)
    if workers <= 1:
        return write(synthetic_splits(spec))
    workers = min(workers, os.cpu_count() or 1)
    # spawn, not fork: the caller may hold threads (tqdm, BLAS, Ray) that a fork would copy mid-flight.
    # A worker that dies raises BrokenProcessPool here rather than hanging; one whose parent dies
    # (even by SIGKILL, which runs no cleanup) ends too instead of waiting on the queue forever.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        return write({split: _generate_in(pool, workers, spec, subjects)
                      for split, subjects in SPLIT_SUBJECTS.items()})


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when `parent_pid` ends. Linux sends it SIGKILL then
    (prctl PR_SET_PDEATHSIG; tied to the parent thread that started the worker, which here is the
    one that submits and shuts the pool down); elsewhere a thread polls the parent's PID."""
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


def _generate_in(pool: ProcessPoolExecutor, workers: int, spec: SyntheticSpec,
                 subjects: Sequence[str]) -> Iterator[PoseSample]:
    """generate_samples, sequences computed in `pool`, in order, at most 2 per worker in flight."""
    sequences = iter(_sequences(spec, subjects))
    pending = deque(pool.submit(_sequence_list, spec, *sequence) for sequence in islice(sequences, 2 * workers))
    while pending:
        samples = pending.popleft().result()
        pending.extend(pool.submit(_sequence_list, spec, *sequence) for sequence in islice(sequences, 1))
        yield from samples


def _sequence_list(spec: SyntheticSpec, subject: str, action: str, sequence: int) -> list[PoseSample]:
    return list(sequence_samples(spec, subject, action, sequence))


def _sequences(spec: SyntheticSpec, subjects: Sequence[str]) -> list[tuple[str, str, int]]:
    """(subject, action, sequence index) of every sequence, in generation order."""
    return [(subject, action, sequence) for subject in subjects for action in spec.actions
            for sequence in range(spec.sequences_per_action)]


def sequence_samples(spec: SyntheticSpec, subject: str, action: str, sequence: int) -> Iterator[PoseSample]:
    """The samples of one sequence: every camera, every frame."""
    rng = _rng(spec.seed, "sequence", subject, action, sequence)
    bone_lengths_mm = subject_bone_lengths_mm(subject, spec.seed)
    poses_world_mm = sequence_poses_world(action, bone_lengths_mm, spec.frames_per_sequence, spec.frame_step, rng)
    cameras = (h36m_like_cameras() if spec.cameras == "h36m"
               else virtual_cameras_seeing(poses_world_mm, spec.virtual_cameras, rng))
    for camera_id, intrinsics, extrinsics in cameras:
        # Stored as float32: project the stored values so 2D and 3D agree to float precision.
        pose_cam_mm = world_to_camera(poses_world_mm, extrinsics).astype(np.float32)
        keypoints_px = project_to_pixels(pose_cam_mm.astype(np.float64), intrinsics).astype(np.float32)
        for index in range(spec.frames_per_sequence):
            frame = index * spec.frame_step
            sample = PoseSample(
                key=make_key("synthetic", subject, f"{action} {sequence + 1}", camera_id, f"{frame:06d}"),
                keypoints_2d_px=keypoints_px[index], pose_3d_cam_mm=pose_cam_mm[index], intrinsics=intrinsics,
                subject=subject, action=action, camera_id=camera_id, frame=frame)
            if spec.image_size:
                sample.crop_box_px = crop_box_around(keypoints_px[index], spec.crop_margin)
                sample.image = render_person(pose_cam_mm[index], intrinsics, sample.crop_box_px,
                                             spec.image_size, rng)
            sample.validate(f"synthetic data (seed {spec.seed})")
            yield sample
