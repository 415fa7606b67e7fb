"""2D keypoint files users bring to `predict`, and the COCO-17 -> Human3.6M-17 joint mapping.

What 2D detectors and lifting codebases write, single images or sequences (`read_keypoints`
picks the reader from the path and content):

- COCO keypoint results `.json` (MMPose, Detectron2, OpenPifPaf, AlphaPose): a list of
  `{"image_id", "keypoints": [x, y, score] * 17, "score", "track_id"?}`, COCO joint order;
- MMPose inferencer `.json` (`pred_out_dir`): one image's list of
  `{"keypoints": [[x, y]] * 17, "keypoint_scores": [...]}`, or a video's list of
  `{"frame_id", "instances": [...]}`;
- an OpenPose output folder: one `*_keypoints.json` per frame, `people[].pose_keypoints_2d`
  in BODY_25 or COCO-18 order;
- VideoPose3D's custom `.npz` (`prepare_data_2d_custom.py`): `positions_2d` {video: {"custom":
  [(T, 17, 2)]}} and `metadata` with each video's width and height;
- an `.npz` with `keypoints_2d` (N, 17, 2) pixels and optional `scores` (N, 17), `frames` (N,),
  `tracks` (N,), `image_size` (2,) or (N, 2), `focal` and `center` ((2,) or (N, 2));
- a `.csv` with a header: optional `frame` and `track` columns, then `<joint>_x`, `<joint>_y` and
  optional `<joint>_score` per joint, joints named as COCO's or Human3.6M's 17.

Every sample carries a track (person) and a frame, so sequences stay sequences. Problems of
single samples (a wrong number of joints, unlabelled joints) do not stop the file: they are
listed in `KeypointInput.problems` and the sample is marked invalid unless `fill_low_confidence`
can fill its joints from neighbouring frames. Problems of the whole file raise `BadSampleError`
naming the file.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hpe_ray.camera import per_sample_pixels
from hpe_ray.data.pickles import load_npz_object
from hpe_ray.data.sample import BadSampleError
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS

COCO_JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# Human3.6M joints that are COCO joints as they are: H36M index -> COCO index.
_H36M_FROM_COCO = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 9: 0,
                   11: 5, 12: 7, 13: 9, 14: 6, 15: 8, 16: 10}
# The COCO joints each Human3.6M joint is made from by coco_to_h36m (pelvis: hips, spine: hips
# and shoulders, thorax: shoulders, head top: eyes and shoulders).
_COCO_SOURCES = {**{h: (c,) for h, c in _H36M_FROM_COCO.items()},
                 0: (11, 12), 7: (5, 6, 11, 12), 8: (5, 6), 10: (1, 2, 5, 6)}
# Head top = eye midpoint + HEAD_TOP_OVER_EYES * (eye midpoint - thorax). COCO has no head top;
# on an adult the crown is about half the shoulder-line-to-eyes distance above the eyes
# (about 10 cm over 20 cm), which matches where Human3.6M's head-top marker sits.
HEAD_TOP_OVER_EYES = 0.5
KEYPOINT_FORMATS = ("auto", "h36m", "coco")
# Detector confidence below which a joint is filled from neighbouring frames (COCO-style scores
# in [0, 1]; MMPose's and OpenPose's are on the same scale).
DEFAULT_MIN_SCORE = 0.3
# OpenPose BODY_25 and COCO-18 index of each COCO-17 joint (they share the face and limb joints).
_OPENPOSE_TO_COCO = {75: (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11),
                     54: (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)}


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

    keypoints_2d_px (N, 17, 2) float64, NaN at joints the file does not give; scores (N, 17) the
    detector's confidence per joint (1 where the file has none); tracks (N,) str person / track
    id ("0" for one person); frames (N,) int frame index in the sequence; names (N,) str a
    label for messages (image id, file, index); focal_px, center_px (N, 2) or None when the file
    has no camera; image_size_px (N, 2) width, height or None; problems {sample: message naming
    the file and the sample} for samples that cannot be lifted as read.
    """

    keypoints_2d_px: np.ndarray
    scores: np.ndarray
    tracks: np.ndarray
    frames: np.ndarray
    names: np.ndarray
    focal_px: np.ndarray | None = None
    center_px: np.ndarray | None = None
    image_size_px: np.ndarray | None = None
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """(N,) True where every joint (and the camera, if given) is finite."""
        valid = np.all(np.isfinite(self.keypoints_2d_px), axis=(1, 2))
        if self.focal_px is not None:
            valid &= np.all(np.isfinite(self.focal_px), axis=1) & np.all(np.isfinite(self.center_px), axis=1)
        return valid


