"""`Lifter`: a checkpoint ready to lift 2D keypoints (or person crops) to root-relative 3D
poses in mm, with input checks that mask unusable samples; `LiftResult`, what it returns;
`resize_crop`, the crop resizing of the training loader; `training_camera`, the default camera.

Predictions go through `hpe_ray.models.predict_pose_3d_mm`, the function validation and
`evaluate` use, so the numbers agree with the evaluation tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hpe_ray.camera import most_common_camera, per_sample_pixels, pixels_to_normalized
from hpe_ray.data.batch import images_to_model_range, scored_pose_2d
from hpe_ray.models import predict_pose_3d_mm
from hpe_ray.normalization import NormStats, normalize_2d
from hpe_ray.skeleton import JOINT_NEIGHBOURS, NUM_JOINTS
from hpe_ray.training.checkpoint import LoadedCheckpoint, load_checkpoint


@dataclass
class LiftResult:
    """poses_3d (N, 17, 3) float32, root-relative camera-frame mm (the mean decoding);
    hypotheses (N, K, 17, 3) float32 or None (K = 1); valid (N,) bool, rows of invalid samples
    are NaN; problems: {sample index: what is wrong with it} for the invalid samples."""

    poses_3d: np.ndarray
    hypotheses: np.ndarray | None
    valid: np.ndarray
    problems: dict[int, str] = field(default_factory=dict)


def training_camera(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(focal_px (2,), center_px (2,)) of the most common camera of a dataset's train split."""
    from hpe_ray.data.stream import load_pose_arrays

    return most_common_camera(load_pose_arrays(data_dir, "train", on_error="skip").intrinsics)


