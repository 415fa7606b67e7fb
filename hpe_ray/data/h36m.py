"""Human3.6M files users already have -> PoseSample iterators per split.

Three layouts are read:

- VideoPose3D: `data_3d_h36m.npz` (positions_3d: subject -> "Action N" -> (T, 32, 3) world metres)
  with `data_2d_h36m_*.npz` (positions_2d: subject -> action -> 4 x (T, 17, 2) px, optional) and
  the camera extrinsics in a JSON file (see `read_extrinsics`). A positions_3d whose sequences
  are per-camera lists (4 x (T, J, 3), camera frame metres) needs no extrinsics.
- MMPose: `h36m_{train,test}.npz` (imgname, part (N, 17, 3) px, S (N, 17, 4) camera metres),
  optionally with `cameras.pkl`; without it the public intrinsics of the camera named in imgname.
- The original release: `S*/MyPoseFeatures/D3_Positions_mono/<Action>.<camera>.cdf` (camera
  frame mm) or `D3_Positions/<Action>.cdf` (world mm) + extrinsics; frames from
  `S*/Videos/<Action>.<camera>.mp4`, cropped around the projected 2D.

Splits follow Protocol 1: S1 S5 S6 S7 S8 train, S9 S11 test. Validation (model selection) is a
held-out *training subject*, S8 by default, so that no subject is seen in both train and val;
`val_subjects=()` trains on all five and leaves val empty.

Every sample: 17 joints (32 -> 17 as VideoPose3D), 3D camera frame mm, 2D full-image px, action
without the sub-action number, key `h36m_<subject>_<sequence>_<camera>_<frame>` with the
sequence name kept (`Walking 1` and `Walking` are different recordings).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hpe_ray.camera import (H36M_CAMERA_IDS, H36M_INTRINSICS, Extrinsics, Intrinsics, project_to_pixels,
                            world_to_camera)
from hpe_ray.data.render import crop_box_around
from hpe_ray.data.pickles import load_npz_object, load_pickle
from hpe_ray.data.sample import BadSampleError, PoseSample, make_key
from hpe_ray.dependencies import import_extra
from hpe_ray.skeleton import H36M32_TO_17, NUM_JOINTS

log = logging.getLogger(__name__)
H36M_EXTRA = ("h36m", "reading the original Human3.6M release")
"""The optional extra with cdflib and av (imported when a .cdf or .mp4 is read), and what needs it."""

TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
DEFAULT_VAL_SUBJECTS = ("S8",)
# The video of this sequence is corrupt (VideoPose3D and MMPose skip it when reading frames).
CORRUPT_VIDEO_SEQUENCES = {("S11", "Directions")}
_ACTION_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}
_SUB_ACTION = re.compile(r"[ _]\d+$")
_MMPOSE_IMAGE = re.compile(r"(S\d+)_(.+)\.(\d+)_(\d+)\.\w+")

ExtrinsicsTable = dict[tuple[str, str], Extrinsics]
"""(subject, camera id) -> Extrinsics."""


def action_label(sequence: str) -> str:
    """The action of a sequence name: 'Walking 1' -> 'Walking', 'TakingPhoto_1' -> 'Photo'."""
    action = _SUB_ACTION.sub("", sequence)
    return _ACTION_ALIASES.get(action, action)


def split_subjects(val_subjects: Sequence[str] = DEFAULT_VAL_SUBJECTS) -> dict[str, tuple[str, ...]]:
    """Protocol 1 subjects per split, `val_subjects` taken out of the training subjects."""
    unknown = set(val_subjects) - set(TRAIN_SUBJECTS)
    if unknown:
        raise ValueError(f"val_subjects must be Protocol 1 training subjects {TRAIN_SUBJECTS}, got {sorted(unknown)}")
    return {"train": tuple(s for s in TRAIN_SUBJECTS if s not in val_subjects),
            "val": tuple(val_subjects),
            "test": TEST_SUBJECTS}


def read_extrinsics(path: str | Path) -> ExtrinsicsTable:
    """Camera extrinsics from JSON, in the form of VideoPose3D's h36m_cameras_extrinsic_params.

        {"S1": [{"orientation": [w, x, y, z], "translation": [x, y, z]}, ... 4 cameras], ...}

    orientation: camera-to-world unit quaternion; translation: camera centre in world mm. The
    list is in camera order 54138969, 55011271, 58860488, 60457274; a dict keyed by camera id
    instead of the list is accepted too. `json.dump(h36m_cameras_extrinsic_params, f)` of
    VideoPose3D's common/h36m_dataset.py writes such a file.
    """
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadSampleError(f"{path}: cannot read extrinsics JSON: {err}") from None
    if not isinstance(tree, dict):
        raise BadSampleError(f"{path}: expected a JSON object subject -> cameras")
    extrinsics = {}
    for subject, cameras in tree.items():
        if isinstance(cameras, list):
            if len(cameras) != len(H36M_CAMERA_IDS):
                raise BadSampleError(f"{path}: {subject} lists {len(cameras)} cameras, expected 4 in the order "
                                     f"{', '.join(H36M_CAMERA_IDS)}")
            cameras = dict(zip(H36M_CAMERA_IDS, cameras))
        for camera_id, params in cameras.items():
            try:
                extrinsics[subject, camera_id] = Extrinsics.from_quaternion(params["orientation"],
                                                                            params["translation"])
            except (KeyError, TypeError, ValueError) as err:
                raise BadSampleError(f"{path}: {subject} camera {camera_id}: need 'orientation' (w, x, y, z) "
                                     f"and 'translation' (mm): {err}") from None
    return extrinsics


def to_17_joints(poses: np.ndarray, origin: str) -> np.ndarray:
    """(T, 32, D) or (T, 17, D) -> (T, 17, D): the 32-joint mocap skeleton reduced as VideoPose3D."""
    poses = np.asarray(poses)
    if poses.ndim != 3 or poses.shape[1] not in (32, NUM_JOINTS):
        raise BadSampleError(f"{origin}: expected poses of shape (T, 32 or 17, D), got {poses.shape}")
    return poses[:, list(H36M32_TO_17)] if poses.shape[1] == 32 else poses


def make_sample(subject: str, sequence: str, camera_id: str, frame: int, pose_3d_cam_mm: np.ndarray,
                keypoints_2d_px: np.ndarray, intrinsics: Intrinsics, image: np.ndarray | None = None,
                crop_box_px: np.ndarray | None = None) -> PoseSample:
    """One Human3.6M frame as a PoseSample (float32 arrays, action label from the sequence name)."""
    return PoseSample(
        key=make_key("h36m", subject, sequence, camera_id, f"{frame:06d}"),
        keypoints_2d_px=np.asarray(keypoints_2d_px, dtype=np.float32),
        pose_3d_cam_mm=np.asarray(pose_3d_cam_mm, dtype=np.float32),
        intrinsics=intrinsics, subject=subject, action=action_label(sequence), camera_id=camera_id,
        frame=frame, image=image,
        crop_box_px=np.zeros(4, np.float32) if crop_box_px is None else np.asarray(crop_box_px, np.float32))


def _splits(samples: Callable[[tuple[str, ...]], Iterator[PoseSample]], val_subjects: Sequence[str],
            frame_step: int) -> dict[str, Iterator[PoseSample]]:
    """{split: samples(subjects of the split)}, after checking the settings all loaders share."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be at least 1, got {frame_step}")
    return {split: samples(subjects) for split, subjects in split_subjects(val_subjects).items()}


