"""The one record every data source yields and every shard stores."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import numpy as np

from hpe_ray.camera import Intrinsics
from hpe_ray.skeleton import NUM_JOINTS


class BadSampleError(ValueError):
    """A sample or input file that cannot be used; the message names where it came from."""


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(*parts: object) -> str:
    """A WebDataset key from parts: no dots or slashes (WebDataset splits keys on dots)."""
    return "_".join(_KEY_UNSAFE.sub("-", str(p)) for p in parts)


@dataclass
class PoseSample:
    """One frame of one camera.

    keypoints_2d_px: (17, 2) float32, pixels of the full camera image (not the crop).
    pose_3d_cam_mm: (17, 3) float32, camera frame (x right, y down, z forward), mm, root kept.
    image: (H, W, 3) uint8 crop around the person, or None for poses-only data.
    crop_box_px: (4,) x0, y0, x1, y1 of the crop in full-image pixels (zeros without an image).
    """

    key: str
    keypoints_2d_px: np.ndarray
    pose_3d_cam_mm: np.ndarray
    intrinsics: Intrinsics
    subject: str
    action: str
    camera_id: str
    frame: int
    image: np.ndarray | None = None
    crop_box_px: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))

    def validate(self, origin: str) -> None:
        """Raise BadSampleError naming `origin` and the key when a field is unusable."""
        where = f"{origin}: sample {self.key!r}"
        if "." in self.key or "/" in self.key:
            raise BadSampleError(f"{where}: key must not contain '.' or '/'")
        for name, arr, last in (("keypoints_2d_px", self.keypoints_2d_px, 2),
                                ("pose_3d_cam_mm", self.pose_3d_cam_mm, 3)):
            arr = np.asarray(arr)
            if arr.shape != (NUM_JOINTS, last):
                raise BadSampleError(f"{where}: {name} has shape {arr.shape}, expected ({NUM_JOINTS}, {last})")
            if not np.all(np.isfinite(arr)):
                raise BadSampleError(f"{where}: {name} contains NaN or infinite coordinates")
        if np.any(np.asarray(self.pose_3d_cam_mm)[:, 2] <= 0):
            raise BadSampleError(f"{where}: pose_3d_cam_mm has joints behind the camera (z <= 0)")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise BadSampleError(f"{where}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")


@dataclass(frozen=True, eq=False)
class PoseArrays:
    """One split's poses. keypoints_2d_px (N, 17, 2) f32; pose_3d_cam_mm (N, 17, 3) f32 camera mm,
    root kept; intrinsics (N, 9) f32 (see Intrinsics.as_vector); key, subject, action,
    camera_id (N,) str; frame (N,) int64."""

    key: np.ndarray
    keypoints_2d_px: np.ndarray
    pose_3d_cam_mm: np.ndarray
    intrinsics: np.ndarray
    subject: np.ndarray
    action: np.ndarray
    camera_id: np.ndarray
    frame: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def from_samples(cls, samples: list[PoseSample]) -> PoseArrays:
        return cls(
            key=np.array([s.key for s in samples]),
            keypoints_2d_px=np.stack([s.keypoints_2d_px for s in samples]).astype(np.float32),
            pose_3d_cam_mm=np.stack([s.pose_3d_cam_mm for s in samples]).astype(np.float32),
            intrinsics=np.stack([s.intrinsics.as_vector() for s in samples]),
            subject=np.array([s.subject for s in samples]), action=np.array([s.action for s in samples]),
            camera_id=np.array([s.camera_id for s in samples]),
            frame=np.array([s.frame for s in samples], dtype=np.int64))

    @classmethod
    def concatenate(cls, parts: list[PoseArrays]) -> PoseArrays:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})
