"""`hpe-ray predict`: lift a file of 2D keypoints (or a folder of person crops) to 3D, write .npz.

Inputs (see `hpe_ray.inference.formats`): a COCO keypoint results `.json` or an `.npz` with
`keypoints_2d` (N, 17, 2) px and optional `focal`, `center`; and/or a folder of RGB person
crops (.jpg/.png) for a model with an RGB encoder.

Output .npz, all poses root-relative in the camera frame, mm, Human3.6M joint order:
    poses_3d (N, 17, 3), valid (N,), names (N,), keypoints_2d (N, 17, 2) px as lifted,
    hypotheses (N, K, 17, 3) when K > 1                          -- from the keypoint file
    poses_3d_rgb (M, 17, 3), valid_rgb (M,), image_files (M,),
    hypotheses_rgb (M, K, 17, 3) when K > 1                      -- from the crops
    joint_names (17,), problems (P,): one line per sample that was skipped.
Rows of skipped samples are NaN. A sample that cannot be used is reported (file and sample)
and skipped; the rest of the input is still lifted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hpe_ray.data.sample import BadSampleError
from hpe_ray.inference.formats import read_keypoints
from hpe_ray.inference.lifter import LiftResult, Lifter, resize_crop
from hpe_ray.skeleton import JOINT_NAMES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Inputs with more samples (crops) than this get a progress bar.
PROGRESS_MIN_SAMPLES = 20_000
PROGRESS_MIN_IMAGES = 1000


@dataclass
class PredictSummary:
    """What `predict_file` wrote; str() is the report the CLI prints."""

    output: Path
    hypotheses: int
    keypoint_samples: int = 0
    keypoint_lifted: int = 0
    image_samples: int = 0
    image_lifted: int = 0
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {self.output}"]
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
                 focal_px=None, center_px=None, batch_size: int = 1024, device: str = "cpu",
                 seed: int = 0) -> PredictSummary:
    """Lift a keypoint file and/or a folder of crops with a checkpoint; write the .npz `output`.

    keypoint_format: joint order of the keypoint file ("auto": COCO for .json, Human3.6M for
    .npz; or "coco" / "h36m"). focal_px, center_px: (2,) pixels, overriding the file's camera
    (a file without one otherwise uses the training data's most common camera, with a warning).
    """
    if keypoints_path is None and images_dir is None:
        raise ValueError("nothing to predict: give a keypoint file, a folder of crops (images_dir), or both")
    lifter = Lifter.from_checkpoint(checkpoint, device=device)
    output = Path(output)
    summary = PredictSummary(output=output, hypotheses=hypotheses)
    arrays: dict[str, np.ndarray] = {"joint_names": np.asarray(JOINT_NAMES)}
    if keypoints_path is not None:
        keypoints = read_keypoints(keypoints_path, keypoint_format)
        focal, center = (focal_px, center_px) if focal_px is not None else (keypoints.focal_px, keypoints.center_px)
        result = lifter.lift(keypoints.keypoints_2d_px, focal, center, hypotheses=hypotheses,
                             batch_size=batch_size, progress=len(keypoints.valid) > PROGRESS_MIN_SAMPLES, seed=seed)
        # The reader already named the file for the samples it rejected; the lifter's own
        # problems (e.g. a bad camera) get the file name here.
        summary.problems += keypoints.problems + [f"{keypoints_path}: {problem}"
                                                  for i, problem in result.problems.items() if keypoints.valid[i]]
        arrays.update(_result_arrays(result, ""), names=keypoints.names, keypoints_2d=keypoints.keypoints_2d_px)
        summary.keypoint_samples, summary.keypoint_lifted = len(result.valid), int(result.valid.sum())
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
    return summary


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
