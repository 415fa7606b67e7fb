"""What `predict` writes besides its .npz: a JSON for web viewers and scripts, a BVH per track
for Blender and mocap tools, and the optional temporal smoothing of sequences.

Poses come in as the lifter gives them: (N, 17, 3) root-relative camera-frame mm (x right,
y down, z forward), Human3.6M joint order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpe_ray.data.bvh import HPE_RAY
from hpe_ray.inference.formats import track_order
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS

# Camera frame -> BVH frame (Y up, the person facing +z when facing the camera): 180 degrees about x.
_CAMERA_TO_BVH = np.diag([1.0, -1.0, -1.0])
# Rest pose of the written skeleton: bone directions in the BVH frame, a T-pose (left = +x).
_REST_DIRECTIONS = np.array([
    [0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0],
    [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0],
    [-1, 0, 0], [-1, 0, 0], [-1, 0, 0]], dtype=np.float64)
_CHILDREN = [[c for c in range(NUM_JOINTS) if PARENTS[c] == j] for j in range(NUM_JOINTS)]
_END_SITE_CM = 5.0
_CHANNELS = "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"


def smooth_tracks(poses_mm: np.ndarray, tracks: np.ndarray, frames: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` (odd) neighbouring frames of each track: (N, ..., 3) -> same.

    Invalid (NaN) rows neither take part nor change; near a track's ends the window shrinks.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be an odd number of frames >= 1, got {window}")
    out = poses_mm.copy()
    half = window // 2
    for rows in track_order(tracks, frames).values():
        rows = rows[np.all(np.isfinite(poses_mm[rows].reshape(len(rows), -1)), axis=1)]
        values = poses_mm[rows]
        sums = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
        index = np.arange(len(rows))
        lo, hi = np.maximum(index - half, 0), np.minimum(index + half + 1, len(rows))
        count = (hi - lo).reshape((-1,) + (1,) * (values.ndim - 1))
        out[rows] = (sums[hi] - sums[lo]) / count
    return out


def write_viewer_json(path: Path, poses_mm: np.ndarray, valid: np.ndarray, tracks: np.ndarray,
                      frames: np.ndarray, fps: float, hypotheses_mm: np.ndarray | None = None,
                      low_confidence: np.ndarray | None = None) -> Path:
    """One JSON: joint names and parents, fps, and per track its frames and poses (mm, 0.1 mm
    precision, null for frames that could not be lifted); hypotheses (K per frame) when given."""
    def rounded(array):
        return [None if not np.all(np.isfinite(a)) else np.round(a, 1).tolist() for a in array]

    content = {"format": "hpe-ray poses 1", "units": "mm",
               "frame": "camera: x right, y down, z forward; pelvis at the origin",
               "joint_names": list(JOINT_NAMES), "parents": list(PARENTS), "fps": fps, "tracks": []}
    for track, rows in track_order(tracks, frames).items():
        entry = {"track": track, "frames": frames[rows].tolist(), "valid": valid[rows].tolist(),
                 "poses_3d_mm": rounded(poses_mm[rows])}
        if hypotheses_mm is not None:
            entry["hypotheses_3d_mm"] = rounded(hypotheses_mm[rows])
        if low_confidence is not None:
            entry["low_confidence_joints"] = [np.flatnonzero(row).tolist() for row in low_confidence[rows]]
        content["tracks"].append(entry)
    path.write_text(json.dumps(content))
    return path


def write_bvh(path: Path, poses_mm: np.ndarray, fps: float) -> Path:
    """A BVH of one track, (T, 17, 3) root-relative camera-frame mm, no NaN rows.

    Joints carry the Human3.6M names, cm, Y up (`hpe_ray.data.bvh.HPE_RAY` reads it back). Each
    joint's rotation is solved from the positions: the rotation that takes the T-pose bones to
    the predicted ones (Kabsch over the hips and spine at the pelvis and over the neck and
    shoulders at the thorax; the smallest swing from the parent's frame along the limbs). A
    predicted pose's bone lengths vary from frame to frame, so every joint also carries position
    channels with its exact offset; tools that read only rotations see the T-pose's bone lengths.
    """
    if poses_mm.ndim != 3 or poses_mm.shape[1:] != (NUM_JOINTS, 3) or not np.all(np.isfinite(poses_mm)):
        raise ValueError(f"write_bvh: poses must be (T, {NUM_JOINTS}, 3) finite mm, got {poses_mm.shape}")
    points = poses_mm @ _CAMERA_TO_BVH.T / HPE_RAY.mm_per_unit
    frames = len(points)
    bones = np.zeros_like(points)
    bones[:, 1:] = points[:, 1:] - points[:, list(PARENTS[1:])]
    lengths = np.linalg.norm(bones, axis=2).mean(axis=0)
    rest = _REST_DIRECTIONS * lengths[:, None]
    world = np.empty((frames, NUM_JOINTS, 3, 3))
    local = np.empty_like(world)
    for j in range(NUM_JOINTS):
        parent = np.broadcast_to(np.eye(3), (frames, 3, 3)) if PARENTS[j] < 0 else world[:, PARENTS[j]]
        children = _CHILDREN[j]
        if len(children) > 1:
            world[:, j] = _kabsch(_REST_DIRECTIONS[children], bones[:, children])
        elif children:
            current = np.einsum("tij,j->ti", parent, _REST_DIRECTIONS[children[0]])
            world[:, j] = _swing(current, bones[:, children[0]]) @ parent
        else:
            world[:, j] = parent
        local[:, j] = np.swapaxes(parent, 1, 2) @ world[:, j]
    offsets = np.zeros_like(points)
    offsets[:, 0] = points[:, 0]
    for j in range(1, NUM_JOINTS):
        offsets[:, j] = np.einsum("tji,tj->ti", world[:, PARENTS[j]], bones[:, j])
    motion = np.concatenate([offsets, np.degrees(_zxy_angles(local))], axis=2).reshape(frames, -1)
    lines = ["HIERARCHY"] + _hierarchy(0, rest, 0) + ["MOTION", f"Frames: {frames}", f"Frame Time: {1.0 / fps:.6f}"]
    lines += [" ".join(f"{value:.4f}" for value in row) for row in motion]
    path.write_text("\n".join(lines) + "\n")
    return path


def _hierarchy(joint: int, rest: np.ndarray, depth: int) -> list[str]:
    pad = "  " * depth
    kind = "ROOT" if joint == 0 else "JOINT"
    lines = [f"{pad}{kind} {JOINT_NAMES[joint]}", f"{pad}{{",
             f"{pad}  OFFSET " + " ".join(f"{v:.4f}" for v in rest[joint]), f"{pad}  {_CHANNELS}"]
    for child in _CHILDREN[joint]:
        lines += _hierarchy(child, rest, depth + 1)
    if not _CHILDREN[joint]:
        end = _REST_DIRECTIONS[joint] * _END_SITE_CM
        lines += [f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET " + " ".join(f"{v:.4f}" for v in end),
                  f"{pad}  }}"]
    return lines + [f"{pad}}}"]


def _kabsch(rest_directions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C, 3) rest directions, (T, C, 3) target vectors -> (T, 3, 3) rotations best aligning them."""
    unit = targets / np.maximum(np.linalg.norm(targets, axis=2, keepdims=True), 1e-9)
    covariance = np.einsum("ci,tcj->tij", rest_directions, unit)
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))
    correction = np.broadcast_to(np.eye(3), covariance.shape).copy()
    correction[:, 2, 2] = sign
    return np.swapaxes(vt, 1, 2) @ correction @ np.swapaxes(u, 1, 2)


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, 3) -> (T, 3, 3): the smallest rotation turning direction a into direction b."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-9)
    axis, cos = np.cross(a, b), np.einsum("ti,ti->t", a, b)
    opposite = cos < -1 + 1e-9
    cross = np.zeros((len(a), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    cross -= np.swapaxes(cross, 1, 2)
    rotation = np.eye(3) + cross + cross @ cross / np.maximum(1 + cos, 1e-9)[:, None, None]
    if opposite.any():  # half a turn about an axis perpendicular to a
        helper = np.where(np.abs(a[opposite, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        normal = np.cross(a[opposite], helper)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        rotation[opposite] = 2 * np.einsum("ti,tj->tij", normal, normal) - np.eye(3)
    return rotation


def _zxy_angles(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) R = Rz(a) Rx(b) Ry(c) -> (..., 3) radians (a, b, c), the channel order written."""
    b = np.arcsin(np.clip(rotations[..., 2, 1], -1.0, 1.0))
    a = np.arctan2(-rotations[..., 0, 1], rotations[..., 1, 1])
    c = np.arctan2(-rotations[..., 2, 0], rotations[..., 2, 2])
    return np.stack([a, b, c], axis=-1)
