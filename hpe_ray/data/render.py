"""CPU renderer: a posed body as shaded capsules, drawn straight into a square crop.

It is not a photograph; it carries what an image encoder needs to recover the pose. Limbs are
tapered capsules whose width in pixels follows their depth. A per-pixel depth test (drawing
far parts first) lets nearer limbs hide farther ones. Shading comes from each capsule's
surface normal under a random light, and brightens in front of the pelvis and darkens behind
it, so which end of a limb is nearer the camera shows. Left parts are cool
colours and right parts warm, so a network can tell them apart. Backgrounds are random
gradients, soft blotches, stripes and a checkered floor. Only the crop's pixels are computed,
in vectorised numpy (float32).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from hpe_ray.camera import Intrinsics, project_to_pixels
from hpe_ray.skeleton import NUM_JOINTS

# Body parts: (start joint, end joint, radius at start mm, radius at end mm, colour).
_LIMBS: tuple[tuple[int, int, float, float, str], ...] = (
    (0, 1, 85, 75, "right_hip"), (1, 2, 78, 56, "right_thigh"), (2, 3, 54, 42, "right_shin"),
    (0, 4, 85, 75, "left_hip"), (4, 5, 78, 56, "left_thigh"), (5, 6, 54, 42, "left_shin"),
    (0, 7, 120, 115, "torso"), (7, 8, 115, 100, "torso"), (8, 9, 50, 45, "skin"),
    (8, 11, 70, 55, "left_shoulder"), (11, 12, 48, 40, "left_upper_arm"), (12, 13, 38, 30, "left_forearm"),
    (8, 14, 70, 55, "right_shoulder"), (14, 15, 48, 40, "right_upper_arm"), (15, 16, 38, 30, "right_forearm"),
)
# Hands and feet continue the forearm and shin: (joint, joint before it, length mm, radii mm, colour).
_EXTREMITIES: tuple[tuple[int, int, float, float, float, str], ...] = (
    (13, 12, 80, 36, 30, "left_hand"), (16, 15, 80, 36, 30, "right_hand"),
    (6, 5, 60, 46, 42, "left_foot"), (3, 2, 60, 46, 42, "right_foot"),
)
HEAD_RADIUS_MM = 100.0  # a sphere centred between the neck/nose and head-top joints
MAX_OUT_SIZE = 4096
_PIXEL_CENTRES = np.arange(MAX_OUT_SIZE, dtype=np.float32) + np.float32(0.5)

_COLOURS: dict[str, tuple[float, float, float]] = {
    "torso": (0.55, 0.58, 0.50), "skin": (0.92, 0.76, 0.62),
    "left_hip": (0.30, 0.38, 0.75), "left_thigh": (0.22, 0.32, 0.88), "left_shin": (0.20, 0.62, 0.85),
    "left_foot": (0.15, 0.30, 0.55), "left_shoulder": (0.35, 0.42, 0.80), "left_upper_arm": (0.40, 0.30, 0.92),
    "left_forearm": (0.30, 0.75, 0.95), "left_hand": (0.60, 0.82, 1.00),
    "right_hip": (0.75, 0.38, 0.30), "right_thigh": (0.88, 0.30, 0.22), "right_shin": (0.90, 0.62, 0.15),
    "right_foot": (0.55, 0.28, 0.12), "right_shoulder": (0.80, 0.40, 0.32), "right_upper_arm": (0.92, 0.25, 0.40),
    "right_forearm": (0.95, 0.70, 0.28), "right_hand": (1.00, 0.80, 0.55),
}


class Capsule(NamedTuple):
    """One body part ready to draw, in crop pixels: `box` (x0, y0, x1, y1) the pixels it may
    touch; centre line from `start` along `axis`; radius (px) and depth (mm) at the start and
    their change to the end; mean radius (mm); colour (3, 1, 1) float32 in [0, 1]."""

    box: tuple[int, int, int, int]
    start: tuple[float, float]
    axis: tuple[float, float]
    radius_px: tuple[float, float]
    depth_mm: tuple[float, float]
    radius_mm: float
    rgb: np.ndarray


def crop_box_around(keypoints_2d_px: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """(17, 2) pixels -> (4,) float32 x0, y0, x1, y1: the square around the joints' bounding box,
    widened by `margin` times its longer side on every side (room for the head, hands, feet)."""
    keypoints = np.asarray(keypoints_2d_px, dtype=np.float64)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2 or not np.all(np.isfinite(keypoints)):
        raise ValueError(f"hpe_ray.data.render.crop_box_around: expected finite (J, 2) keypoints, "
                         f"got shape {keypoints.shape}")
    low, high = keypoints.min(axis=0), keypoints.max(axis=0)
    half_side = max((high - low).max() * (0.5 + margin), 8.0)  # a single point still gets a box
    centre = (low + high) / 2
    return np.concatenate([centre - half_side, centre + half_side]).astype(np.float32)


def render_person(pose_3d_cam_mm: np.ndarray, intrinsics: Intrinsics, crop_box_px: np.ndarray,
                  out_size: int, rng: np.random.Generator) -> np.ndarray:
    """Render the body into the crop: -> (out_size, out_size, 3) uint8.

    pose_3d_cam_mm: (17, 3) camera frame; crop_box_px: (4,) x0, y0, x1, y1 in full-image
    pixels. `rng` draws the background, light and colour jitter (in that order).
    """
    pose = np.asarray(pose_3d_cam_mm, dtype=np.float64)
    box = np.asarray(crop_box_px, dtype=np.float64)
    if pose.shape != (NUM_JOINTS, 3) or not np.all(np.isfinite(pose)) or np.any(pose[:, 2] <= 0):
        raise ValueError(f"hpe_ray.data.render.render_person: pose must be finite (17, 3) in front of the "
                         f"camera (z > 0), got shape {pose.shape}")
    if box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"hpe_ray.data.render.render_person: crop box must be x0, y0, x1, y1 with x1 > x0 "
                         f"and y1 > y0, got {box}")
    if not 1 <= out_size <= MAX_OUT_SIZE:
        raise ValueError(f"hpe_ray.data.render.render_person: out_size must be 1..{MAX_OUT_SIZE}, got {out_size}")
    image = _background(rng, out_size)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-1.0, -0.2), -1.0])
    light = tuple((light / np.linalg.norm(light)).tolist())
    ambient = rng.uniform(0.3, 0.45)
    depth_buffer = np.full((out_size, out_size), np.inf, dtype=np.float32)
    for capsule in _capsules(pose, intrinsics, box, out_size, rng):
        _draw_capsule(image, depth_buffer, capsule, light, ambient, reference_depth_mm=float(pose[0, 2]))
    return np.ascontiguousarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def _body_parts(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Camera-frame ends (P, 2, 3) mm, radii (P, 2) mm, colour names of every body part."""
    ends = [pose[[a, b]] for a, b, *_ in _LIMBS]
    radii = [(ra, rb) for _, _, ra, rb, _ in _LIMBS]
    names = [name for *_, name in _LIMBS]
    for joint, before, length, ra, rb, name in _EXTREMITIES:
        direction = pose[joint] - pose[before]
        direction /= max(np.linalg.norm(direction), 1e-6)  # a zero-length bone leaves a ball at the joint
        ends.append(np.stack([pose[joint], pose[joint] + direction * length]))
        radii.append((ra, rb))
        names.append(name)
    head_centre = (pose[9] + pose[10]) / 2
    ends.append(np.stack([head_centre, head_centre]))
    radii.append((HEAD_RADIUS_MM, HEAD_RADIUS_MM))
    names.append("skin")
    return np.stack(ends), np.array(radii), names