# VideoPose3D ---------------------------------------------------------------------------------

def _load_pickled_dict(path: str | Path, key: str) -> dict:
    path = Path(path)
    value = load_npz_object(path, key)
    if not isinstance(value, dict):
        raise BadSampleError(f"{path}: {key} must be a pickled dict subject -> sequence -> poses")
    return value


def load_videopose3d(data_3d_path: str | Path, data_2d_path: str | Path | None = None,
                     extrinsics_path: str | Path | None = None, *, frame_step: int = 1,
                     val_subjects: Sequence[str] = DEFAULT_VAL_SUBJECTS) -> dict[str, Iterator[PoseSample]]:
    """VideoPose3D npz files -> {split: samples}, 4 cameras per sequence, every `frame_step`-th frame.

    2D comes from data_2d_path when given (ground truth or detections, cut to the 3D length),
    otherwise from projecting the 3D with the public intrinsics. World-frame 3D needs
    extrinsics_path (`read_extrinsics`).
    """
    positions_3d = _load_pickled_dict(data_3d_path, "positions_3d")
    positions_2d = _load_pickled_dict(data_2d_path, "positions_2d") if data_2d_path is not None else None
    extrinsics = read_extrinsics(extrinsics_path) if extrinsics_path is not None else None

    def samples(subjects: tuple[str, ...]) -> Iterator[PoseSample]:
        for subject in (s for s in subjects if s in positions_3d):
            for sequence, poses_m in positions_3d[subject].items():
                origin = f"{data_3d_path}: {subject} {sequence!r}"
                for index, camera_id in enumerate(H36M_CAMERA_IDS):
                    pose_3d_cam_mm = _videopose3d_camera_mm(poses_m, subject, index, extrinsics, origin)
                    keypoints_2d_px = (
                        _videopose3d_2d(positions_2d, subject, sequence, index, len(pose_3d_cam_mm), data_2d_path)
                        if positions_2d is not None else
                        project_to_pixels(pose_3d_cam_mm, H36M_INTRINSICS[camera_id]))
                    log.info("%s %s camera %s: %d frames", subject, sequence, camera_id, len(pose_3d_cam_mm))
                    for frame in range(0, len(pose_3d_cam_mm), frame_step):
                        yield make_sample(subject, sequence, camera_id, frame, pose_3d_cam_mm[frame],
                                          keypoints_2d_px[frame], H36M_INTRINSICS[camera_id])

    return _splits(samples, val_subjects, frame_step)


