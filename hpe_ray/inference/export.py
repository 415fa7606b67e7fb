"""Export the 2D -> 3D lifter to TorchScript and ONNX, normalisation included.

The exported model takes what a detector gives and returns what a user wants, so nothing of
hpe-ray is needed to run it:

    inputs   keypoints_2d_px (B, 17, 2) float32  full-image pixels, Human3.6M joint order
             focal_px        (B, 2)     float32  fx, fy in pixels   } absent from the ONNX graph
             center_px       (B, 2)     float32  cx, cy in pixels   } of a pixel-mode model built
                                                                      without model.fit_2d
             keypoint_scores (B, 17)    float32  detector confidence per joint in [0, 1]; models
                                                 trained with data.keypoint_scores only (0 for a
                                                 missing joint, whose x, y must still be finite)
    output   pose_3d_cam_mm  (B, 17, 3) float32  root-relative camera frame, mm, pelvis at 0

It is the deterministic mean decoding (latent mean, no sampling), with the checkpoint's
NormStats baked in as constants. B is dynamic in both formats. `lifter.json` beside the files
records the inputs, units, joint order, normalisation mode and the export check.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpe_ray.camera import fit_to_keypoints, pixels_to_normalized
from hpe_ray.data.batch import scored_pose_2d
from hpe_ray.dependencies import import_extra
from hpe_ray.models.predict import fit_weights
from hpe_ray.normalization import NormStats, denormalize_3d, normalize_2d
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS
from hpe_ray.training.checkpoint import LoadedCheckpoint, load_checkpoint

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "lifter.pt", "onnx": "lifter.onnx"}
INPUT_NAMES = ("keypoints_2d_px", "focal_px", "center_px", "keypoint_scores")  # the last: scored models only
OUTPUT_NAME = "pose_3d_cam_mm"
ONNX_OPSET = 17
# Max difference allowed between an exported model and PyTorch, in standard deviations of each
# output coordinate (NormStats.std_3d): the network's own output units. float32 rounding grows
# with the size of the values, so a fixed tolerance in mm would depend on the pose's size.
CHECK_TOLERANCE_STD = 1e-4
EXAMPLE_DEPTH_MM = 5000.0


class ExportableLifter(nn.Module):
    """Pixels in, millimetres out: normalise the 2D keypoints, encode, decode the latent mean,
    denormalise, and for a model built with fit_2d > 0 move the pose towards the keypoints' rays. The same
    functions as `predict`, so exported and Python predictions agree. A model trained with
    data.keypoint_scores (`scored`) also takes keypoint_scores (B, 17)."""

    def __init__(self, vae: nn.Module, stats: NormStats):
        super().__init__()
        self.vae = vae.eval()
        self.stats = stats
        self.scored = bool(getattr(vae, "keypoint_scores", False))

    def forward(self, keypoints_2d_px: torch.Tensor, focal_px: torch.Tensor, center_px: torch.Tensor,
                keypoint_scores: torch.Tensor | None = None) -> torch.Tensor:
        pose_2d = normalize_2d(keypoints_2d_px, focal_px, center_px, self.stats)
        if self.scored and keypoint_scores is not None:
            pose_2d = scored_pose_2d(pose_2d, keypoint_scores.clamp(0.0, 1.0))
        mu, _ = self.vae.encode("pose2d", pose_2d)
        pose_3d_mm = denormalize_3d(self.vae.decode("pose3d", mu), self.stats)
        if self.vae.fit_2d > 0:
            rays = pixels_to_normalized(keypoints_2d_px, focal_px, center_px)
            weights = fit_weights(self.vae.fit_2d, keypoint_scores if self.scored else None, rays)
            pose_3d_mm = fit_to_keypoints(pose_3d_mm, rays, weights=weights)
        return pose_3d_mm


def example_inputs(stats: NormStats, batch: int = 64, seed: int = 0, scores: bool = False) -> tuple[torch.Tensor, ...]:
    """Plausible inputs (keypoints_2d_px, focal_px, center_px): 3D poses drawn from the training
    statistics, 5 m in front of a 1000 px focal length camera centred at (500, 500) px; with
    scores, also keypoint_scores (B, 17) uniform in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, NUM_JOINTS - 1, 3, generator=generator, dtype=torch.float64)
    poses_mm = denormalize_3d(0.5 * noise, stats) + torch.tensor([0.0, 0.0, EXAMPLE_DEPTH_MM], dtype=torch.float64)
    focal_px = torch.full((batch, 2), 1000.0)
    center_px = torch.full((batch, 2), 500.0)
    keypoints_2d_px = (poses_mm[..., :2] / poses_mm[..., 2:] * 1000.0 + 500.0).float()
    if scores:
        return keypoints_2d_px, focal_px, center_px, torch.rand(batch, NUM_JOINTS, generator=generator)
    return keypoints_2d_px, focal_px, center_px