def read_keypoints(path: str | Path, keypoint_format: str = "auto") -> KeypointInput:
    """Read any input of the module docstring.

    keypoint_format: joint order of files with 17 joints, "coco" or "h36m"; "auto" is COCO for
    detector outputs (.json, OpenPose, VideoPose3D custom), Human3.6M for the plain .npz, and
    the header's joint names for .csv.
    """
    path = Path(path)
    if keypoint_format not in KEYPOINT_FORMATS:
        raise ValueError(f"keypoint_format must be one of {KEYPOINT_FORMATS}, got {keypoint_format!r}")
    order = None if keypoint_format == "auto" else keypoint_format
    if path.is_dir():
        return read_openpose_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keypoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        entries = _json(path)
        reader = read_mmpose_json if _is_mmpose(entries) else read_coco_results
        return reader(path, joint_order=order or "coco", entries=entries)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                files = set(archive.files)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise BadSampleError(f"{path}: not a readable .npz file: {err}") from None
        if "positions_2d" in files:
            return read_videopose3d_custom(path, joint_order=order or "coco")
        return read_keypoints_npz(path, joint_order=order or "h36m")
    if suffix == ".csv":
        return read_keypoints_csv(path)
    raise BadSampleError(f"{path}: unknown keypoint file type {suffix!r}; expected .json (COCO results or "
                         "MMPose), .npz (hpe-ray or VideoPose3D custom), .csv, or an OpenPose folder")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSampleError(f"{path}: not a readable JSON file: {err}") from None


def _is_mmpose(entries) -> bool:
    first = entries[0] if isinstance(entries, list) and entries else None
    return isinstance(first, dict) and ("instances" in first or "keypoint_scores" in first)


def read_coco_results(path: str | Path, joint_order: str = "coco", entries=None) -> KeypointInput:
    """COCO keypoint results: a JSON list of {"image_id", "keypoints": [x, y, v] * 17, ...}.

    v is the joint's confidence; [0, 0, 0] is COCO's "not labelled" (a missing joint). Samples
    belong to `track_id` (PoseTrack) or `idx` (AlphaPose) when given, else to one person per
    image numbered in file order. Frames are the image ids when they are integers, else the order
    of first appearance. No camera is stored in this format. entries: the file's parsed JSON,
    when the caller has read it already.
    """
    path = Path(path)
    entries = _json(path) if entries is None else entries
    if not isinstance(entries, list):
        raise BadSampleError(f"{path}: expected a JSON list of COCO keypoint results, got {type(entries).__name__}")
    rows, names, tracks, image_ids, problems = [], [], [], [], {}
    per_image: dict[str, int] = {}
    for i, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("image_id", i))
        row, problem = _triplets(entry.get("keypoints"), f"{path}: sample {i} (image_id {name})")
        rows.append(row)
        if problem:
            problems[i] = problem
        names.append(name)
        image_ids.append(entry.get("image_id", i))
        track = entry.get("track_id", entry.get("idx"))
        if track is None:  # no tracker: the n-th person of each image
            track = per_image.get(name, 0)
            per_image[name] = track + 1
        tracks.append(str(track))
    frames = _frame_numbers(image_ids)
    return _finish(rows, joint_order, path, names=names, tracks=tracks, frames=frames, problems=problems)


def read_mmpose_json(path: str | Path, joint_order: str = "coco", entries=None) -> KeypointInput:
    """MMPose inferencer predictions: one image's list of instances, or a video's list of frames
    {"frame_id", "instances": [{"keypoints": [[x, y]] * 17, "keypoint_scores": [...]}]}.
    Instances are numbered per frame (a `track_id` when MMPose's tracker wrote one). entries:
    the file's parsed JSON, when the caller has read it already."""
    path = Path(path)
    entries = _json(path) if entries is None else entries
    if not _is_mmpose(entries):
        raise BadSampleError(f"{path}: not MMPose inferencer output (a list of instances or of frames with 'instances')")
    frames_in = entries if "instances" in entries[0] else [{"frame_id": 0, "instances": entries}]
    rows, names, tracks, frames, problems = [], [], [], [], {}
    for position, frame in enumerate(frames_in):
        frame_id = frame.get("frame_id", position) if isinstance(frame, dict) else position
        instances = frame.get("instances") if isinstance(frame, dict) else None
        for person, instance in enumerate(instances if isinstance(instances, list) else []):
            i = len(rows)
            where = f"{path}: frame {frame_id} instance {person}"
            try:
                xy = np.asarray(instance["keypoints"], np.float64).reshape(-1, 2)
                scores = np.asarray(instance.get("keypoint_scores", np.ones(len(xy))), np.float64).reshape(-1, 1)
                flat = np.concatenate([xy, scores], axis=1).ravel()
            except (KeyError, TypeError, ValueError):
                flat = None
            row, problem = _triplets(flat, where)
            rows.append(row)
            if problem:
                problems[i] = problem
            names.append(f"frame {frame_id} instance {person}")
            tracks.append(str(instance.get("track_id", person)) if isinstance(instance, dict) else str(person))
            frames.append(int(frame_id))
    return _finish(rows, joint_order, path, names=names, tracks=tracks, frames=frames, problems=problems)


