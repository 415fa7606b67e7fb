"""BVH motion capture -> PoseSample: parser, forward kinematics, joint maps, virtual cameras.

A BVH file is a joint tree (HIERARCHY: OFFSET and CHANNELS per joint, End Sites) and one row of
channel values per frame (MOTION). Reading one goes:

    read_bvh -> forward_kinematics (file units, file axes) -> joints_to_h36m (17 joints, world mm,
    z up) -> resample_frames (target fps) -> cameras -> project (+ render_person) -> PoseSample

Conventions of the parser, as the common exporters write BVH:
- rotation channels are Euler angles in degrees, applied in the order the channels are listed,
  first = outermost: "Zrotation Xrotation Yrotation" is R = Rz Rx Ry, p_parent = R p_child + t;
- position channels *replace* the OFFSET of their joint (Bandai-Namco writes 6 channels on every
  joint whose positions equal the offsets; adding them would double every bone);
- each joint reads its own channel order, so mixed orders within one file are fine.

Joint maps give, for each of the 17 Human3.6M joints, a BVH joint or the midpoint of two, plus
the unit scale and up axis of that skeleton. Points the BVH lacks (a head top) are added as
virtual end sites: fixed offsets in a joint's frame, so they follow its rotation.

Bandai-Namco clips have one body for all clips and no subjects: `bandai_namco_splits` holds out
motion *styles* instead (subject = style, action = motion content).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hpe_ray.camera import (H36M_CAMERA_IDS, H36M_INTRINSICS, Extrinsics, Intrinsics, look_at,
                            project_to_pixels, world_to_camera)
from hpe_ray.data.render import crop_box_around, render_person
from hpe_ray.data.sample import BadSampleError, PoseSample, make_key
from hpe_ray.data.synthetic import H36M_LIKE_POSITIONS_MM, virtual_cameras_seeing
from hpe_ray.rotation import axis_rotation
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS

log = logging.getLogger(__name__)

_AXES = "XYZ"
_CHANNEL_NAMES = frozenset(f"{axis}{kind}" for axis in _AXES for kind in ("position", "rotation"))
_TOKEN = re.compile(r"[{}]|[^\s{}]+")


@dataclass(frozen=True, eq=False)
class BvhSkeleton:
    """The joint tree of a BVH file; parents come before their children.

    names: joints, end sites named "<parent>_End". parents: index of the parent, -1 for the root.
    offsets: (J, 3) rest offsets from the parent, file units. channels: per joint the channel
    names in file order, e.g. ("Xposition", ..., "Yrotation"); () for end sites.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]

    def index(self, name: str, origin: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise BadSampleError(f"{origin}: skeleton has no joint {name!r} "
                                 f"(joints: {', '.join(self.names)})") from None


@dataclass(frozen=True, eq=False)
class BvhClip:
    """A parsed BVH file: skeleton, frame time and motion (T, C) channel values in file order."""

    path: Path
    skeleton: BvhSkeleton
    frame_time_s: float
    motion: np.ndarray

    @property
    def fps(self) -> float:
        """Frames per second to 0.01: files round Frame Time (0.0333333 s is 30 fps, not 30.00003)."""
        return round(1.0 / self.frame_time_s, 2)


class _Tokens:
    """Whitespace/brace tokens of the HIERARCHY with their line numbers, for error messages."""

    def __init__(self, lines: Sequence[str], origin: str):
        self.origin = origin
        self.items = [(match.group(), number) for number, line in enumerate(lines, start=1)
                      for match in _TOKEN.finditer(line)]
        self.at = 0

    def error(self, problem: str) -> BadSampleError:
        number = self.items[min(self.at, len(self.items) - 1)][1] if self.items else 1
        return BadSampleError(f"{self.origin}:{number}: {problem}")

    def peek(self) -> str | None:
        return self.items[self.at][0] if self.at < len(self.items) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise self.error(f"file ends inside HIERARCHY (expected {expected or 'more'})")
        if expected is not None and token != expected:
            raise self.error(f"expected {expected!r}, got {token!r}")
        self.at += 1
        return token

    def numbers(self, count: int, what: str) -> list[float]:
        values = []
        for _ in range(count):
            try:
                values.append(float(self.peek() or "missing"))
            except ValueError:
                raise self.error(f"{what}: expected a number, got {self.peek()!r}") from None
            self.at += 1
        return values


def read_bvh(path: str | Path) -> BvhClip:
    """Parse a BVH file; BadSampleError names the file and line of the first problem."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise BadSampleError(f"{path}: cannot read BVH file: {err}") from None
    motion_line = next((i for i, line in enumerate(lines) if line.strip() == "MOTION"), None)
    if motion_line is None:
        raise BadSampleError(f"{path}: no MOTION section")
    skeleton = _parse_hierarchy(_Tokens(lines[:motion_line], str(path)))
    frame_time_s, motion = _parse_motion(lines, motion_line, skeleton, str(path))
    return BvhClip(path, skeleton, frame_time_s, motion)


def _parse_hierarchy(tokens: _Tokens) -> BvhSkeleton:
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []

    def joint(name: str, parent: int, is_end_site: bool) -> None:
        index = len(names)
        tokens.take("{")
        tokens.take("OFFSET")
        names.append(name)
        parents.append(parent)
        offsets.append(tokens.numbers(3, f"OFFSET of {name}"))
        channels.append(() if is_end_site else _channels(tokens, name))
        while (token := tokens.take()) != "}":
            if is_end_site:
                raise tokens.error(f"End Site of {names[parent]}: expected '}}', got {token!r}")
            if token == "JOINT":
                joint(tokens.take(), index, False)
            elif token == "End":
                tokens.take("Site")
                joint(f"{name}_End", index, True)
            else:
                raise tokens.error(f"in joint {name}: expected JOINT, End Site or '}}', got {token!r}")

    tokens.take("HIERARCHY")
    tokens.take("ROOT")
    joint(tokens.take(), -1, False)
    if tokens.peek() is not None:
        raise tokens.error(f"unexpected {tokens.peek()!r} after the root joint (one ROOT per file)")
    return BvhSkeleton(tuple(names), tuple(parents), np.array(offsets), tuple(channels))


def _channels(tokens: _Tokens, name: str) -> tuple[str, ...]:
    tokens.take("CHANNELS")
    count_token = tokens.take()
    if not count_token.isdigit():
        raise tokens.error(f"CHANNELS of {name}: expected a channel count, got {count_token!r}")
    found = []
    for _ in range(int(count_token)):
        if tokens.peek() not in _CHANNEL_NAMES:
            raise tokens.error(f"CHANNELS of {name}: unknown channel {tokens.peek()!r}")
        found.append(tokens.take())
    return tuple(found)


def _parse_motion(lines: Sequence[str], motion_line: int, skeleton: BvhSkeleton,
                  origin: str) -> tuple[float, np.ndarray]:
    """Frames/Frame Time header and the (T, C) value rows after line index `motion_line`."""
    frames = _header_value(lines, motion_line + 1, "Frames:", origin)
    frame_time_s = _header_value(lines, motion_line + 2, "Frame Time:", origin)
    if frames != int(frames) or frames < 1 or not frame_time_s > 0:
        raise BadSampleError(f"{origin}:{motion_line + 2}: need Frames >= 1 and Frame Time > 0, "
                             f"got {frames} and {frame_time_s}")
    count, width = int(frames), sum(len(c) for c in skeleton.channels)
    first = motion_line + 3  # index of the first frame's line
    rows = lines[first:first + count]
    if len(rows) < count:
        raise BadSampleError(f"{origin}:{len(lines)}: Frames says {count} but the file has {len(rows)}")
    motion = np.empty((count, width))
    for index, row in enumerate(rows):
        values = row.split()
        if len(values) != width:
            raise BadSampleError(f"{origin}:{first + index + 1}: frame has {len(values)} values, "
                                 f"the HIERARCHY declares {width} channels")
        try:
            motion[index] = values  # numpy parses the strings
        except ValueError as err:
            raise BadSampleError(f"{origin}:{first + index + 1}: {err}") from None
    return frame_time_s, motion


def _header_value(lines: Sequence[str], index: int, label: str, origin: str) -> float:
    line = lines[index].strip() if index < len(lines) else ""
    if not line.startswith(label):
        raise BadSampleError(f"{origin}:{index + 1}: expected {label!r}, got {line[:40]!r}")
    try:
        return float(line[len(label):])
    except ValueError:
        raise BadSampleError(f"{origin}:{index + 1}: {label} needs a number, got {line[:40]!r}") from None


def euler_to_matrix(angles_deg: np.ndarray, axes: str) -> np.ndarray:
    """R = R_axes[0](a0) R_axes[1](a1) ... (..., 3, 3) from angles (..., len(axes)) in degrees."""
    rotation = np.broadcast_to(np.eye(3), angles_deg.shape[:-1] + (3, 3))
    for k, axis in enumerate(axes):
        rotation = rotation @ axis_rotation(axis, np.radians(angles_deg[..., k]))
    return rotation


def forward_kinematics(skeleton: BvhSkeleton, motion: np.ndarray) -> np.ndarray:
    """Joint positions (T, J, 3) in file units and axes from motion (T, C); vectorised over frames."""
    frames = len(motion)
    positions = np.empty((frames, len(skeleton.names), 3))
    rotations = np.empty((frames, len(skeleton.names), 3, 3))
    column = 0
    for j, (parent, channels) in enumerate(zip(skeleton.parents, skeleton.channels)):
        values = motion[:, column:column + len(channels)]
        column += len(channels)
        translation = np.repeat(skeleton.offsets[j][None], frames, axis=0)
        rotation_axes = ""
        rotation_columns = []
        for k, channel in enumerate(channels):
            if channel.endswith("position"):
                translation[:, _AXES.index(channel[0])] = values[:, k]
            else:
                rotation_axes += channel[0]
                rotation_columns.append(k)
        local = euler_to_matrix(values[:, rotation_columns], rotation_axes)
        if parent < 0:
            positions[:, j] = translation
            rotations[:, j] = local
        else:
            positions[:, j] = positions[:, parent] + np.einsum("tij,tj->ti", rotations[:, parent], translation)
            rotations[:, j] = rotations[:, parent] @ local
    return positions


JointSource = str | tuple[str, str]
"""A BVH joint name, or two names whose midpoint is the Human3.6M joint."""


@dataclass(frozen=True)
class JointMap:
    """How one BVH skeleton becomes the Human3.6M 17 joints.

    sources: 17 entries in skeleton.JOINT_NAMES order. virtual_sites: (name, parent joint,
    offset in the parent's frame, file units) points added to the tree before forward
    kinematics, usable as sources. mm_per_unit: file unit in mm. up_axis: the file's up axis.
    """

    name: str
    sources: tuple[JointSource, ...]
    mm_per_unit: float
    up_axis: Literal["y", "z"] = "y"
    virtual_sites: tuple[tuple[str, str, tuple[float, float, float]], ...] = ()


# Bandai-Namco Research Motion dataset 1: cm, Y up, bones along each joint's local x.
# Spine: midway between the Spine and Chest joints, i.e. about halfway from the pelvis to the
# neck base as in Human3.6M; thorax: Neck (the neck base). "Head" is the top of the neck, not the
# head top, and its End Site has a zero offset, so the nose level and the head top are virtual
# sites along the head's own axis, 5 cm and 17 cm past the top of the neck: about 11 and 23 cm
# above the neck base as in Human3.6M. Pelvis to hip is 68 mm (Human3.6M: about 130 mm).
BANDAI_NAMCO = JointMap(
    name="bandai-namco",
    sources=("Hips", "UpperLeg_R", "LowerLeg_R", "Foot_R", "UpperLeg_L", "LowerLeg_L", "Foot_L",
             ("Spine", "Chest"), "Neck", "Nose", "HeadTop",
             "UpperArm_L", "LowerArm_L", "Hand_L", "UpperArm_R", "LowerArm_R", "Hand_R"),
    mm_per_unit=10.0,
    virtual_sites=(("Nose", "Head", (5.0, 0.0, 0.0)), ("HeadTop", "Head", (17.0, 0.0, 0.0))),
)

# CMU Graphics Lab mocap, 31-joint BVH (the 3ds-Max-friendly conversion): Y up; the unit is the
# ASF's `length 0.45`, i.e. 1/0.45 inch = 56.44 mm (thigh then 410 mm). Spine: midway between
# Chest and Chest2; thorax: Neck, level with the shoulders; neck/nose: Head (the skull base);
# head top: the Head End Site.
CMU = JointMap(
    name="cmu",
    sources=("Hips", "RightHip", "RightKnee", "RightAnkle", "LeftHip", "LeftKnee", "LeftAnkle",
             ("Chest", "Chest2"), "Neck", "Head", "Head_End",
             "LeftShoulder", "LeftElbow", "LeftWrist", "RightShoulder", "RightElbow", "RightWrist"),
    mm_per_unit=25.4 / 0.45,
)

# What `hpe-ray predict` writes (hpe_ray.inference.outputs.write_bvh): the 17 joints under their
# own names, cm, Y up, so predictions read back like any mocap clip.
HPE_RAY = JointMap(name="hpe-ray", sources=JOINT_NAMES, mm_per_unit=10.0)

JOINT_MAPS = {m.name: m for m in (BANDAI_NAMCO, CMU, HPE_RAY)}


def with_virtual_sites(skeleton: BvhSkeleton, sites: Iterable[tuple[str, str, tuple[float, float, float]]],
                       origin: str) -> BvhSkeleton:
    """The skeleton plus channel-less end sites (name, parent, offset); appended after all joints."""
    names, parents, offsets = list(skeleton.names), list(skeleton.parents), list(skeleton.offsets)
    for name, parent, offset in sites:
        names.append(name)
        parents.append(skeleton.index(parent, origin))
        offsets.append(np.asarray(offset, dtype=np.float64))
    return BvhSkeleton(tuple(names), tuple(parents), np.array(offsets),
                       skeleton.channels + ((),) * (len(names) - len(skeleton.names)))


def joints_to_h36m(clip: BvhClip, joint_map: JointMap, mm_per_unit: float | None = None) -> np.ndarray:
    """Human3.6M 17-joint positions (T, 17, 3) in world mm, z up, from a clip and its joint map.

    mm_per_unit overrides the map's unit scale (None: the map's).
    """
    origin = str(clip.path)
    if len(joint_map.sources) != NUM_JOINTS:
        raise ValueError(f"joint map {joint_map.name!r}: {len(joint_map.sources)} sources, need {NUM_JOINTS}")
    skeleton = with_virtual_sites(clip.skeleton, joint_map.virtual_sites, origin)
    positions = forward_kinematics(skeleton, clip.motion)
    picked = np.stack([_source_position(positions, skeleton, source, origin) for source in joint_map.sources],
                      axis=1)
    picked *= joint_map.mm_per_unit if mm_per_unit is None else mm_per_unit
    return y_up_to_z_up(picked) if joint_map.up_axis == "y" else picked


def _source_position(positions: np.ndarray, skeleton: BvhSkeleton, source: JointSource, origin: str) -> np.ndarray:
    if isinstance(source, str):
        return positions[:, skeleton.index(source, origin)]
    first, second = (skeleton.index(name, origin) for name in source)
    return (positions[:, first] + positions[:, second]) / 2


def y_up_to_z_up(points: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) by +90 degrees about x: (x, y, z) -> (x, -z, y); a rotation, so no mirroring."""
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


def resample_frames(positions: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Linear interpolation of (T, ...) frames at source_fps to target_fps, same start and time span.

    Output frame k is at time k / target_fps; floor((T - 1) * target / source) + 1 frames.
    """
    duration_s = (len(positions) - 1) / source_fps
    times_s = np.arange(int(np.floor(duration_s * target_fps + 1e-9)) + 1) / target_fps
    where = times_s * source_fps
    before = np.minimum(np.floor(where).astype(int), len(positions) - 1)
    after = np.minimum(before + 1, len(positions) - 1)
    weight = (where - before).reshape((-1,) + (1,) * (positions.ndim - 1))
    return positions[before] * (1 - weight) + positions[after] * weight


@dataclass(frozen=True)
class BvhSettings:
    """How clips become samples.

    target_fps: resample to this rate (None keeps the file's; Bandai-Namco is 30, CMU 120).
    cameras: "h36m" (the four fixed Human3.6M-like cameras of the synthetic data, looking at the
    clip's mean pelvis) or "virtual" (`virtual_cameras` random cameras per clip that see every
    joint). image_size: side (px) of the rendered square crop; None for poses only.
    mm_per_unit: None uses the joint map's. area_radius_mm: long walks are kept inside the
    capture area (see `keep_in_capture_area`). seed: cameras and rendering, per clip.
    """

    target_fps: float | None = 30.0
    cameras: Literal["h36m", "virtual"] = "h36m"
    virtual_cameras: int = 4
    image_size: int | None = None
    crop_margin: float = 0.15
    mm_per_unit: float | None = None
    area_radius_mm: float = 1500.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cameras not in ("h36m", "virtual"):
            raise ValueError(f"BvhSettings.cameras must be 'h36m' or 'virtual', got {self.cameras!r}")
        if (self.target_fps is not None and self.target_fps <= 0) or self.virtual_cameras < 1 \
                or self.area_radius_mm <= 0:
            raise ValueError(f"BvhSettings: target_fps, virtual_cameras and area_radius_mm must be positive: {self}")


def keep_in_capture_area(poses_world_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Move the clip (T, 17, 3) so its mean pelvis is at x = y = 0 and no pelvis is farther than radius_mm.

    Frames beyond the radius are shifted rigidly back to its edge, like a treadmill: a Bandai-Namco
    walk covers 8 m, which would leave fixed cameras' views. Poses and the floor are unchanged.
    """
    pelvis_xy = poses_world_mm[:, 0, :2]
    centred_xy = pelvis_xy - pelvis_xy.mean(axis=0)
    distance = np.linalg.norm(centred_xy, axis=-1, keepdims=True)
    kept_xy = centred_xy * np.minimum(1.0, radius_mm / np.maximum(distance, 1e-9))
    moved = poses_world_mm.copy()
    moved[..., :2] += (kept_xy - pelvis_xy)[:, None]
    return moved


def clip_world_poses(clip: BvhClip, joint_map: JointMap, settings: BvhSettings) -> np.ndarray:
    """(T', 17, 3) world mm, z up, at settings.target_fps, inside the capture area."""
    poses_world_mm = joints_to_h36m(clip, joint_map, settings.mm_per_unit)
    if settings.target_fps is not None:
        poses_world_mm = resample_frames(poses_world_mm, clip.fps, settings.target_fps)
    return keep_in_capture_area(poses_world_mm, settings.area_radius_mm)


def clip_cameras(poses_world_mm: np.ndarray, settings: BvhSettings,
                 rng: np.random.Generator) -> list[tuple[str, Intrinsics, Extrinsics]]:
    """(camera_id, intrinsics, extrinsics) for one clip (T, 17, 3) world mm."""
    if settings.cameras == "h36m":
        target = poses_world_mm[:, 0].mean(axis=0)
        return [(camera_id, H36M_INTRINSICS[camera_id], look_at(H36M_LIKE_POSITIONS_MM[camera_id], target))
                for camera_id in H36M_CAMERA_IDS]
    return virtual_cameras_seeing(poses_world_mm, settings.virtual_cameras, rng)


def clip_samples(path: str | Path, joint_map: JointMap, *, subject: str, action: str,
                 settings: BvhSettings = BvhSettings()) -> Iterator[PoseSample]:
    """All samples of one BVH file: camera by camera, frame by frame (frames at the target fps)."""
    path = Path(path)
    clip = read_bvh(path)
    poses_world_mm = clip_world_poses(clip, joint_map, settings)
    rng = np.random.default_rng([settings.seed, zlib.crc32(path.name.encode())])
    cameras = clip_cameras(poses_world_mm, settings, rng)
    log.info("%s: %d frames x %d cameras", path.name, len(poses_world_mm), len(cameras))
    for camera_id, intrinsics, extrinsics in cameras:
        # Project the float32 values that are stored, so 2D and 3D agree to float precision.
        pose_3d_cam_mm = world_to_camera(poses_world_mm, extrinsics).astype(np.float32)
        keypoints_2d_px = project_to_pixels(pose_3d_cam_mm.astype(np.float64), intrinsics).astype(np.float32)
        for frame in range(len(pose_3d_cam_mm)):
            sample = PoseSample(
                key=make_key("bvh", path.stem, camera_id, f"{frame:06d}"),
                keypoints_2d_px=keypoints_2d_px[frame], pose_3d_cam_mm=pose_3d_cam_mm[frame],
                intrinsics=intrinsics, subject=subject, action=action, camera_id=camera_id, frame=frame)
            if settings.image_size:
                sample.crop_box_px = crop_box_around(keypoints_2d_px[frame], settings.crop_margin)
                sample.image = render_person(pose_3d_cam_mm[frame], intrinsics, sample.crop_box_px,
                                             settings.image_size, rng)
            yield sample


# Bandai-Namco Research Motion dataset 1: one body, 15 styles. Held out by default: two styles
# for test and one for val (11 clips each); "normal" (20 clips, the only style of six motions)
# always stays in train.
BANDAI_TEST_STYLES = ("angry", "old")
BANDAI_VAL_STYLES = ("tired",)


def parse_bandai_name(path: str | Path) -> tuple[str, str, str]:
    """'dataset-1_walk-back_not-confident_001.bvh' -> ('walk-back', 'not-confident', '001')."""
    parts = Path(path).stem.split("_")
    if len(parts) != 4 or parts[0] != "dataset-1":
        raise BadSampleError(f"{path}: not a Bandai-Namco name dataset-1_{{MOTION}}_{{STYLE}}_{{ID}}.bvh")
    return parts[1], parts[2], parts[3]


def bandai_namco_splits(data_dir: str | Path, *, test_styles: Sequence[str] = BANDAI_TEST_STYLES,
                        val_styles: Sequence[str] = BANDAI_VAL_STYLES,
                        settings: BvhSettings = BvhSettings()) -> dict[str, Iterator[PoseSample]]:
    """{split: samples} of the Bandai-Namco clips in data_dir; subject = style, action = motion.

    Styles in test_styles go to test, in val_styles to val, all others to train.
    """
    paths = sorted(Path(data_dir).glob("*.bvh"))
    if not paths:
        raise BadSampleError(f"{data_dir}: no .bvh files")
    names = {path: parse_bandai_name(path) for path in paths}
    styles = {style for _, style, _ in names.values()}
    held_out = set(test_styles) | set(val_styles)
    if set(test_styles) & set(val_styles) or held_out - styles:
        raise ValueError(f"test_styles {tuple(test_styles)} and val_styles {tuple(val_styles)} must be disjoint "
                         f"styles of {data_dir}: {', '.join(sorted(styles))}")

    clips: dict[str, list[tuple[Path, str, str]]] = {"train": [], "val": [], "test": []}
    for path, (motion, style, _) in names.items():
        split = "test" if style in test_styles else "val" if style in val_styles else "train"
        clips[split].append((path, style, motion))
    return {split: clips_samples(split_clips, BANDAI_NAMCO, settings) for split, split_clips in clips.items()}


def clips_samples(clips: Sequence[tuple[Path, str, str]], joint_map: JointMap,
                   settings: BvhSettings) -> Iterator[PoseSample]:
    """Samples of (path, subject, action) clips one after the other, each file read when reached."""
    for path, subject, action in clips:
        yield from clip_samples(path, joint_map, subject=subject, action=action, settings=settings)