class Lifter:
    """A trained model and its normalisation, ready to lift.

    default_camera: (focal_px (2,), center_px (2,)) used when `lift` gets no intrinsics, or
    None to take the most common camera of the training data (`cfg.data.dir`) when first needed.
    Only models with mode_2d "camera" need intrinsics at all.
    """

    def __init__(self, checkpoint: LoadedCheckpoint, device: str | torch.device = "cpu",
                 default_camera: tuple[np.ndarray, np.ndarray] | None = None):
        self.checkpoint = checkpoint
        self.model = checkpoint.model.to(device).eval()
        self.stats: NormStats = checkpoint.stats
        self.device = torch.device(device)
        self.encoders, decoders = checkpoint.cfg.modalities
        if "pose3d" not in decoders:
            raise ValueError(f"{checkpoint.path}: the model has no 3D pose decoder (decoders {sorted(decoders)})")
        self._default_camera = default_camera

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu",
                        default_camera: tuple[np.ndarray, np.ndarray] | None = None,
                        fit_2d: float | None = None) -> Lifter:
        """Load a checkpoint file, checkpoint directory or run directory (best val_mpjpe);
        fit_2d in [0, 1] overrides the model's model.fit_2d (None: the model's)."""
        return cls(load_checkpoint(path, map_location=device, fit_2d=fit_2d), device, default_camera)

    @property
    def image_size(self) -> int:
        """Side (px) of the square crops the RGB encoder takes."""
        return self.checkpoint.cfg.data.image_size

    @property
    def reads_scores(self) -> bool:
        """Whether the model reads per-joint detector confidences (trained with data.keypoint_scores)."""
        return self.checkpoint.cfg.data.keypoint_scores

    @property
    def needs_camera(self) -> bool:
        """Only mode_2d "camera" models use intrinsics: "pixel" ones take raw pixels and "scaled"
        ones a root-relative pose divided by its own size, where focal length and principal
        point cancel (square pixels assumed)."""
        return self.stats.mode_2d == "camera"

    @property
    def uses_camera(self) -> bool:
        """Whether intrinsics improve the result: needed (`needs_camera`), or used to fit the
        poses to their keypoints in perspective (model.fit_2d; weak perspective without them)."""
        return self.needs_camera or self.model.fit_2d > 0

    def default_camera(self) -> tuple[np.ndarray, np.ndarray]:
        """(focal_px, center_px) for inputs without intrinsics (see the class docstring)."""
        stored = self.checkpoint.state.get("extra", {}).get("train_camera")
        if self._default_camera is None and stored is not None:
            self._default_camera = (np.asarray(stored[:2]), np.asarray(stored[2:4]))
        if self._default_camera is None:
            data_dir = self.checkpoint.cfg.data.dir
            try:
                self._default_camera = training_camera(data_dir)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(
                    f"{self.checkpoint.path}: no camera intrinsics given, and the training data "
                    f"({data_dir}) to take its most common camera from is not readable ({err}); "
                    "pass focal_px and center_px") from None
        return self._default_camera

    def lift(self, keypoints_2d_px, focal_px=None, center_px=None, *, scores=None, hypotheses: int = 1,
             batch_size: int = 1024, progress: bool = False, seed: int = 0) -> LiftResult:
        """Lift 2D keypoints to 3D.

        keypoints_2d_px: (N, 17, 2) full-image pixels, Human3.6M joint order, or a sequence of
        N (17, 2) arrays. focal_px, center_px: (2,) or (N, 2) pixels, or both None for the
        default camera (a warning says so). scores: (N, 17) detector confidences, read only by
        a model trained with data.keypoint_scores (`reads_scores`; None: every joint 1); such a
        model also lifts samples with missing (NaN) joints, each put on its nearest present
        neighbour in the skeleton with score 0. hypotheses: K >= 1; K > 1 also returns K samples
        of the 2D-conditioned posterior (seeded with `seed`). Samples with NaN or infinite
        values, a wrong shape or a non-positive focal length are reported and masked; the rest
        of the batch is lifted.
        """
        if "pose2d" not in self.encoders:
            raise ValueError(f"{self.checkpoint.path}: the model has no 2D pose encoder "
                             f"(encoders {sorted(self.encoders)}); use lift_images")
        keypoints, valid, problems, missing = _stack_keypoints(keypoints_2d_px, borrow_missing=self.reads_scores)
        focal, center, known_camera = self._camera(focal_px, center_px, len(keypoints))
        bad_camera = valid & ~(np.all(np.isfinite(focal), 1) & np.all(np.isfinite(center), 1) & np.all(focal > 0, 1))
        problems.update({int(i): f"sample {i}: focal_px or center_px is not finite and positive"
                         for i in np.flatnonzero(bad_camera)})
        valid &= ~bad_camera
        pose_2d = np.zeros((len(keypoints), NUM_JOINTS - 1, 2), np.float32)
        pose_2d[valid] = normalize_2d(keypoints[valid], focal[valid], center[valid], self.stats)
        confidences = _confidences(scores, len(keypoints), missing) if scores is not None or self.reads_scores else None
        if self.reads_scores:
            pose_2d = scored_pose_2d(pose_2d, confidences)
        # Without a camera the poses are fitted to their keypoints in weak perspective; each
        # joint as far as its detector score trusts it.
        rays = np.zeros((len(keypoints), NUM_JOINTS, 2), np.float32)
        rays[valid] = pixels_to_normalized(keypoints[valid], focal[valid], center[valid])
        return self._predict(pose_2d, "pose2d", valid, problems, hypotheses, batch_size, progress, seed,
                             rays, known_camera, confidences)

    def lift_images(self, images, *, hypotheses: int = 1, batch_size: int = 64, progress: bool = False,
                    seed: int = 0) -> LiftResult:
        """3D poses from person crops with the RGB encoder.

        images: (N, H, W, 3) uint8 RGB crops around the person (as in training: a square box
        around the body with a margin), or a sequence of such arrays of any size; each is resized
        to `image_size`. Crops that are not (H, W, 3) uint8 are reported and masked.
        """
        if "rgb" not in self.encoders:
            raise ValueError(f"{self.checkpoint.path}: the model has no RGB encoder (encoders {sorted(self.encoders)})")
        size = self.image_size
        crops = np.zeros((len(images), size, size, 3), np.uint8)
        valid = np.zeros(len(images), bool)
        problems = {}
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                problems[i] = f"sample {i}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
                continue
            crops[i], valid[i] = resize_crop(image, size), True
        inputs = images_to_model_range(torch.from_numpy(crops)).numpy()
        return self._predict(inputs, "rgb", valid, problems, hypotheses, batch_size, progress, seed)

    def _camera(self, focal_px, center_px, count: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Per-sample (focal (N, 2), center (N, 2)) and whether they are a camera: placeholders
        (focal 1, center 0, False) for models that need none when none is given."""
        if (focal_px is None) != (center_px is None):
            raise ValueError("give both focal_px and center_px, or neither (the default camera)")
        if focal_px is None:
            if not self.needs_camera:
                return np.ones((count, 2)), np.zeros((count, 2)), False
            focal_px, center_px = self.default_camera()
            warnings.warn(f"no camera intrinsics given: using the training data's most common camera "
                          f"(focal {np.round(focal_px, 1).tolist()} px, center {np.round(center_px, 1).tolist()} px); "
                          "3D poses are only right if the keypoints come from a similar camera", stacklevel=3)
        return per_sample_pixels(focal_px, count, "focal_px"), per_sample_pixels(center_px, count, "center_px"), True

    @torch.no_grad()
    def _predict(self, inputs: np.ndarray, modality: str, valid: np.ndarray, problems: dict[int, str],
                 hypotheses: int, batch_size: int, progress: bool, seed: int, rays: np.ndarray | None = None,
                 perspective: bool = True, weights: np.ndarray | None = None) -> LiftResult:
        """Run the valid rows of `inputs` through the model in batches; NaN rows for the others.
        rays (N, 17, 2): the 2D as (u - c) / f for `predict_pose_3d_mm`, or None; weights (N, 17)
        its per-joint weights or None."""
        if hypotheses < 1:
            raise ValueError(f"hypotheses must be >= 1, got {hypotheses}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        count = len(valid)
        poses = np.full((count, NUM_JOINTS, 3), np.nan, np.float32)
        samples = np.full((count, hypotheses, NUM_JOINTS, 3), np.nan, np.float32) if hypotheses > 1 else None
        rows = np.flatnonzero(valid)
        starts = range(0, len(rows), batch_size)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in tqdm(starts, desc=f"lifting from {modality}", unit=" batches", disable=not progress):
                batch_rows = rows[start:start + batch_size]
                batch = torch.as_tensor(inputs[batch_rows], device=self.device)
                # K = 1 is the mean alone: no sample to draw and discard.
                batch_rays, batch_weights = (None if a is None else torch.as_tensor(a[batch_rows], device=self.device)
                                             for a in (rays, weights))
                mean_mm, samples_mm = predict_pose_3d_mm(self.model, batch, modality, self.stats,
                                                         hypotheses if hypotheses > 1 else 0, batch_rays, perspective,
                                                         batch_weights)
                poses[batch_rows] = mean_mm.cpu().numpy()
                if samples is not None:
                    samples[batch_rows] = samples_mm.cpu().numpy()
        return LiftResult(poses, samples, valid, problems)


def resize_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear like the training loader."""
    if image.shape[:2] == (size, size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _stack_keypoints(keypoints_2d_px, borrow_missing: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, str], np.ndarray]:
    """(N, 17, 2) float64 with NaN rows for unusable samples, valid (N,), problems, missing (N, 17)
    bool: the joints that were not finite, which borrow_missing puts on a neighbour (`borrow_missing_joints`)."""
    if isinstance(keypoints_2d_px, np.ndarray) or torch.is_tensor(keypoints_2d_px):
        keypoints = np.asarray(keypoints_2d_px, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
            raise ValueError(f"keypoints_2d_px must be (N, {NUM_JOINTS}, 2) pixels, got shape {keypoints.shape}")
        problems = {}
    else:  # a sequence of per-sample arrays: shapes may differ, so each is checked on its own
        keypoints, problems = _stack_rows(list(keypoints_2d_px))
    missing = ~np.all(np.isfinite(keypoints), axis=2)
    if borrow_missing:
        keypoints = borrow_missing_joints(keypoints)
    finite = np.all(np.isfinite(keypoints), axis=(1, 2))
    for i in np.flatnonzero(~finite):
        problems.setdefault(int(i), f"sample {i}: keypoints contain NaN or infinite coordinates")
    return np.where(finite[:, None, None], keypoints, np.nan), finite, problems, missing


def borrow_missing_joints(keypoints_2d_px: np.ndarray) -> np.ndarray:
    """(N, 17, 2) -> (N, 17, 2): each non-finite joint at its nearest finite joint along the
    skeleton (ties: the neighbour first in JOINT_NEIGHBOURS), as the simulated detector of
    data.keypoint_scores places half of its occluded joints; a sample without any finite joint
    stays NaN."""
    out = np.where(np.all(np.isfinite(keypoints_2d_px), axis=2)[..., None], keypoints_2d_px, np.nan)
    for _ in range(NUM_JOINTS):  # each pass reaches one bone further
        present = np.isfinite(out[..., 0])
        if present.all():
            break
        before = out.copy()
        for joint, neighbours in enumerate(JOINT_NEIGHBOURS):
            for neighbour in reversed(neighbours):  # the first neighbour written last: it wins
                rows = ~present[:, joint] & present[:, neighbour]
                out[rows, joint] = before[rows, neighbour]
    return out


def _confidences(scores, count: int, missing: np.ndarray) -> np.ndarray:
    """(N, 17) float32 model scores: given (NaN -> 0) or 1, clipped to [0, 1], 0 at missing joints."""
    if scores is None:
        scores = np.ones((count, NUM_JOINTS))
    scores = np.asarray(scores, np.float64)
    if scores.shape != (count, NUM_JOINTS):
        raise ValueError(f"scores must be ({count}, {NUM_JOINTS}), got shape {scores.shape}")
    return np.where(missing, 0.0, np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)).astype(np.float32)


def _stack_rows(rows: list) -> tuple[np.ndarray, dict[int, str]]:
    """(N, 17, 2) float64 from N row arrays; rows that are not (17, 2) numbers become NaN, with a problem."""
    stacked = np.full((len(rows), NUM_JOINTS, 2), np.nan)
    problems = {}
    for i, row in enumerate(rows):
        try:
            row = np.asarray(row, np.float64)
        except (TypeError, ValueError):
            problems[i] = f"sample {i}: keypoints are not numbers"
            continue
        if row.shape != (NUM_JOINTS, 2):
            problems[i] = f"sample {i}: keypoints have shape {row.shape}, expected ({NUM_JOINTS}, 2)"
        else:
            stacked[i] = row
    return stacked, problems