def read_openpose_folder(folder: str | Path) -> KeypointInput:
    """OpenPose `--write_json` output: `*_keypoints.json` per frame (frames in name order), each
    person's `pose_keypoints_2d` in BODY_25 (75 numbers) or COCO-18 (54); a joint with
    confidence 0 is missing. People are numbered per frame (`person_id` when it is tracked)."""
    folder = Path(folder)
    files = sorted(folder.glob("*_keypoints.json"))
    if not files:
        raise BadSampleError(f"{folder}: no OpenPose *_keypoints.json files in this folder")
    rows, names, tracks, frames, problems = [], [], [], [], {}
    for frame, file in enumerate(files):
        content = _json(file)
        people = content.get("people", []) if isinstance(content, dict) else []
        for person, entry in enumerate(people):
            i = len(rows)
            values = np.asarray(entry.get("pose_keypoints_2d", []), np.float64).ravel()
            order = _OPENPOSE_TO_COCO.get(values.size)
            if order is None:
                rows.append(np.full((len(COCO_JOINT_NAMES), 3), np.nan))
                problems[i] = (f"{file}: person {person}: pose_keypoints_2d has {values.size} numbers, expected "
                               "75 (BODY_25) or 54 (COCO-18)")
            else:
                row, problem = _triplets(values.reshape(-1, 3)[list(order)].ravel(), f"{file}: person {person}")
                rows.append(row)
                if problem:
                    problems[i] = problem
            person_id = np.ravel(entry.get("person_id", [-1]))
            tracks.append(str(int(person_id[0])) if person_id.size and person_id[0] >= 0 else str(person))
            names.append(f"{file.name} person {person}")
            frames.append(frame)
    if not rows:
        raise BadSampleError(f"{folder}: the OpenPose files hold no people")
    return _finish(rows, "coco", folder, names=names, tracks=tracks, frames=frames, problems=problems)


def read_videopose3d_custom(path: str | Path, joint_order: str = "coco") -> KeypointInput:
    """VideoPose3D's custom 2D file: positions_2d {video: {"custom": [(T, 17, 2)]}} and metadata
    {"video_metadata": {video: {"w", "h"}}}; each video is a track, read without running pickles."""
    path = Path(path)
    positions = load_npz_object(path, "positions_2d")
    metadata = load_npz_object(path, "metadata")
    if not isinstance(positions, dict) or not isinstance(metadata, dict):
        raise BadSampleError(f"{path}: positions_2d and metadata must be dicts (VideoPose3D custom format)")
    rows, names, tracks, frames, sizes = [], [], [], [], []
    for video, content in positions.items():
        try:
            keypoints = np.asarray(content["custom"][0], np.float64)
            size = metadata["video_metadata"][video]
            width, height = float(size["w"]), float(size["h"])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise BadSampleError(f"{path}: video {video!r}: expected positions_2d[video]['custom'][0] and "
                                 f"metadata['video_metadata'][video] with 'w' and 'h' ({err})") from None
        if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
            raise BadSampleError(f"{path}: video {video!r} has keypoints of shape {keypoints.shape}, "
                                 f"expected (T, {NUM_JOINTS}, 2)")
        rows += list(np.concatenate([keypoints, np.ones((len(keypoints), NUM_JOINTS, 1))], axis=2))  # no scores
        names += [f"{video} frame {t}" for t in range(len(keypoints))]
        tracks += [str(video)] * len(keypoints)
        frames += list(range(len(keypoints)))
        sizes += [(width, height)] * len(keypoints)
    return _finish(rows, joint_order, path, names=names, tracks=tracks, frames=frames,
                   image_size=np.asarray(sizes, np.float64).reshape(-1, 2))


