"""Rotation matrices, the one place for them: about a named axis (FK, BVH channels, headings)
and about an arbitrary axis (virtual cameras). Right-handed, numpy or torch from the input."""

from __future__ import annotations

import numpy as np

from hpe_ray.backend import array_module

_AXIS_PLANE = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}


def axis_rotation(axis: str, angle_rad):
    """Right-handed rotation about the "x", "y" or "z" axis (case ignored): (...,) radians -> (..., 3, 3)."""
    xp = array_module(angle_rad)
    if xp is np:
        angle_rad = np.asarray(angle_rad, dtype=np.float64)
    i, j = _AXIS_PLANE[axis.lower()]
    cos, sin = xp.cos(angle_rad), xp.sin(angle_rad)
    one, zero = xp.ones_like(angle_rad), xp.zeros_like(angle_rad)
    entries = [[zero] * 3 for _ in range(3)]
    entries[3 - i - j][3 - i - j] = one
    entries[i][i] = entries[j][j] = cos
    entries[i][j], entries[j][i] = -sin, sin
    return xp.stack([xp.stack(row, -1) for row in entries], -2)


def rotation_about_axis(axis, angle_rad):
    """Rodrigues: unit axes (N, 3) and angles (N,) -> rotation matrices (N, 3, 3)."""
    xp = array_module(axis)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = xp.zeros_like(x)
    skew = xp.stack([xp.stack(row, -1) for row in ((zero, -z, y), (z, zero, -x), (-y, x, zero))], -2)
    sin, cos = xp.sin(angle_rad)[..., None, None], xp.cos(angle_rad)[..., None, None]
    eye = np.eye(3, dtype=skew.dtype) if xp is np else xp.eye(3, dtype=skew.dtype, device=skew.device)
    return eye + sin * skew + (1 - cos) * (skew @ skew)