def _videopose3d_camera_mm(poses_m, subject: str, camera_index: int, extrinsics: ExtrinsicsTable | None,
                           origin: str) -> np.ndarray:
    """(T, 17, 3) camera-frame mm from one sequence: world (T, J, 3) or per camera 4 x (T, J, 3)."""
    camera_id = H36M_CAMERA_IDS[camera_index]
    if isinstance(poses_m, np.ndarray) and poses_m.ndim == 3:
        if extrinsics is None:
            raise BadSampleError(f"{origin}: 3D is in the world frame; pass the camera extrinsics file "
                                 "(extrinsics_path) or a positions_3d with one camera-frame array per camera")
        if (subject, camera_id) not in extrinsics:
            raise BadSampleError(f"{origin}: the extrinsics file has no camera {camera_id} for {subject}")
        return world_to_camera(to_17_joints(poses_m, origin) * 1000.0, extrinsics[subject, camera_id])
    if len(poses_m) != len(H36M_CAMERA_IDS):
        raise BadSampleError(f"{origin}: expected a (T, J, 3) world array or 4 camera-frame arrays, "
                             f"got {len(poses_m)} entries")
    return to_17_joints(poses_m[camera_index], origin) * 1000.0


def _videopose3d_2d(positions_2d: dict, subject: str, sequence: str, camera_index: int, frames: int,
                    path: str | Path) -> np.ndarray:
    """(frames, 17, 2) px of one camera; the 2D sequences can be a few frames longer than the 3D."""
    try:
        keypoints = positions_2d[subject][sequence][camera_index]
    except (KeyError, IndexError):
        raise BadSampleError(f"{path}: no 2D for {subject} {sequence!r} "
                             f"camera {H36M_CAMERA_IDS[camera_index]}") from None
    keypoints = to_17_joints(keypoints, f"{path}: {subject} {sequence!r}")
    if len(keypoints) < frames:
        raise BadSampleError(f"{path}: {subject} {sequence!r} has {len(keypoints)} 2D frames, fewer than "
                             f"the {frames} of the 3D")
    return keypoints[:frames, :, :2]


# MMPose --------------------------------------------------------------------------------------

def parse_mmpose_image_name(image_name: str) -> tuple[str, str, str, int]:
    """'S1/.../S1_Directions_1.54138969_000001.jpg' -> ('S1', 'Directions 1', '54138969', 0).

    The sequence gets its original spaces back; the frame is 0-based (MMPose numbers from 1).
    """
    match = _MMPOSE_IMAGE.fullmatch(str(image_name).rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"image name {image_name!r} is not like S1_Directions_1.54138969_000001.jpg")
    subject, sequence, camera_id, number = match.groups()
    return subject, sequence.replace("_", " "), camera_id, int(number) - 1