def read_keypoints_npz(path: str | Path, joint_order: str = "h36m") -> KeypointInput:
    """An .npz with `keypoints_2d` (N, 17, 2) pixels and optional `scores` (N, 17), `frames` (N,),
    `tracks` (N,), `image_size` and the camera `focal`, `center` ((2,) or (N, 2) each). Without
`frames` and `tracks` the samples are independent (nothing is filled from neighbours).

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
    count = len(keypoints)
    if ("focal" in arrays) != ("center" in arrays):
        missing = "center" if "focal" in arrays else "focal"
        raise BadSampleError(f"{path}: has {'focal' if missing == 'center' else 'center'} but no '{missing}'; "
                             f"give both camera fields (pixels) or neither (the checkpoint's training camera)")
    try:
        camera = {key: per_sample_pixels(arrays[key], count, key) for key in ("focal", "center", "image_size")
                  if key in arrays}
    except ValueError as err:
        raise BadSampleError(f"{path}: {err}") from None
    scores = arrays.get("scores", np.ones((count, NUM_JOINTS)))
    if np.shape(scores) != (count, NUM_JOINTS):
        raise BadSampleError(f"{path}: scores has shape {np.shape(scores)}, expected ({count}, {NUM_JOINTS})")
    problems = {int(i): f"{path}: sample {i}: keypoints_2d contains NaN or infinite coordinates"
                for i in np.flatnonzero(~np.all(np.isfinite(keypoints), axis=(1, 2)))}
    if "focal" in camera:
        bad = ~(np.all(np.isfinite(camera["focal"]), axis=1) & np.all(np.isfinite(camera["center"]), axis=1))
        problems.update({int(i): f"{path}: sample {i}: focal or center is NaN or infinite"
                         for i in np.flatnonzero(bad) if i not in problems})
    return _finish(np.concatenate([keypoints, np.asarray(scores, np.float64)[..., None]], axis=2), joint_order,
                   path, names=[str(i) for i in range(count)],
                   # without frames or tracks the samples are unrelated: each its own track
                   tracks=[str(t) for t in arrays.get("tracks", np.zeros(count, int) if "frames" in arrays
                                                      else np.arange(count))],
                   frames=arrays.get("frames", np.arange(count)), problems=problems, **camera)


def read_keypoints_csv(path: str | Path) -> KeypointInput:
    """A CSV with a header: optional `frame`, `track`, then `<joint>_x`, `<joint>_y` and optional
    `<joint>_score` for the 17 joints of COCO or of Human3.6M (`skeleton.JOINT_NAMES`)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BadSampleError(f"{path}: not a readable CSV file: {err}") from None
    header = set(table[0]) if table else set()
    for joint_order, joint_names in (("coco", COCO_JOINT_NAMES), ("h36m", JOINT_NAMES)):
        if all(f"{name}_x" in header and f"{name}_y" in header for name in joint_names):
            break
    else:
        raise BadSampleError(f"{path}: the header needs <joint>_x and <joint>_y columns for the 17 COCO joints "
                             f"({', '.join(COCO_JOINT_NAMES[:3])}, ...) or Human3.6M joints "
                             f"({', '.join(JOINT_NAMES[:3])}, ...)")
    rows, problems = [], {}
    for i, line in enumerate(table):
        try:
            rows.append([[float(line[f"{name}_x"]), float(line[f"{name}_y"]), float(line.get(f"{name}_score") or 1)]
                         for name in joint_names])
        except (TypeError, ValueError):
            rows.append(np.full((NUM_JOINTS, 3), np.nan))
            problems[i] = f"{path}: row {i + 2}: a coordinate or score is not a number"
    return _finish(rows, joint_order, path, names=[f"row {i + 2}" for i in range(len(rows))],
                   tracks=[line.get("track") or "0" for line in table],
                   frames=[int(line["frame"]) if line.get("frame") else i for i, line in enumerate(table)],
                   problems=problems)


def track_order(tracks: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
    """{track: its sample indices sorted by frame}, tracks in order of first appearance.
    One sort for all tracks: files of independent samples have as many tracks as samples."""
    names, first, inverse = np.unique(tracks, return_index=True, return_inverse=True)
    order = np.lexsort((frames, inverse))  # by track, then by frame; ties keep file order
    groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1])
    return {str(names[k]): groups[k] for k in np.argsort(first)}


