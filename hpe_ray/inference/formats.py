"""2D keypoint files users bring to `predict`, and the COCO-17 -> Human3.6M-17 joint mapping.

Two inputs are read:

- a COCO keypoint results `.json` (what detectors such as MMPose, Detectron2 or OpenPifPaf write):
  a list of `{"image_id", "keypoints": [x, y, v] * 17, "score"}` in COCO joint order;
- an `.npz` with `keypoints_2d` (N, 17, 2) pixels and, optionally, the camera as `focal`
  and `center` ((2,) for all samples or (N, 2) per sample), in Human3.6M order unless told
  otherwise.

Problems of single samples (a wrong number of joints, NaN coordinates) do not stop the file:
they are listed in `KeypointInput.problems` and the sample is marked invalid. Problems of the
whole file raise `BadSampleError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpe_ray.data.sample import BadSampleError
from hpe_ray.skeleton import NUM_JOINTS

COCO_JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# Human3.6M joints that are COCO joints as they are: H36M index -> COCO index.
_H36M_FROM_COCO = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 9: 0,
                   11: 5, 12: 7, 13: 9, 14: 6, 15: 8, 16: 10}
# Head top = eye midpoint + HEAD_TOP_OVER_EYES * (eye midpoint - thorax). COCO has no head top;
# on an adult the crown is about half the shoulder-line-to-eyes distance above the eyes
# (about 10 cm over 20 cm), which matches where Human3.6M's head-top marker sits.
HEAD_TOP_OVER_EYES = 0.5
KEYPOINT_FORMATS = ("auto", "h36m", "coco")


def coco_to_h36m(keypoints_coco):
    """COCO-17 keypoints (..., 17, D) -> Human3.6M-17 (..., 17, D), D = 2 (pixels) or more.

    Limbs map one to one; pelvis = hip midpoint, thorax = shoulder midpoint, spine = midpoint
    of pelvis and thorax, neck/nose = nose, head top = extrapolated above the eyes (see
    HEAD_TOP_OVER_EYES). Extra channels (e.g. confidence) are mapped the same way, which
    averages them for the derived joints.
    """
    keypoints_coco = np.asarray(keypoints_coco, dtype=np.float64)
    if keypoints_coco.ndim < 2 or keypoints_coco.shape[-2] != len(COCO_JOINT_NAMES):
        raise ValueError(f"hpe_ray.inference.formats.coco_to_h36m: expected (..., 17, D) COCO keypoints, "
                         f"got shape {keypoints_coco.shape}")
    h36m = np.empty_like(keypoints_coco)
    for h36m_index, coco_index in _H36M_FROM_COCO.items():
        h36m[..., h36m_index, :] = keypoints_coco[..., coco_index, :]
    pelvis = 0.5 * (keypoints_coco[..., 11, :] + keypoints_coco[..., 12, :])
    thorax = 0.5 * (keypoints_coco[..., 5, :] + keypoints_coco[..., 6, :])
    eyes = 0.5 * (keypoints_coco[..., 1, :] + keypoints_coco[..., 2, :])
    h36m[..., 0, :] = pelvis
    h36m[..., 7, :] = 0.5 * (pelvis + thorax)
    h36m[..., 8, :] = thorax
    h36m[..., 10, :] = eyes + HEAD_TOP_OVER_EYES * (eyes - thorax)
    return h36m


@dataclass
class KeypointInput:
    """2D keypoints read from a file, in Human3.6M joint order.

    keypoints_2d_px (N, 17, 2) float64, NaN for samples that could not be read;
    valid (N,) bool; focal_px, center_px (N, 2) or None when the file has no camera;
    names (N,) str identifying each sample in the file (image id or index);
    problems: one message per invalid sample, naming the file and the sample.
    """

    keypoints_2d_px: np.ndarray
    valid: np.ndarray
    focal_px: np.ndarray | None
    center_px: np.ndarray | None
    names: np.ndarray
    problems: list[str] = field(default_factory=list)


def read_keypoints(path: str | Path, keypoint_format: str = "auto") -> KeypointInput:
    """Read a COCO results `.json` or a keypoints `.npz` (see the module docstring).

    keypoint_format: joint order of the file, "coco" or "h36m"; "auto" is "coco" for `.json`
    and "h36m" for `.npz`.
    """
    path = Path(path)
    if keypoint_format not in KEYPOINT_FORMATS:
        raise ValueError(f"keypoint_format must be one of {KEYPOINT_FORMATS}, got {keypoint_format!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keypoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_coco_results(path, joint_order="coco" if keypoint_format == "auto" else keypoint_format)
    if suffix == ".npz":
        return read_keypoints_npz(path, joint_order="h36m" if keypoint_format == "auto" else keypoint_format)
    raise BadSampleError(f"{path}: unknown keypoint file type {suffix!r}; expected .json (COCO results) or .npz")


def read_coco_results(path: str | Path, joint_order: str = "coco") -> KeypointInput:
    """COCO keypoint results: a JSON list of {"image_id", "keypoints": [x, y, v] * 17, ...}.

    The visibility/confidence v is not used by the lifter, except that a joint written as
    [0, 0, 0] (COCO's "not labelled") makes its sample invalid. No camera is stored in this format.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSampleError(f"{path}: not a readable JSON file: {err}") from None
    if not isinstance(entries, list):
        raise BadSampleError(f"{path}: expected a JSON list of COCO keypoint results, got {type(entries).__name__}")
    rows, names, problems = [], [], []
    for i, entry in enumerate(entries):
        name = str(entry.get("image_id", i)) if isinstance(entry, dict) else str(i)
        where = f"{path}: sample {i} (image_id {name})"
        values = entry.get("keypoints") if isinstance(entry, dict) else None
        row, problem = _coco_triplets(values, where)
        rows.append(row)
        names.append(name)
        if problem:
            problems.append(problem)
    keypoints = np.stack(rows) if rows else np.zeros((0, NUM_JOINTS, 2))
    return _finish(keypoints, joint_order, None, None, np.asarray(names, dtype=str), problems, path)


def read_keypoints_npz(path: str | Path, joint_order: str = "h36m") -> KeypointInput:
    """An .npz with `keypoints_2d` (N, 17, 2) pixels and optional `focal`, `center` ((2,) or (N, 2)).

    A file with one of `focal` / `center` but not the other is an error: a half-given camera
    is almost certainly a mistake, not a request for the default camera.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise BadSampleError(f"{path}: not a readable .npz file: {err}") from None
    if "keypoints_2d" not in arrays:
        raise BadSampleError(f"{path}: missing array 'keypoints_2d' (N, 17, 2) pixels; found {sorted(arrays)}")
    keypoints = np.asarray(arrays["keypoints_2d"], dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
        raise BadSampleError(f"{path}: keypoints_2d has shape {keypoints.shape}, expected (N, {NUM_JOINTS}, 2)")
    if ("focal" in arrays) != ("center" in arrays):
        missing = "center" if "focal" in arrays else "focal"
        raise BadSampleError(f"{path}: has {'focal' if missing == 'center' else 'center'} but no '{missing}'; "
                             f"give both camera fields (pixels) or neither (the checkpoint's training camera)")
    focal = center = None
    if "focal" in arrays:
        focal = _per_sample_camera(arrays["focal"], len(keypoints), "focal", path)
        center = _per_sample_camera(arrays["center"], len(keypoints), "center", path)
    names = np.asarray([str(i) for i in range(len(keypoints))], dtype=str)
    problems = []
    for i in np.flatnonzero(~np.all(np.isfinite(keypoints), axis=(1, 2))):
        problems.append(f"{path}: sample {i}: keypoints_2d contains NaN or infinite coordinates")
    if focal is not None:
        for i in np.flatnonzero(~(np.all(np.isfinite(focal), axis=1) & np.all(np.isfinite(center), axis=1))):
            problems.append(f"{path}: sample {i}: focal or center is NaN or infinite")
    return _finish(keypoints, joint_order, focal, center, names, problems, path)


def _coco_triplets(values, where: str) -> tuple[np.ndarray, str | None]:
    """51 numbers [x, y, v] * 17 -> ((17, 2) px, None), or (NaN row, problem) when unusable."""
    unusable = np.full((NUM_JOINTS, 2), np.nan)
    try:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return unusable, f"{where}: 'keypoints' is missing or not a list of numbers"
    if flat.size != 3 * NUM_JOINTS:
        return unusable, (f"{where}: 'keypoints' has {flat.size} numbers ({flat.size / 3:g} joints), "
                          f"expected {3 * NUM_JOINTS} ([x, y, v] for {NUM_JOINTS} joints)")
    triplets = flat.reshape(NUM_JOINTS, 3)
    keypoints = triplets[:, :2]
    if not np.all(np.isfinite(keypoints)):
        return unusable, f"{where}: keypoints contain NaN or infinite coordinates"
    # COCO marks a joint that is not there as [0, 0, 0]; the lifter needs all 17.
    missing = [COCO_JOINT_NAMES[j] for j in np.flatnonzero(np.all(triplets == 0, axis=1))]
    if missing:
        return unusable, f"{where}: joints not labelled ([0, 0, 0]): {', '.join(missing)}"
    return keypoints, None


def _per_sample_camera(value, count: int, name: str, path: Path) -> np.ndarray:
    """(2,) or (N, 2) -> (N, 2) float64."""
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (2,):
        return np.broadcast_to(value, (count, 2)).copy()
    if value.shape != (count, 2):
        raise BadSampleError(f"{path}: {name} has shape {value.shape}, expected (2,) or ({count}, 2) pixels")
    return value


def _finish(keypoints: np.ndarray, joint_order: str, focal, center, names: np.ndarray,
            problems: list[str], path: Path) -> KeypointInput:
    if joint_order not in ("coco", "h36m"):
        raise ValueError(f"joint order must be 'coco' or 'h36m', got {joint_order!r}")
    if joint_order == "coco":
        keypoints = coco_to_h36m(keypoints)
    valid = np.all(np.isfinite(keypoints), axis=(1, 2))
    if focal is not None:
        valid &= np.all(np.isfinite(focal), axis=1) & np.all(np.isfinite(center), axis=1)
    if len(keypoints) == 0:
        raise BadSampleError(f"{path}: contains no samples")
    keypoints = np.where(valid[:, None, None], keypoints, np.nan)
    return KeypointInput(keypoints, valid, focal, center, names, problems)