def read_mmpose_cameras(path: str | Path) -> dict[tuple[str, str], Intrinsics]:
    """MMPose's cameras.pkl: {(subject, camera id): {f, c, k, p, w, h, ...}} -> Intrinsics.

    MMPose keeps the tangential coefficients in the order of the Human3.6M metadata; our
    projection (VideoPose3D's) takes them reversed, which reproduces the released 2D exactly.
    """
    path = Path(path)
    cameras = load_pickle(path)
    try:
        return {key: Intrinsics(np.ravel(cam["f"]), np.ravel(cam["c"]), np.ravel(cam["k"]),
                                np.ravel(cam["p"])[::-1], (int(cam["w"]), int(cam["h"])))
                for key, cam in cameras.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise BadSampleError(f"{path}: cannot read MMPose cameras (need f, c, k, p, w, h per "
                             f"(subject, camera id)): {err}") from None


def load_mmpose(annotation_paths: Sequence[str | Path], cameras_path: str | Path | None = None, *,
                frame_step: int = 1,
                val_subjects: Sequence[str] = DEFAULT_VAL_SUBJECTS) -> dict[str, Iterator[PoseSample]]:
    """MMPose annotation npz files (h36m_train.npz, h36m_test.npz) -> {split: samples}.

    Splits come from the subject in each imgname, not from the file name. Rows whose 0-based
    frame is not a multiple of frame_step are left out. Intrinsics: cameras_path (MMPose's
    cameras.pkl) when given, else the public intrinsics of the imgname's camera.
    """
    cameras = read_mmpose_cameras(cameras_path) if cameras_path is not None else None
    tables = [_read_mmpose_table(Path(p)) for p in annotation_paths]

    def samples(subjects: tuple[str, ...]) -> Iterator[PoseSample]:
        for path, rows, part, joints_3d in tables:
            for row, (subject, sequence, camera_id, frame) in enumerate(rows):
                if subject not in subjects or frame % frame_step:
                    continue
                intrinsics = _mmpose_intrinsics(cameras, subject, camera_id, f"{path}: row {row}")
                yield make_sample(subject, sequence, camera_id, frame, joints_3d[row, :, :3] * 1000.0,
                                  part[row, :, :2], intrinsics)

    return _splits(samples, val_subjects, frame_step)


def _read_mmpose_table(path: Path) -> tuple[Path, list[tuple[str, str, str, int]], np.ndarray, np.ndarray]:
    """(path, parsed imgname per row, part (N, 17, 3), S (N, 17, 4)) of one annotation file."""
    try:
        with np.load(path) as archive:
            names, part, joints_3d = archive["imgname"], archive["part"], archive["S"]
    except (OSError, ValueError, KeyError) as err:
        raise BadSampleError(f"{path}: not an MMPose body3d annotation npz (imgname, part, S): {err}") from None
    if part.shape[1:] != (NUM_JOINTS, 3) or joints_3d.shape[1:] != (NUM_JOINTS, 4) or not (
            len(names) == len(part) == len(joints_3d)):
        raise BadSampleError(f"{path}: expected imgname (N,), part (N, 17, 3), S (N, 17, 4); got "
                             f"{names.shape}, {part.shape}, {joints_3d.shape}")
    try:
        rows = [parse_mmpose_image_name(name) for name in names]
    except ValueError as err:
        raise BadSampleError(f"{path}: {err}") from None
    return path, rows, part, joints_3d


def _mmpose_intrinsics(cameras: dict | None, subject: str, camera_id: str, origin: str) -> Intrinsics:
    if cameras is not None:
        if (subject, camera_id) not in cameras:
            raise BadSampleError(f"{origin}: the cameras file has no ({subject!r}, {camera_id!r})")
        return cameras[subject, camera_id]
    if camera_id not in H36M_INTRINSICS:
        raise BadSampleError(f"{origin}: unknown camera {camera_id!r}; pass the cameras.pkl")
    return H36M_INTRINSICS[camera_id]


# Original release ----------------------------------------------------------------------------

def read_cdf_poses(path: Path) -> np.ndarray:
    """The "Pose" variable of a Human3.6M .cdf: (1, T, 96) or (T, 96) -> (T, 32, 3) mm."""
    cdflib = import_extra("cdflib", *H36M_EXTRA)
    try:
        poses = np.asarray(cdflib.CDF(str(path)).varget("Pose"), dtype=np.float64)
    except (OSError, ValueError) as err:
        raise BadSampleError(f"{path}: cannot read variable 'Pose' from the CDF file: {err}") from None
    if poses.size == 0 or poses.shape[-1] != 96:
        raise BadSampleError(f"{path}: 'Pose' has shape {poses.shape}, expected (1, T, 96)")
    return poses.reshape(-1, 32, 3)


def original_sequences(subject_dir: Path, extrinsics: ExtrinsicsTable | None) -> Iterator[tuple[str, str, np.ndarray]]:
    """(sequence, camera id, pose_3d_cam_mm (T, 17, 3)) of one subject of the original release.

    D3_Positions_mono (camera frame) when present; else D3_Positions (world) and the extrinsics.
    """
    subject = subject_dir.name
    features = subject_dir / "MyPoseFeatures"
    mono = sorted((features / "D3_Positions_mono").glob("*.cdf"))
    if mono:
        for path in mono:
            sequence, _, camera_id = path.stem.rpartition(".")
            if camera_id not in H36M_INTRINSICS:
                raise BadSampleError(f"{path}: expected a name <sequence>.<camera id>.cdf with a Human3.6M camera id")
            yield sequence, camera_id, to_17_joints(read_cdf_poses(path), str(path))
        return
    world = sorted((features / "D3_Positions").glob("*.cdf"))
    if not world:
        raise BadSampleError(f"{features}: neither D3_Positions_mono nor D3_Positions has .cdf files")
    if extrinsics is None:
        raise BadSampleError(f"{features}: only world-frame D3_Positions; pass the camera extrinsics file "
                             "(extrinsics_path) to bring them into the camera frames")
    for path in world:
        poses_world_mm = to_17_joints(read_cdf_poses(path), str(path))
        for camera_id in H36M_CAMERA_IDS:
            if (subject, camera_id) not in extrinsics:
                raise BadSampleError(f"{path}: the extrinsics file has no camera {camera_id} for {subject}")
            yield path.stem, camera_id, world_to_camera(poses_world_mm, extrinsics[subject, camera_id])


def load_original_release(root: str | Path, *, image_size: int | None = None, crop_margin: float = 0.15,
                          frame_step: int = 1, extrinsics_path: str | Path | None = None,
                          val_subjects: Sequence[str] = DEFAULT_VAL_SUBJECTS) -> dict[str, Iterator[PoseSample]]:
    """The original release under `root` (root/S1, root/S5, ...) -> {split: samples}.

    2D is the 3D projected with the public intrinsics. With image_size, every kept frame is read
    from `S*/Videos/<sequence>.<camera>.mp4` and cropped to a square around the 2D (crop_margin as
    in render.crop_box_around), resized to image_size px; the S11 Directions videos are skipped.
    """
    root = Path(root)
    extrinsics = read_extrinsics(extrinsics_path) if extrinsics_path is not None else None

    def samples(subjects: tuple[str, ...]) -> Iterator[PoseSample]:
        for subject in subjects:
            subject_dir = root / subject
            if not subject_dir.is_dir():
                continue
            for sequence, camera_id, pose_3d_cam_mm in original_sequences(subject_dir, extrinsics):
                if image_size and (subject, action_label(sequence)) in CORRUPT_VIDEO_SEQUENCES:
                    log.info("%s %s camera %s: skipped (corrupt video)", subject, sequence, camera_id)
                    continue
                intrinsics = H36M_INTRINSICS[camera_id]
                keypoints_2d_px = project_to_pixels(pose_3d_cam_mm, intrinsics)
                frames = range(0, len(pose_3d_cam_mm), frame_step)
                log.info("%s %s camera %s: %d frames", subject, sequence, camera_id, len(frames))
                video = subject_dir / "Videos" / f"{sequence}.{camera_id}.mp4"
                for frame, image in (video_frames(video, frames) if image_size else ((f, None) for f in frames)):
                    crop_box_px = None
                    if image is not None:
                        # Integer box: the stored box is exactly the pixels that were cut.
                        crop_box_px = np.round(crop_box_around(keypoints_2d_px[frame], crop_margin))
                        image = crop_and_resize(image, crop_box_px, image_size)
                    yield make_sample(subject, sequence, camera_id, frame, pose_3d_cam_mm[frame],
                                      keypoints_2d_px[frame], intrinsics, image, crop_box_px)

    return _splits(samples, val_subjects, frame_step)


def video_frames(path: Path, frames: range) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, (H, W, 3) uint8 RGB) for the indices in `frames`, decoded in order.

    A video shorter than the poses is an error; a few extra video frames (common) are ignored.
    """
    av = import_extra("av", *H36M_EXTRA)
    wanted = iter(frames)
    next_frame = next(wanted, None)
    try:
        with av.open(str(path)) as container:
            for index, decoded in enumerate(container.decode(video=0)):
                if next_frame is None:
                    return
                if index == next_frame:
                    yield index, decoded.to_ndarray(format="rgb24")
                    next_frame = next(wanted, None)
    except (OSError, av.FFmpegError) as err:
        raise BadSampleError(f"{path}: cannot decode video: {err}") from None
    if next_frame is not None:
        raise BadSampleError(f"{path}: video ends before frame {next_frame} of the poses")


def crop_and_resize(image: np.ndarray, crop_box_px: np.ndarray, out_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (out_size, out_size, 3): the integer box x0 y0 x1 y1, black outside the image."""
    box = tuple(int(v) for v in crop_box_px)
    crop = Image.fromarray(image).crop(box)  # PIL pads with black where the box leaves the image
    return np.asarray(crop.resize((out_size, out_size), Image.Resampling.BILINEAR))
