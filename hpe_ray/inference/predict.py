"""`hpe-ray predict`: lift 2D keypoints (single images or sequences) or a folder of person crops
to 3D; write .npz and, on request, a viewer JSON and a BVH per track.

Inputs (see `hpe_ray.inference.formats`): COCO results or MMPose JSON, an OpenPose folder,
VideoPose3D's custom npz, our npz or a CSV; and/or a folder of RGB person crops (.jpg/.png)
for a model with an RGB encoder.

The camera, for models that need one (`data.mode_2d: camera`): given focal/center, else the
file's, else derived from the image size (given, or in the file) and a field of view
(`camera.DEFAULT_FOV_DEG` across the longer side), else the training data's most common camera.
Scale-free models (the default) need none. Joints the detector scores below `min_score` (or
leaves out) are filled from the same joint in the track's neighbouring frames when it has
confident ones, and listed in `low_confidence`; a model trained with `data.keypoint_scores` also
reads the scores (filled joints keep their low score, missing joints score 0 and sit on a neighbour).

Output .npz, all poses root-relative in the camera frame, mm, Human3.6M joint order:
    poses_3d (N, 17, 3), valid (N,), names (N,), tracks (N,), frames (N,),
    keypoints_2d (N, 17, 2) px as lifted, keypoint_scores (N, 17), low_confidence (N, 17),
    fps () the --fps given, image_size (N, 2) width, height px when known (given or in the file),
    hypotheses (N, K, 17, 3) when K > 1                          -- from the keypoints
    poses_3d_rgb (M, 17, 3), valid_rgb (M,), image_files (M,),
    hypotheses_rgb (M, K, 17, 3) when K > 1                      -- from the crops
    joint_names (17,), problems (P,): one line per sample that was skipped.
Rows of skipped samples are NaN. A sample that cannot be used is reported (file and sample)
and skipped; the rest of the input is still lifted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hpe_ray.camera import DEFAULT_FOV_DEG, intrinsics_from_image_size, per_sample_pixels
from hpe_ray.data.sample import BadSampleError
from hpe_ray.inference.formats import (DEFAULT_MIN_SCORE, KeypointInput, fill_low_confidence, read_keypoints,
                                       track_order)
from hpe_ray.inference.lifter import LiftResult, Lifter, resize_crop
from hpe_ray.inference.outputs import smooth_tracks, write_bvh, write_viewer_json
from hpe_ray.skeleton import JOINT_NAMES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Inputs with more samples (crops) than this get a progress bar.
PROGRESS_MIN_SAMPLES = 20_000
PROGRESS_MIN_IMAGES = 1000
OUTPUT_FORMATS = ("npz", "json", "bvh")


@dataclass
class PredictSummary:
    """What `predict_file` wrote; str() is the report the CLI prints."""

    output: Path
    hypotheses: int
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keypoint_samples: int = 0
    keypoint_lifted: int = 0
    image_samples: int = 0
    image_lifted: int = 0
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {path}" for path in self.written] + [f"  {note}" for note in self.notes]
        if self.keypoint_samples:
            lines.append(f"  from 2D keypoints: {self.keypoint_lifted} of {self.keypoint_samples} samples lifted")
        if self.image_samples:
            lines.append(f"  from images: {self.image_lifted} of {self.image_samples} crops lifted")
        if self.hypotheses > 1:
            lines.append(f"  {self.hypotheses} hypotheses per sample besides the mean")
        if self.problems:
            lines.append(f"  skipped {len(self.problems)} unusable samples:")
            lines += [f"    {problem}" for problem in self.problems[:20]]
            if len(self.problems) > 20:
                lines.append(f"    ... and {len(self.problems) - 20} more (all in the output's 'problems')")
        return "\n".join(lines)


def predict_file(checkpoint, keypoints_path: str | Path | None, output: str | Path, hypotheses: int = 1,
                 images_dir: str | Path | None = None, keypoint_format: str = "auto", *,
                 focal_px=None, center_px=None, image_size_px=None, fov_deg: float = DEFAULT_FOV_DEG,
                 min_score: float = DEFAULT_MIN_SCORE, smooth_frames: int = 1, fps: float = 30.0,
                 formats=("npz",), batch_size: int = 1024, device: str = "cpu", seed: int = 0,
                 fit_2d: float | None = None) -> PredictSummary:
    """Lift a keypoint file and/or a folder of crops with a checkpoint; write `output` (.npz) and
    the other `formats` beside it (`<stem>.json`, `<stem>.bvh` or `<stem>_<track>.bvh`).

    keypoint_format: joint order of the keypoint file ("auto", "coco", "h36m"; see
    `formats.read_keypoints`). focal_px, center_px: (2,) pixels, overriding the file's camera.
    image_size_px: (width, height) of the frames the keypoints come from, for the camera derived
    with fov_deg (degrees across the longer side) when no camera is known. min_score: detector
    confidence below which a joint is filled from neighbouring frames of its track.
    smooth_frames: odd moving-average window over each track's 3D mean poses (1 = off).
    fps: frame rate written into the JSON and BVH. fit_2d: how far the poses are fitted to the
    keypoints, in [0, 1] (None: the model's model.fit_2d; lower for noisy 2D).
    """
    if keypoints_path is None and images_dir is None:
        raise ValueError("nothing to predict: give a keypoint file, a folder of crops (images_dir), or both")
    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown or "npz" not in formats:
        raise ValueError(f"output formats must include npz and be among {OUTPUT_FORMATS}, got {list(formats)}")
    if smooth_frames < 1 or smooth_frames % 2 == 0:
        raise ValueError(f"smooth_frames must be an odd number >= 1, got {smooth_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    lifter = Lifter.from_checkpoint(checkpoint, device=device, fit_2d=fit_2d)
    output = Path(output)
    summary = PredictSummary(output=output, hypotheses=hypotheses)
    arrays: dict[str, np.ndarray] = {"joint_names": np.asarray(JOINT_NAMES)}
    sequence = None
    if keypoints_path is not None:
        keypoints, low_confidence = fill_low_confidence(read_keypoints(keypoints_path, keypoint_format), min_score)
        if low_confidence.any():
            summary.notes.append(f"{int(low_confidence.sum())} joints scored below {min_score:g} or missing "
                                 f"({np.mean(low_confidence.any(axis=1)):.0%} of samples); filled from "
                                 "neighbouring frames where the track had them")
        image_size = (per_sample_pixels(image_size_px, len(keypoints.names), "image_size_px")
                      if image_size_px is not None else keypoints.image_size_px)
        focal, center = _camera(keypoints, lifter, focal_px, center_px, image_size, fov_deg, summary)
        result = lifter.lift(keypoints.keypoints_2d_px, focal, center, scores=keypoints.scores, hypotheses=hypotheses,
                             batch_size=batch_size, progress=len(keypoints.names) > PROGRESS_MIN_SAMPLES, seed=seed)
        if lifter.reads_scores:
            summary.notes.append("the model reads the detector's scores (filled joints keep their low score, "
                                 "missing ones score 0)")
        # The reader named the file for the samples it rejected; the lifter's own problems
        # (e.g. a bad camera) get the file name here.
        summary.problems += [keypoints.problems[i] if i in keypoints.problems else f"{keypoints_path}: {problem}"
                             for i, problem in sorted(result.problems.items())]
        if smooth_frames > 1:
            result = replace(result, poses_3d=smooth_tracks(result.poses_3d, keypoints.tracks, keypoints.frames,
                                                            smooth_frames))
            summary.notes.append(f"3D mean poses smoothed over {smooth_frames} frames per track")
        arrays.update(_result_arrays(result, ""),
                      names=keypoints.names, tracks=keypoints.tracks, frames=keypoints.frames,
                      keypoints_2d=keypoints.keypoints_2d_px, keypoint_scores=keypoints.scores,
                      low_confidence=low_confidence, fps=np.float64(fps))
        if image_size is not None:
            arrays["image_size"] = image_size
        summary.keypoint_samples, summary.keypoint_lifted = len(result.valid), int(result.valid.sum())
        sequence = (result, keypoints, low_confidence)
    if images_dir is not None:
        files, crops, problems = read_crops(images_dir, lifter.image_size)
        result = lifter.lift_images(crops, hypotheses=hypotheses, progress=len(files) > PROGRESS_MIN_IMAGES, seed=seed)
        summary.problems += problems + [f"{files[i]}: {problem}" for i, problem in result.problems.items()
                                        if crops[i] is not None]
        arrays.update(_result_arrays(result, "_rgb"), image_files=np.asarray([f.name for f in files]))
        summary.image_samples, summary.image_lifted = len(result.valid), int(result.valid.sum())
    if summary.keypoint_lifted + summary.image_lifted == 0:
        raise BadSampleError(f"no usable sample in {keypoints_path or images_dir}: " + "; ".join(summary.problems[:5]))
    if summary.problems:
        warnings.warn(f"skipped {len(summary.problems)} unusable samples (listed in the summary and in the "
                      f"output's 'problems'), the first: {summary.problems[0]}", stacklevel=2)
    arrays["problems"] = np.asarray(summary.problems, dtype=str)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as f:  # a file object: np.savez would append ".npz" to a path without it
        np.savez(f, **arrays)
    summary.written.append(output)
    if sequence is not None:
        summary.written += _write_sequences(output, formats, fps, *sequence, summary)
    return summary


def _camera(keypoints: KeypointInput, lifter: Lifter, focal_px, center_px, sizes: np.ndarray | None,
            fov_deg: float, summary: PredictSummary):
    """(focal, center) for the lifter: given, the file's, derived from the frame sizes (N, 2) px, or
    None (the lifter's default camera, or for a scale-free model the weak-perspective fit)."""
    if focal_px is not None or center_px is not None:
        return focal_px, center_px
    if keypoints.focal_px is not None:
        return keypoints.focal_px, keypoints.center_px
    if not lifter.uses_camera:
        return None, None
    if sizes is None:
        return None, None
    focal, center = np.empty_like(sizes), np.empty_like(sizes)
    for size in np.unique(sizes, axis=0):
        rows = np.all(sizes == size, axis=1)
        focal[rows], center[rows] = intrinsics_from_image_size(*size, fov_deg)
    summary.notes.append(f"no camera intrinsics: derived from the {'x'.join(f'{v:g}' for v in sizes[0])} px image "
                         f"and a {fov_deg:g} degree field of view across its longer side (focal {focal[0, 0]:.0f} px); "
                         "give --focal/--center or --fov if you know them")
    return focal, center


def _write_sequences(output: Path, formats, fps: float, result: LiftResult, keypoints: KeypointInput,
                     low_confidence: np.ndarray, summary: PredictSummary) -> list[Path]:
    """The viewer JSON and the per-track BVHs asked for in `formats`; their paths."""
    written = []
    if "json" in formats:
        written.append(write_viewer_json(output.with_suffix(".json"), result.poses_3d, result.valid, keypoints.tracks,
                                         keypoints.frames, fps, result.hypotheses, low_confidence))
    if "bvh" in formats:
        tracks = track_order(keypoints.tracks, keypoints.frames)
        for track, rows in tracks.items():
            rows = rows[result.valid[rows]]
            if len(rows) == 0:
                continue
            name = output.stem if len(tracks) == 1 else f"{output.stem}_{track}"
            written.append(write_bvh(output.with_name(f"{name}.bvh"), result.poses_3d[rows].astype(np.float64), fps))
            if len(rows) < int(np.sum(keypoints.tracks == track)):
                summary.notes.append(f"track {track}: frames that could not be lifted are left out of its BVH")
    return written


def read_crops(images_dir: str | Path, image_size: int) -> tuple[list[Path], list[np.ndarray | None], list[str]]:
    """Image files of a folder in name order, each as (image_size, image_size, 3) uint8 RGB (resized
    as it is read, which bounds the memory) or None when unreadable, with one problem line per
    unreadable file."""
    from PIL import Image, UnidentifiedImageError

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: images folder not found")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadSampleError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    crops: list[np.ndarray | None] = []
    problems = []
    for path in tqdm(files, desc="reading crops", unit=" images", disable=len(files) <= PROGRESS_MIN_IMAGES):
        try:
            with Image.open(path) as image:
                crops.append(resize_crop(np.asarray(image.convert("RGB")), image_size))
        except (OSError, UnidentifiedImageError) as err:
            crops.append(None)
            problems.append(f"{path}: unreadable image ({err})")
    return files, crops, problems


def _result_arrays(result: LiftResult, suffix: str) -> dict[str, np.ndarray]:
    arrays = {f"poses_3d{suffix}": result.poses_3d, f"valid{suffix}": result.valid}
    if result.hypotheses is not None:
        arrays[f"hypotheses{suffix}"] = result.hypotheses
    return arrays
