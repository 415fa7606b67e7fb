"""Inference with a trained checkpoint, without Ray: the Python API, `predict` and `export`.

    lifter = Lifter.from_checkpoint("runs/my-run")          # a checkpoint file, directory or run
    result = lifter.lift(keypoints_2d_px, focal_px, center_px, hypotheses=10)
    result.poses_3d        # (N, 17, 3) camera frame, mm, pelvis at 0
    result.hypotheses      # (N, 10, 17, 3) samples of the posterior, or None for hypotheses=1
    result.valid           # (N,) False where the input could not be used (rows are NaN)

- `lifter`: `Lifter` and `LiftResult` (2D keypoints or person crops -> 3D poses, mm);
- `formats`: reading users' keypoint files (COCO results, MMPose, OpenPose, VideoPose3D, .npz,
  .csv) into Human3.6M order, single images or sequences;
- `predict`: `predict_file`, a keypoint file and/or a folder of crops -> .npz (+ JSON, BVH);
- `outputs`: the viewer JSON, BVH and temporal smoothing;
- `export`: `export_lifter`, the 2D -> 3D path as TorchScript and ONNX files.
"""

import importlib

# Where each public name lives. Loaded on first use, so `hpe_ray.inference.formats` (numpy only)
# can be imported, by the CLI for instance, without loading torch.
_HOMES = {
    "export_lifter": "export", "KeypointInput": "formats", "coco_to_h36m": "formats", "read_keypoints": "formats",
    "Lifter": "lifter", "LiftResult": "lifter", "resize_crop": "lifter", "training_camera": "lifter",
    "PredictSummary": "predict", "predict_file": "predict",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'hpe_ray.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hpe_ray.inference.{_HOMES[name]}"), name)