def fill_low_confidence(keypoints: KeypointInput, min_score: float) -> tuple[KeypointInput, np.ndarray]:
    """Replace joints below `min_score` (or missing) by linear interpolation over time within their
    track, from the frames where that joint is confident; joints with no confident frame in their
    track are left as read. Returns the filled input and low_confidence (N, 17) bool (the joints
    that were below the threshold or missing). Samples made whole lose their problem."""
    xy = keypoints.keypoints_2d_px.copy()
    low = ~(keypoints.scores >= min_score) | ~np.all(np.isfinite(xy), axis=2)
    for rows in track_order(keypoints.tracks, keypoints.frames).values():
        if len(rows) < 2 or not low[rows].any():
            continue
        frames = keypoints.frames[rows]
        for joint in range(NUM_JOINTS):
            good = ~low[rows, joint]
            if good.all() or not good.any():
                continue
            for axis in range(2):
                xy[rows[~good], joint, axis] = np.interp(frames[~good], frames[good], xy[rows[good], joint, axis])
    filled = replace(keypoints, keypoints_2d_px=xy)
    made_whole = filled.valid & ~keypoints.valid
    filled.problems = {i: message for i, message in keypoints.problems.items() if not made_whole[i]}
    return filled, low


def _triplets(values, where: str) -> tuple[np.ndarray, str | None]:
    """[x, y, score] * 17 -> ((17, 3), problem or None); NaN at missing joints ([0, 0, 0])."""
    unusable = np.full((NUM_JOINTS, 3), np.nan)
    try:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return unusable, f"{where}: 'keypoints' is missing or not a list of numbers"
    if values is None or flat.size != 3 * NUM_JOINTS:
        count = 0 if values is None else flat.size
        return unusable, (f"{where}: 'keypoints' has {count} numbers ({count / 3:g} joints), expected "
                          f"{3 * NUM_JOINTS} ([x, y, score] for {NUM_JOINTS} joints)")
    triplets = flat.reshape(NUM_JOINTS, 3).copy()
    if not np.all(np.isfinite(triplets[:, :2])):
        return unusable, f"{where}: keypoints contain NaN or infinite coordinates"
    missing = np.all(triplets == 0, axis=1)
    triplets[missing] = [np.nan, np.nan, 0.0]
    if missing.any():
        return triplets, f"{where}: joints not labelled ([0, 0, 0]): {', '.join(COCO_JOINT_NAMES[j] for j in np.flatnonzero(missing))}"
    return triplets, None


def _frame_numbers(ids: list) -> list[int]:
    """Integer image ids as they are; other ids numbered in order of first appearance."""
    if all(isinstance(i, int) or (isinstance(i, str) and i.isdigit()) for i in ids):
        return [int(i) for i in ids]
    order: dict[str, int] = {}
    return [order.setdefault(str(i), len(order)) for i in ids]


def _finish(rows, joint_order: str, path: Path, *, names, tracks, frames, problems=None,
            focal=None, center=None, image_size=None) -> KeypointInput:
    """Rows of (17, 3) [x, y, score] in `joint_order` -> KeypointInput in Human3.6M order."""
    if joint_order not in ("coco", "h36m"):
        raise ValueError(f"joint order must be 'coco' or 'h36m', got {joint_order!r}")
    if len(rows) == 0:
        raise BadSampleError(f"{path}: contains no samples")
    triplets = np.asarray(rows, np.float64).reshape(len(rows), NUM_JOINTS, 3)
    keypoints, scores = triplets[..., :2], np.nan_to_num(triplets[..., 2])
    if joint_order == "coco":
        keypoints, scores = coco_to_h36m(keypoints), _coco_min_scores(scores)
    return KeypointInput(keypoints_2d_px=keypoints, scores=scores,
                         tracks=np.asarray(tracks, dtype=str), frames=np.asarray(frames, dtype=np.int64),
                         names=np.asarray(names, dtype=str), focal_px=focal, center_px=center,
                         image_size_px=image_size, problems=dict(problems or {}))


def _coco_min_scores(scores: np.ndarray) -> np.ndarray:
    """(N, 17) COCO scores -> (N, 17) Human3.6M scores: each joint the lowest of the COCO joints
    `coco_to_h36m` builds it from."""
    return np.stack([scores[:, list(_COCO_SOURCES[j])].min(axis=1) for j in range(NUM_JOINTS)], axis=1)