def export_lifter(checkpoint, out_dir: str | Path, formats: Sequence[str] = FORMATS,
                  fit_2d: float | None = None) -> list[Path]:
    """Export a checkpoint's 2D -> 3D path to out_dir; returns the files written (the last is lifter.json).
    fit_2d: the strength of the fit to the 2D baked into the export (None: the model's model.fit_2d).

    Each export is checked against PyTorch (`check_export`); a difference over
    CHECK_TOLERANCE_STD raises ValueError before lifter.json is written.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    if "onnx" in formats:  # before any file is written: ONNX export and its check need both
        for module in ("onnx", "onnxruntime"):
            import_extra(module, "export", "exporting to ONNX")
    loaded = load_checkpoint(checkpoint, fit_2d=fit_2d)
    if "pose2d" not in loaded.model.encoders or "pose3d" not in loaded.model.decoders:
        raise ValueError(f"{loaded.path}: no 2D -> 3D path to export (encoders {sorted(loaded.model.encoders)}, "
                         f"decoders {sorted(loaded.model.decoders)})")
    module = ExportableLifter(loaded.model, loaded.stats).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(loaded.stats, scores=module.scored)
    paths = []
    for fmt in dict.fromkeys(formats):
        path = out_dir / FILE_NAMES[fmt]
        (export_torchscript if fmt == "torchscript" else export_onnx)(module, inputs, path)
        paths.append(path)
    differences = check_export(module, paths, example_inputs(loaded.stats, batch=257, seed=1, scores=module.scored),
                               loaded.stats)
    described_inputs = {"keypoints_2d_px": "(B, 17, 2) float32, full-image pixels",
                        "focal_px": "(B, 2) float32, fx fy pixels" + _unused_note(loaded),
                        "center_px": "(B, 2) float32, cx cy pixels" + _unused_note(loaded)}
    if module.scored:
        described_inputs["keypoint_scores"] = ("(B, 17) float32, detector confidence per joint in [0, 1]; 0 for a "
                                               "missing joint, whose x, y must still be finite (e.g. a neighbour's)")
    description = {
        "checkpoint": str(loaded.path), "epoch": loaded.epoch, "mode_2d": loaded.stats.mode_2d,
        "fit_2d": loaded.model.fit_2d,
        "inputs": described_inputs,
        "output": {OUTPUT_NAME: "(B, 17, 3) float32, root-relative camera frame (x right, y down, "
                                "z forward), mm, joint 0 (pelvis) at zero"},
        "decoding": "deterministic: 3D decoder applied to the latent mean of the 2D encoder",
        "joint_names": list(JOINT_NAMES), "files": {p.name: fmt for p, fmt in zip(paths, dict.fromkeys(formats))},
        "check": {p.name: {"max_abs_difference_mm": mm, "max_abs_difference_std": std}
                  for p, (mm, std) in differences.items()},
    }
    info_path = out_dir / "lifter.json"
    info_path.write_text(json.dumps(description, indent=1) + "\n")
    return [*paths, info_path]


def export_torchscript(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace (the normalisation mode is fixed per model, so tracing loses no branch) and save."""
    with torch.no_grad(), _quiet_torch_export():
        traced = torch.jit.trace(module, inputs, check_trace=False)
    traced.save(str(path))


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """The TorchScript-based exporter (dynamo=False, deprecated since torch 2.9): the torch.export
    one needs onnxscript, which is not a dependency. Inputs a pixel-mode model does not use are
    dropped from the graph."""
    import_extra("onnx", "export", "exporting to ONNX")  # torch writes the file through it
    batch_axis = {0: "batch"}
    with torch.no_grad(), _quiet_torch_export():
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=list(INPUT_NAMES[:len(inputs)]), output_names=[OUTPUT_NAME],
                          dynamic_axes={name: batch_axis for name in (*INPUT_NAMES[:len(inputs)], OUTPUT_NAME)})


def run_exported(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """Run a lifter.pt (TorchScript) or lifter.onnx (ONNX Runtime, CPU) on inputs; (B, 17, 3) mm."""
    if path.suffix == ".onnx":
        onnxruntime = import_extra("onnxruntime", "export", "running an ONNX export")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = dict(zip(INPUT_NAMES, (x.numpy() for x in inputs)))
        return session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
    with torch.no_grad(), _quiet_torch_export():
        return torch.jit.load(str(path)).eval()(*inputs).numpy()


def check_export(module: nn.Module, paths: Sequence[Path], inputs: tuple[torch.Tensor, ...], stats: NormStats,
                 tolerance_std: float = CHECK_TOLERANCE_STD) -> dict[Path, tuple[float, float]]:
    """{file: (max absolute difference in mm, the same in std_3d units)} of each exported file
    against `module` on `inputs`; ValueError naming the file when one exceeds tolerance_std."""
    with torch.no_grad():
        expected = module(*inputs).numpy()
    differences = {}
    for path in paths:
        difference_mm = np.abs(run_exported(Path(path), inputs) - expected)
        difference_std = float((difference_mm[:, 1:] / stats.std_3d).max())  # the root is 0 in both
        if not difference_std <= tolerance_std:
            raise ValueError(f"{path}: exported model differs from PyTorch by {difference_std:.3g} standard "
                             f"deviations ({difference_mm.max():.3g} mm); tolerance {tolerance_std:g}")
        differences[Path(path)] = (float(difference_mm.max()), difference_std)
    return differences


@contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Silence warnings that say nothing about this model: TracerWarnings flag the input-shape
    checks and the baked-in NormStats, constant per model as tracing assumes; the deprecation
    notices of TorchScript and of the TorchScript-based ONNX exporter are known and the chosen
    formats are deliberate (see the module docstring)."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        yield


def _unused_note(loaded: LoadedCheckpoint) -> str:
    # The fit to the 2D puts the pose on the keypoints' rays, so it needs the camera in any mode.
    unused = loaded.stats.mode_2d == "pixel" and loaded.model.fit_2d == 0
    return "; unused by this pixel-mode model without the 2D fit (absent from the ONNX graph)" if unused else ""
