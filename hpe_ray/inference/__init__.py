"""Inference with a trained checkpoint, without Ray: the Python API, `predict` and `export`.

    lifter = Lifter.from_checkpoint("runs/my-run")          # a checkpoint file, directory or run
    result = lifter.lift(keypoints_2d_px, focal_px, center_px, hypotheses=10)
    result.poses_3d        # (N, 17, 3) camera frame, mm, pelvis at 0
    result.hypotheses      # (N, 10, 17, 3) samples of the posterior, or None for hypotheses=1
    result.valid           # (N,) False where the input could not be used (rows are NaN)

- `lifter`: `Lifter` and `LiftResult` (2D keypoints or person crops -> 3D poses, mm);
- `formats`: reading users' keypoint files (COCO results .json, .npz) into Human3.6M order;
- `predict`: `predict_file`, a keypoint file and/or a folder of crops -> one .npz of 3D poses;
- `export`: `export_lifter`, the 2D -> 3D path as TorchScript and ONNX files.
"""

from hpe_ray.inference.export import export_lifter
from hpe_ray.inference.formats import KeypointInput, coco_to_h36m, read_keypoints
from hpe_ray.inference.lifter import Lifter, LiftResult, resize_crop, training_camera
from hpe_ray.inference.predict import PredictSummary, predict_file

__all__ = [
    "KeypointInput", "LiftResult", "Lifter", "PredictSummary",
    "coco_to_h36m", "export_lifter", "predict_file", "read_keypoints", "resize_crop", "training_camera",
]
