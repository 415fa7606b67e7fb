"""Human3.6M evaluation metrics, as in VideoPose3D and the protocols of the literature.

Each function takes numpy arrays or torch tensors (the backend follows the input type) with
any leading batch dims; errors are in the unit of the input (mm for Protocol 1/2).
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from hpe_ray.backend import array_module
from hpe_ray.skeleton import bone_lengths


def per_joint_error(pred, gt):
    """Euclidean error of each joint: (..., J, 3) -> (..., J)."""
    _check_same_shape(pred, gt, "per_joint_error")
    diff = pred - gt
    return (diff * diff).sum(-1) ** 0.5


def mpjpe(pred, gt):
    """Mean per-joint position error (Protocol 1 on root-relative poses): (..., J, 3) -> (...)."""
    return per_joint_error(pred, gt).mean(-1)


def n_mpjpe(pred, gt):
    """MPJPE after the least-squares scale s = <pred, gt> / <pred, pred> per pose: (..., J, 3) -> (...)."""
    _check_same_shape(pred, gt, "n_mpjpe")
    scale = (pred * gt).sum((-2, -1)) / (pred * pred).sum((-2, -1))
    return mpjpe(scale[..., None, None] * pred, gt)


def procrustes_align(pred, gt):
    """`pred` moved onto `gt` by the best similarity transform (scale, rotation, translation).

    (..., J, 3) -> (..., J, 3). Both are centred and scaled to unit norm; the rotation comes from
    the SVD of their cross-covariance, and a reflection is turned into a rotation by flipping
    the sign of the last singular vector (and value), as in VideoPose3D's p_mpjpe.
    """
    _check_same_shape(pred, gt, "procrustes_align")
    xp = array_module(pred)
    mean_gt, mean_pred = gt.mean(-2)[..., None, :], pred.mean(-2)[..., None, :]
    gt_centred, pred_centred = gt - mean_gt, pred - mean_pred
    norm_gt = ((gt_centred * gt_centred).sum((-2, -1)) ** 0.5)[..., None, None]
    norm_pred = ((pred_centred * pred_centred).sum((-2, -1)) ** 0.5)[..., None, None]
    gt_unit, pred_unit = gt_centred / norm_gt, pred_centred / norm_pred

    cross_covariance = gt_unit.swapaxes(-2, -1) @ pred_unit  # (..., 3, 3)
    u, singular_values, vt = xp.linalg.svd(cross_covariance)
    v = vt.swapaxes(-2, -1)
    reflection_sign = xp.sign(xp.linalg.det(v @ u.swapaxes(-2, -1)))
    # Multiplies only the last column of V and the last singular value by sign(det R).
    last_axis_sign = xp.concatenate(
        [xp.ones_like(singular_values[..., :2]), reflection_sign[..., None]], axis=-1)
    v = v * last_axis_sign[..., None, :]
    rotation = v @ u.swapaxes(-2, -1)
    scale = (singular_values * last_axis_sign).sum(-1)[..., None, None] * norm_gt / norm_pred
    translation = mean_gt - scale * (mean_pred @ rotation)
    return scale * (pred @ rotation) + translation


def pa_mpjpe(pred, gt):
    """Protocol 2: MPJPE after Procrustes alignment of each pose: (..., J, 3) -> (...)."""
    return mpjpe(procrustes_align(pred, gt), gt)


def best_of_k(errors):
    """Multi-hypothesis error: the smallest of K errors per frame, (N, K) -> (N,)."""
    return array_module(errors).amin(errors, -1)


# ---------------------------------------------------------------- hypotheses: spread and calibration
# Hypotheses (..., K, J, 3) are K sampled 3D poses of one input, root-relative, mm.

def hypothesis_spread(hypotheses):
    """How far the K hypotheses scatter: mean over joints of their RMS distance from the joint's
    centroid, (..., K, J, 3) -> (...). 0 for identical hypotheses."""
    centred = hypotheses - hypotheses.mean(-3)[..., None, :, :]
    return ((centred * centred).sum(-1).mean(-2) ** 0.5).mean(-1)


def bone_length_spread(hypotheses):
    """Std of each bone's length across the K hypotheses, averaged over the 16 bones:
    (..., K, 17, 3) -> (...). A hypothesis set of one body has 0."""
    lengths = bone_lengths(hypotheses)  # (..., K, 16)
    centred = lengths - lengths.mean(-2)[..., None, :]
    return ((centred * centred).mean(-2) ** 0.5).mean(-1)


def radius_coverage(hypotheses, gt, level: float = 0.9):
    """Share of joints whose true position lies within the radius around the hypotheses'
    centroid that holds `level` of the hypotheses: (..., K, J, 3), (..., J, 3) -> (...).

    The radius per joint is the ceil(level * K)-th smallest hypothesis distance from the
    centroid; a calibrated model covers about `level` of the joints. Joints that never move
    (the root, at zero in every hypothesis and in the truth) count as covered.
    """
    xp = array_module(hypotheses)
    centroid = hypotheses.mean(-3)
    spread = hypotheses - centroid[..., None, :, :]
    distances = (spread * spread).sum(-1) ** 0.5  # (..., K, J)
    k = distances.shape[-2]
    rank = max(1, int(np.ceil(level * k))) - 1
    radius = (xp.sort(distances, axis=-2) if xp is np else distances.sort(dim=-2).values)[..., rank, :]
    error = per_joint_error(centroid, gt)
    return (error <= radius + 1e-6).astype(np.float64).mean(-1) if xp is np else (error <= radius + 1e-6).double().mean(-1)


def spearman(x, y) -> float:
    """Spearman rank correlation of two (N,) sequences (ties get their mean rank), numpy."""
    def ranks(values) -> np.ndarray:
        values = _to_numpy(values).astype(np.float64)
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values[np.r_[False, np.diff(values[order]) == 0]] if len(values) else []):
            ranked[values == value] = ranked[values == value].mean()
        return ranked

    rx, ry = ranks(x), ranks(y)
    if len(rx) != len(ry) or len(rx) < 2:
        raise ValueError(f"spearman: need two sequences of the same length >= 2, got {len(rx)} and {len(ry)}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


# ---------------------------------------------------------------- per-sample errors of a prediction

# Name -> per-sample value (...) of a mean prediction (..., J, 3), K hypotheses (..., K, J, 3) and
# the truth (..., J, 3), all mm: the columns of `pose_errors`.
POSE_ERRORS = {
    "mpjpe": lambda mean, hypotheses, truth: mpjpe(mean, truth),
    "pa_mpjpe": lambda mean, hypotheses, truth: pa_mpjpe(mean, truth),
    "mpjpe_best_of_k": lambda mean, hypotheses, truth: best_of_k(mpjpe(hypotheses, _repeat(truth, hypotheses))),
    "pa_mpjpe_best_of_k": lambda mean, hypotheses, truth: best_of_k(pa_mpjpe(hypotheses, _repeat(truth, hypotheses))),
    "hypothesis_spread": lambda mean, hypotheses, truth: hypothesis_spread(hypotheses),
    "bone_length_spread": lambda mean, hypotheses, truth: bone_length_spread(hypotheses),
    "coverage_90": lambda mean, hypotheses, truth: radius_coverage(hypotheses, truth, 0.9),
}


def pose_errors(mean, hypotheses, truth, names=tuple(POSE_ERRORS)) -> dict:
    """{name: per-sample value (...)} of `POSE_ERRORS` for `names` only (the best-of-K
    Procrustes fits are the costly ones: validation asks for what it reports)."""
    return {name: POSE_ERRORS[name](mean, hypotheses, truth) for name in names}


def summarize_hypotheses(per_sample) -> dict[str, float]:
    """Over all samples, from per-sample "hypothesis_spread", "bone_length_spread",
    "coverage_90" and "mpjpe" (N,): mean spread and bone-length spread (mm), the share of
    joints inside the 90 % radius, and the Spearman correlation of each sample's spread with its
    error (does the model know when it is unsure?)."""
    return {"spread_mm": float(per_sample["hypothesis_spread"].mean()),
            "bone_length_spread_mm": float(per_sample["bone_length_spread"].mean()),
            "coverage_90": float(per_sample["coverage_90"].mean()),
            "spearman_spread_error": spearman(per_sample["hypothesis_spread"], per_sample["mpjpe"])}


def _repeat(truth, hypotheses):
    """truth (..., J, 3) broadcast to the hypotheses' (..., K, J, 3)."""
    xp = array_module(hypotheses)
    return xp.broadcast_to(truth[..., None, :, :], hypotheses.shape) if xp is np else truth[..., None, :, :].expand_as(hypotheses)