def _capsules(pose: np.ndarray, intrinsics: Intrinsics, box: np.ndarray, out_size: int,
              rng: np.random.Generator) -> list[Capsule]:
    """Every body part as a Capsule with jittered colour, farthest first.

    Everything per part is prepared here at once; plain floats keep the drawing in float32.
    """
    ends_mm, radius_mm, names = _body_parts(pose)
    scale = out_size / (box[2:] - box[:2])  # crop pixels per image pixel, (2,)
    ends_px = (project_to_pixels(ends_mm, intrinsics) - box[:2]) * scale  # (P, 2, 2)
    # Radius by the pinhole model at each end's depth; distortion only bends the centre line.
    radius_px = radius_mm * intrinsics.focal_px.mean() * scale.mean() / ends_mm[..., 2]
    reach = radius_px.max(axis=1, keepdims=True) + 1
    boxes = np.concatenate([np.floor(ends_px.min(axis=1) - reach), np.ceil(ends_px.max(axis=1) + reach)], axis=1)
    boxes = np.clip(boxes, 0, out_size).astype(int)
    depth_mm = ends_mm[..., 2]
    rgb = np.array([_COLOURS[name] for name in names]) * rng.uniform(0.8, 1.15)
    rgb = np.clip(rgb + rng.normal(0, 0.04, size=rgb.shape), 0, 1).astype(np.float32)

    def start_and_change(values: np.ndarray) -> list:  # (P, 2) -> [[at start, end - start], ...]
        return np.stack([values[:, 0], values[:, 1] - values[:, 0]], axis=1).tolist()

    capsules = [Capsule(*fields) for fields in zip(
        boxes.tolist(), ends_px[:, 0].tolist(), (ends_px[:, 1] - ends_px[:, 0]).tolist(),
        start_and_change(radius_px), start_and_change(depth_mm), radius_mm.mean(axis=1).tolist(),
        rgb[:, :, None, None])]
    return [capsules[i] for i in np.argsort(-depth_mm.mean(axis=1), kind="stable")]


