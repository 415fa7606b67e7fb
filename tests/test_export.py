"""Export: TorchScript and ONNX files of the tiny model of test_predict.py agree with PyTorch
and with `Lifter` on real keypoints, for any batch size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from hpe_ray.data.stream import load_pose_arrays
from hpe_ray.inference import Lifter
from hpe_ray.inference.export import CHECK_TOLERANCE_STD, ExportableLifter, check_export, export_lifter, run_exported
from hpe_ray.training.checkpoint import load_checkpoint
from conftest import train_tiny_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("export")
    return out_dir, export_lifter(tiny_checkpoint, out_dir)


def _inputs(arrays, rows) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(np.ascontiguousarray(x[rows]), dtype=torch.float32)
                 for x in (arrays.keypoints_2d_px, arrays.intrinsics[:, 0:2], arrays.intrinsics[:, 2:4]))


def test_export_writes_both_formats_and_a_description(exported, tiny_checkpoint):
    out_dir, paths = exported
    assert [p.name for p in paths] == ["lifter.pt", "lifter.onnx", "lifter.json"]
    description = json.loads((out_dir / "lifter.json").read_text())
    assert description["mode_2d"] == "camera" and len(description["joint_names"]) == 17
    assert set(description["inputs"]) == {"keypoints_2d_px", "focal_px", "center_px"}
    for name in ("lifter.pt", "lifter.onnx"):
        assert description["check"][name]["max_abs_difference_std"] <= CHECK_TOLERANCE_STD
    graph = onnx.load(str(out_dir / "lifter.onnx")).graph
    assert [i.name for i in graph.input] == ["keypoints_2d_px", "focal_px", "center_px"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_exported_models_match_pytorch_and_the_lifter_on_real_keypoints(exported, tiny_checkpoint, tiny_dataset,
                                                                        batch):
    out_dir, _ = exported
    arrays = load_pose_arrays(tiny_dataset, "val")
    rows = np.arange(batch) % len(arrays)
    inputs = _inputs(arrays, rows)
    loaded = load_checkpoint(tiny_checkpoint)
    module = ExportableLifter(loaded.model, loaded.stats)
    differences = check_export(module, [out_dir / "lifter.pt", out_dir / "lifter.onnx"], inputs, loaded.stats)
    assert all(std <= CHECK_TOLERANCE_STD for _, std in differences.values())
    lifted = Lifter(loaded).lift(arrays.keypoints_2d_px[rows], arrays.intrinsics[rows, 0:2],
                                 arrays.intrinsics[rows, 2:4]).poses_3d
    for name in ("lifter.pt", "lifter.onnx"):
        output = run_exported(out_dir / name, inputs)
        assert output.shape == (batch, 17, 3) and np.all(output[:, 0] == 0)
        assert np.abs(output - lifted)[:, 1:].max() / loaded.stats.std_3d.min() <= CHECK_TOLERANCE_STD


def test_check_export_names_a_file_that_disagrees(exported, tiny_checkpoint):
    out_dir, _ = exported
    loaded = load_checkpoint(tiny_checkpoint)
    other = ExportableLifter(loaded.model, loaded.stats)
    with torch.no_grad():
        other.vae.decoders["pose3d"].out.bias.add_(0.01)  # 0.01 std off: far over the tolerance
    inputs = (torch.full((2, 17, 2), 500.0), torch.full((2, 2), 1000.0), torch.full((2, 2), 500.0))
    with pytest.raises(ValueError, match="lifter.onnx: exported model differs"):
        check_export(other, [out_dir / "lifter.onnx"], inputs, loaded.stats)


@pytest.mark.slow
@pytest.mark.parametrize("trained, exported_with, camera", [(0.0, None, False), (1.0, None, True), (1.0, 0.0, False)])
def test_pixel_mode_model_takes_the_camera_only_for_the_2d_fit(tiny_dataset, tmp_path, trained, exported_with, camera):
    """Without the fit the keypoints are the ONNX graph's only input; the fit puts the pose on the
    keypoints' rays, so it needs focal_px and center_px as well. export's fit_2d overrides the
    model's, and lifter.json records the strength baked in."""
    checkpoint = train_tiny_checkpoint(tiny_dataset, tmp_path / "checkpoint", steps=10, mode_2d="pixel",
                                       overrides={"model.fit_2d": trained})
    export_lifter(checkpoint, tmp_path / "export", formats=("onnx",), fit_2d=exported_with)
    graph = onnx.load(str(tmp_path / "export" / "lifter.onnx")).graph
    assert [i.name for i in graph.input] == (["keypoints_2d_px", "focal_px", "center_px"] if camera
                                             else ["keypoints_2d_px"])
    info = json.loads((tmp_path / "export" / "lifter.json").read_text())
    assert ("unused" in info["inputs"]["focal_px"]) is not camera
    assert info["fit_2d"] == (trained if exported_with is None else exported_with)


def test_export_rejects_unknown_formats(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="formats must be"):
        export_lifter(tiny_checkpoint, tmp_path, formats=("tflite",))
