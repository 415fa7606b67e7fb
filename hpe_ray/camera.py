"""Cameras: intrinsics and extrinsics, world <-> camera frames, projection with lens distortion.

Camera frame as in Human3.6M and OpenCV: x right, y down, z forward, millimetres. World frame
z up. The projection is the Brown model exactly as VideoPose3D writes it, so 2D keypoints we
compute match the public preprocessed files.

`project_to_pixels` and `pixels_to_normalized` also take torch tensors (the reprojection loss
calls them); the backend follows the type of the points.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from hpe_ray.backend import array_module, as_array_like


# eq=False: fields are arrays, so generated __eq__/__hash__ would be ambiguous or fail.
@dataclass(frozen=True, eq=False)
class Intrinsics:
    """Pinhole camera with Brown distortion.

    focal_px (2,) fx, fy; center_px (2,) cx, cy; radial (3,) k1 k2 k3; tangential (2,) p1 p2
    (zeros = no distortion); image_size (width, height) in pixels.
    """

    focal_px: np.ndarray
    center_px: np.ndarray
    radial: np.ndarray
    tangential: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        for name, size in (("focal_px", 2), ("center_px", 2), ("radial", 3), ("tangential", 2)):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (size,) or not np.all(np.isfinite(value)):
                raise ValueError(f"hpe_ray.camera.Intrinsics: {name} must be {size} finite numbers, "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        width, height = (int(v) for v in self.image_size)
        if width <= 0 or height <= 0:
            raise ValueError(f"hpe_ray.camera.Intrinsics: image_size must be positive (width, height), "
                             f"got {self.image_size!r}")
        object.__setattr__(self, "image_size", (width, height))

    def as_vector(self) -> np.ndarray:
        """(9,) float32 [fx, fy, cx, cy, k1, k2, k3, p1, p2], the form stored in shards."""
        return np.concatenate([self.focal_px, self.center_px, self.radial, self.tangential]).astype(np.float32)

    @classmethod
    def from_vector(cls, vector, image_size: tuple[int, int]) -> Intrinsics:
        """Inverse of `as_vector`: (9,) -> Intrinsics."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (9,):
            raise ValueError(f"hpe_ray.camera.Intrinsics.from_vector: expected shape (9,), got {vector.shape}")
        return cls(vector[0:2], vector[2:4], vector[4:7], vector[7:9], image_size)


@dataclass(frozen=True, eq=False)
class Extrinsics:
    """Rigid camera pose: X_cam = R (X_world - position).

    rotation_world_to_cam (3, 3); position_world_mm (3,) camera centre in the world frame.
    """

    rotation_world_to_cam: np.ndarray
    position_world_mm: np.ndarray

    def __post_init__(self) -> None:
        rotation = np.asarray(self.rotation_world_to_cam, dtype=np.float64)
        position = np.asarray(self.position_world_mm, dtype=np.float64)
        if rotation.shape != (3, 3) or not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-5):
            raise ValueError(f"hpe_ray.camera.Extrinsics: rotation_world_to_cam must be a (3, 3) rotation "
                             f"matrix, got {rotation!r}")
        if position.shape != (3,):
            raise ValueError(f"hpe_ray.camera.Extrinsics: position_world_mm must have shape (3,), "
                             f"got {position.shape}")
        object.__setattr__(self, "rotation_world_to_cam", rotation)
        object.__setattr__(self, "position_world_mm", position)

    @classmethod
    def from_quaternion(cls, orientation_wxyz, position_world_mm) -> Extrinsics:
        """From VideoPose3D's form: camera-to-world quaternion (w, x, y, z) and camera position."""
        return cls(quaternion_to_matrix(orientation_wxyz).T, position_world_mm)


H36M_CAMERA_IDS: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")

# Public calibration of the four Human3.6M cameras (VideoPose3D h36m_cameras_intrinsic_params).
H36M_INTRINSICS: dict[str, Intrinsics] = {
    "54138969": Intrinsics(
        focal_px=[1145.0494384765625, 1143.7811279296875],
        center_px=[512.54150390625, 515.4514770507812],
        radial=[-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043],
        tangential=[-0.0009756988729350269, -0.00142447161488235],
        image_size=(1000, 1002)),
    "55011271": Intrinsics(
        focal_px=[1149.6756591796875, 1147.5916748046875],
        center_px=[508.8486328125, 508.0649108886719],
        radial=[-0.1942136287689209, 0.2404085397720337, 0.006819975562393665],
        tangential=[-0.0016190266469493508, -0.0027408944442868233],
        image_size=(1000, 1000)),
    "58860488": Intrinsics(
        focal_px=[1149.1407470703125, 1148.7989501953125],
        center_px=[519.8158569335938, 501.40264892578125],
        radial=[-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427],
        tangential=[0.0014843869721516967, -0.0007599993259645998],
        image_size=(1000, 1000)),
    "60457274": Intrinsics(
        focal_px=[1145.5113525390625, 1144.77392578125],
        center_px=[514.9682006835938, 501.88201904296875],
        radial=[-0.198384091258049, 0.21832367777824402, -0.008947807364165783],
        tangential=[-0.0005872055771760643, -0.0018133620033040643],
        image_size=(1000, 1002)),
}