def _draw_capsule(image: np.ndarray, depth_buffer: np.ndarray, capsule: Capsule, light: tuple[float, float, float],
                  ambient: float, reference_depth_mm: float) -> None:
    """Depth-tested, anti-aliased, shaded capsule into image (3, S, S) float32, in place.

    Only its box is computed; the call count is kept low because on small boxes numpy's
    per-call overhead, not the pixels, is the cost.
    """
    x0, y0, x1, y1 = capsule.box
    if x1 <= x0 or y1 <= y0:
        return
    (start_x, start_y), (axis_x, axis_y) = capsule.start, capsule.axis
    x = _PIXEL_CENTRES[x0:x1] - start_x  # (w,)
    y = _PIXEL_CENTRES[y0:y1, None] - start_y  # (h, 1)
    length2 = axis_x * axis_x + axis_y * axis_y
    if length2 > 1e-6:
        along = np.clip((x * axis_x + y * axis_y) * (1 / length2), 0, 1)  # nearest point of the centre line
    else:  # a sphere
        along = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    dx, dy = x - along * axis_x, y - along * axis_y
    dist2 = dx * dx + dy * dy
    radius = capsule.radius_px[0] + along * capsule.radius_px[1]
    coverage = np.clip(radius - np.sqrt(dist2) + 0.5, 0, 1)  # one pixel of soft edge
    inv_radius = 1 / radius
    # Surface normal (dx / r, dy / r, -nz) of the swept sphere; -z faces the camera.
    nz = np.sqrt(np.maximum(1 - dist2 * inv_radius * inv_radius, 0))
    depth = capsule.depth_mm[0] + along * capsule.depth_mm[1] - nz * capsule.radius_mm
    lambert = np.maximum((dx * light[0] + dy * light[1]) * inv_radius - nz * light[2], 0)
    # Brighter in front of the pelvis, darker behind it: x1.3 at 480 mm nearer, x0.7 at 480 mm farther.
    fog = np.clip((reference_depth_mm - depth) * (0.5 / 800) + 1, 0.7, 1.3)
    shade = (ambient + (1 - ambient) * lambert) * fog
    visible = (coverage > 0) & (depth < depth_buffer[y0:y1, x0:x1])
    alpha = np.where(visible, coverage, 0)
    region = image[:, y0:y1, x0:x1]
    region += alpha * (shade * capsule.rgb - region)
    np.copyto(depth_buffer[y0:y1, x0:x1], depth, where=visible & (coverage >= 0.5))


def _soft_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth blotches: a random (cells, cells) grid upsampled bilinearly."""
    grid = rng.normal(0, 1, size=(cells, cells)).astype(np.float32)
    position = (np.arange(size, dtype=np.float32) + 0.5) / size * (cells - 1)
    lower = np.minimum(np.floor(position), cells - 2)
    index, frac = lower.astype(int), position - lower
    # Columns of the small grid first, then rows: indexing axis 0 last keeps the result C-ordered
    # (everything computed from it inherits its layout). Elementwise, as BLAS threads stall on a busy machine.
    cols = grid[:, index] * (1 - frac) + grid[:, index + 1] * frac  # (cells, size)
    return cols[index] * (1 - frac[:, None]) + cols[index + 1] * frac[:, None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) float32, channels first (numpy broadcasts fast over contiguous rows):
    a wall (gradient, blotches, maybe stripes) above a checkered floor seen in perspective
    below a random horizon, with sensor grain."""
    rows = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None]  # (S, 1), 0 top .. 1 bottom
    cols = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :] - 0.5  # (1, S)
    top, bottom = rng.uniform(0.1, 0.9, size=(2, 3, 1, 1)).astype(np.float32)
    wall = 0.1 * _soft_noise(rng, size, int(rng.integers(3, 9)))
    if rng.random() < 0.5:
        wall += 0.06 * np.sign(np.sin(2 * np.pi * rng.uniform(3, 12) * cols + rng.uniform(0, 2 * np.pi)))
    image = top + (bottom - top) * rows + wall
    horizon = int(rng.uniform(0.45, 0.9) * size)
    distance = 1 / (rows[horizon:] - np.float32(horizon / size))  # rows near the horizon are far away
    tiles = rng.uniform(0.5, 1.5)
    checker = (np.floor(cols * distance * (tiles * 5)) + np.floor(distance * tiles)).astype(np.int32) & 1
    contrast = np.minimum(np.float32(1.2) / distance, 0.3)  # fades where tiles get smaller than pixels
    floor_rgb = rng.uniform(0.15, 0.85, size=(3, 1, 1)).astype(np.float32)
    image[:, horizon:] = floor_rgb * (1 + contrast * (checker.astype(np.float32) - 0.5))
    row, col = rng.integers(0, _GRAIN_SHIFT, size=2)
    image += _sensor_grain(size)[:, row:row + size, col:col + size]
    return image


_GRAIN_SHIFT = 32


@functools.cache
def _sensor_grain(size: int) -> np.ndarray:
    """(1, size + 32, size + 32) fixed grey pixel noise; each image adds a randomly shifted
    window. Far cheaper than fresh noise (small enough to stay in cache) and as varied for a network."""
    grain = np.random.default_rng(0).random(size=(1, size + _GRAIN_SHIFT, size + _GRAIN_SHIFT), dtype=np.float32)
    return (grain - np.float32(0.5)) * np.float32(0.06)