def per_action_table(errors, actions) -> dict[str, float]:
    """Mean error per action plus "Average", the unweighted mean over actions.

    errors (N,) per frame; actions (N,) labels. Frames of one label are pooled (frame-weighted),
    so the caller passes labels with sub-actions already merged ("Walking", not "Walking 1").
    """
    errors = _to_numpy(errors).reshape(-1)
    actions = [str(action) for action in actions]
    if len(actions) != len(errors) or len(errors) == 0:
        raise ValueError(f"hpe_ray.metrics.per_action_table: need one action per error and at least one "
                         f"frame, got {len(errors)} errors and {len(actions)} actions")
    errors_by_action: dict[str, list[float]] = defaultdict(list)
    for error, action in zip(errors.tolist(), actions):
        errors_by_action[action].append(error)
    table = {action: float(np.mean(errors_by_action[action])) for action in sorted(errors_by_action)}
    table["Average"] = float(np.mean(list(table.values())))
    return table


def _to_numpy(x) -> np.ndarray:
    if array_module(x) is np:
        return np.asarray(x, dtype=np.float64)
    return x.detach().cpu().double().numpy()


def _check_same_shape(pred, gt, name: str) -> None:
    if tuple(pred.shape) != tuple(gt.shape) or pred.shape[-1] != 3:
        raise ValueError(f"hpe_ray.metrics.{name}: pred and gt must both be (..., J, 3), "
                         f"got {tuple(pred.shape)} and {tuple(gt.shape)}")


def base_action(action: str) -> str:
    """Merge sub-actions: "Walking 1" -> "Walking" (Human3.6M sequence names carry a suffix)."""
    return re.sub(r"\s+\d+$", "", action)