def quaternion_to_matrix(q_wxyz) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion (w, x, y, z); normalised first.

    VideoPose3D stores camera orientations as the camera-to-world rotation.
    """
    q = np.asarray(q_wxyz, dtype=np.float64)
    norm = np.linalg.norm(q)
    if q.shape != (4,) or not norm > 0:
        raise ValueError(f"hpe_ray.camera.quaternion_to_matrix: expected a non-zero (4,) quaternion, got {q!r}")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def world_to_camera(points_world_mm, extrinsics: Extrinsics) -> np.ndarray:
    """(..., 3) world mm -> (..., 3) camera frame mm."""
    return (np.asarray(points_world_mm) - extrinsics.position_world_mm) @ extrinsics.rotation_world_to_cam.T


def camera_to_world(points_cam_mm, extrinsics: Extrinsics) -> np.ndarray:
    """(..., 3) camera frame mm -> (..., 3) world mm."""
    return np.asarray(points_cam_mm) @ extrinsics.rotation_world_to_cam + extrinsics.position_world_mm


def look_at(position_world_mm, target_world_mm, up=(0.0, 0.0, 1.0)) -> Extrinsics:
    """A camera at `position_world_mm` whose optical axis (z) passes through `target_world_mm`.

    Camera y points down (away from `up`), x to the right, as in OpenCV.
    """
    position = np.asarray(position_world_mm, dtype=np.float64)
    forward = np.asarray(target_world_mm, dtype=np.float64) - position
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(forward) == 0 or np.linalg.norm(right) < 1e-9 * np.linalg.norm(forward):
        raise ValueError("hpe_ray.camera.look_at: target must differ from position and the viewing "
                         f"direction must not be parallel to up={tuple(up)}")
    forward /= np.linalg.norm(forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return Extrinsics(np.stack([right, down, forward]), position)


def project_to_pixels(points_cam_mm, intrinsics):
    """Project camera-frame points to full-image pixels: (..., J, 3) -> (..., J, 2).

    `intrinsics` is an Intrinsics, or the (9,) / per-sample (..., 9) vector of `as_vector`
    whose leading dims match those of the points before J. Brown model in VideoPose3D's order:
    xx = X/Z, r2 = |xx|^2, xxx = xx (1 + k1 r2 + k2 r2^2 + k3 r2^3 + p.xx) + p r2, uv = f xxx + c.
    Unlike VideoPose3D, xx is not clamped to [-1, 1]; points must lie in front of the camera.
    """
    xp = array_module(points_cam_mm)
    params = _intrinsics_vector(intrinsics, points_cam_mm)
    focal, center, radial_k, tangential_p = params[..., 0:2], params[..., 2:4], params[..., 4:7], params[..., 7:9]
    xx = points_cam_mm[..., :2] / points_cam_mm[..., 2:3]
    r2 = xp.sum(xx * xx, axis=-1, keepdims=True)
    radial = 1 + xp.sum(radial_k * xp.concatenate([r2, r2 ** 2, r2 ** 3], axis=-1), axis=-1, keepdims=True)
    tangential = xp.sum(tangential_p * xx, axis=-1, keepdims=True)
    distorted = xx * (radial + tangential) + tangential_p * r2
    return focal * distorted + center


def pixels_to_normalized(keypoints_2d_px, focal_px, center_px):
    """(u - c) / f: pixels (..., J, 2) -> normalised image coordinates (..., J, 2).

    focal_px, center_px: (2,) or per-sample (..., 2). Removing the intrinsics makes 2D inputs
    comparable across cameras. Lens distortion is ignored (not undone): for Human3.6M it moves
    points by a few pixels at most near the image edge, well below detector noise.
    """
    focal = _per_joint(as_array_like(focal_px, keypoints_2d_px))
    center = _per_joint(as_array_like(center_px, keypoints_2d_px))
    return (keypoints_2d_px - center) / focal


def normalized_to_pixels(keypoints_2d_normalized, focal_px, center_px):
    """Inverse of `pixels_to_normalized`: f x + c, (..., J, 2) -> (..., J, 2); no distortion."""
    focal = _per_joint(as_array_like(focal_px, keypoints_2d_normalized))
    center = _per_joint(as_array_like(center_px, keypoints_2d_normalized))
    return keypoints_2d_normalized * focal + center


def fit_to_keypoints(pose_3d_mm, keypoints_2d_normalized, perspective: bool = True, weights=None):
    """A root-relative pose moved onto the rays of its 2D keypoints, depths kept: (..., 17, 3).

    pose_3d_mm (..., 17, 3) camera-frame mm with the root (joint 0) at zero, e.g. a lifter's
    prediction; keypoints_2d_normalized (..., 17, 2) the 2D it was lifted from as (u - c) / f.
    Each joint j keeps its predicted depth z_j and goes to where its keypoint's ray a_j meets
    that depth, with the root at the depth Z0 that moves the x, y least (least squares, closed
    form): x_j = a_j (Z0 + z_j) - a_0 Z0. So the pose reprojects onto its keypoints: what the
    2D shows (a detector's wider hips, a higher head top) is not replaced by the training set's
    habits; the model decides depth and body size. perspective=False, for 2D of an unknown
    camera: weak perspective, x_j = (a_j - a_0) s, any (u - c) / f scale. weights (..., 17) in
    [0, 1], e.g. detector confidences: joint j's share in the fit and in its own x, y (0 keeps the
    prediction's, for a joint the detector missed); None: 1. A sample whose fit puts the root
    behind the camera, or whose keypoints all coincide, is returned unchanged.
    """
    xp = array_module(pose_3d_mm)
    rays = as_array_like(keypoints_2d_normalized, pose_3d_mm)
    weights = 1 + 0 * rays[..., :1] if weights is None else as_array_like(weights, pose_3d_mm)[..., None]
    offsets = rays - rays[..., :1, :]
    xy, depths = pose_3d_mm[..., :2], pose_3d_mm[..., 2:]
    parallax = rays * depths if perspective else 0 * rays
    # Z0 minimises sum_j w_j |offsets_j Z0 + parallax_j - xy_j|^2.
    spread = xp.sum(weights * offsets * offsets, axis=(-1, -2))
    root_depth = xp.sum(weights * offsets * (xy - parallax), axis=(-1, -2)) / xp.where(spread > 0, spread, 1)
    fitted_xy = weights * (offsets * root_depth[..., None, None] + parallax) + (1 - weights) * xy
    usable = (spread > 0) & (root_depth > 0)
    return xp.where(usable[..., None, None], xp.concatenate([fitted_xy, depths], axis=-1), pose_3d_mm)


def _intrinsics_vector(intrinsics, like):
    """Intrinsics or (..., 9) vector -> (..., 1, 9) in the backend of `like`, broadcasting over joints."""
    vector = as_array_like(intrinsics.as_vector() if isinstance(intrinsics, Intrinsics) else intrinsics, like)
    if vector.ndim == 0 or vector.shape[-1] != 9:
        raise ValueError(f"hpe_ray.camera: intrinsics vector must end in 9 values "
                         f"[fx, fy, cx, cy, k1, k2, k3, p1, p2], got shape {tuple(vector.shape)}")
    return _per_joint(vector)


def _per_joint(per_sample):
    """(..., C) -> (..., 1, C): one value per sample, shared by its J joints."""
    return per_sample[..., None, :]


def most_common_camera(intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(focal_px (2,), center_px (2,)) of the most frequent row of intrinsics (N, 9)."""
    rows = Counter(tuple(row) for row in np.asarray(intrinsics, np.float64)[:, :4].tolist())
    focal_and_center = np.asarray(rows.most_common(1)[0][0])
    return focal_and_center[:2], focal_and_center[2:]


# Field of view across the longer image side assumed when only the image size is known: a
# phone's main camera filming video (26 mm equivalent) sees about 65-70 degrees across its long
# side, a webcam 55-65, Human3.6M's cameras 47.
DEFAULT_FOV_DEG = 60.0


def intrinsics_from_image_size(width_px: float, height_px: float,
                               fov_deg: float = DEFAULT_FOV_DEG) -> tuple[np.ndarray, np.ndarray]:
    """(focal_px (2,), center_px (2,)) of a pinhole camera from its image size and field of view.

    fov_deg is across the longer side, so portrait and landscape video of one camera agree;
    square pixels, principal point at the image centre.
    >>> intrinsics_from_image_size(1920, 1080, 90.0)
    (array([960., 960.]), array([960., 540.]))
    """
    if not (width_px > 0 and height_px > 0):
        raise ValueError(f"image size must be positive, got {width_px} x {height_px} px")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be between 0 and 180 degrees, got {fov_deg}")
    focal = 0.5 * max(width_px, height_px) / np.tan(np.radians(fov_deg) / 2)
    return np.array([focal, focal]), np.array([width_px / 2, height_px / 2], dtype=np.float64)


def per_sample_pixels(value, count: int, name: str) -> np.ndarray:
    """One (2,) pixel pair for all samples, or one per sample: (2,) or (N, 2) -> (N, 2) float64.

    >>> per_sample_pixels([1000, 1000], 2, "focal_px")
    array([[1000., 1000.],
           [1000., 1000.]])
    """
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (2,):
        return np.broadcast_to(value, (count, 2)).copy()
    if value.shape != (count, 2):
        raise ValueError(f"{name} has shape {value.shape}, expected (2,) or ({count}, 2) pixels")
    return value
