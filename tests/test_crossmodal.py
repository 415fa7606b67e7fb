"""The cross-modal VAE from images: a tiny model trained by the training core (`fit`, no Ray) on
tiny rendered crops lifts the test subjects' crops better than the training mean pose; the
demo's cross-modal stage end to end (Ray Train, evaluation, example crops, predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_dataset
from hpe_ray.config import Config, load_config
from hpe_ray.evaluate import evaluate_checkpoint, mean_pose_tables
from hpe_ray.training.loop import EPOCH_DIR, fit

REPO = Path(__file__).resolve().parents[1]
# Two encoders into one latent space and one 3D decoder (rgb_to_rgb is covered by tests/test_train.py).
CROSSMODAL_PAIRS = {"rgb_to_pose3d": 1.0, "pose2d_to_pose3d": 1.0}


def _tiny_crossmodal_cfg(data_dir: Path, *, epochs: int, steps: int) -> Config:
    """32 px crops, a small latent and MLP; the ResNet-18 of the thesis as it is. An epoch of the
    tiny dataset (360 train samples, batch 32) is at most 11 steps."""
    return Config().with_overrides({
        "data.dir": str(data_dir), "data.image_size": 32, "data.loader_workers": 0, "data.shuffle_buffer": 360,
        "loss.pairs": CROSSMODAL_PAIRS, "model.latent_dim": 16, "model.hidden": 64, "model.blocks": 2,
        "loss.beta": {"kind": "linear", "max": 1e-3, "warmup_epochs": 1},
        "train.epochs": epochs, "train.steps_per_epoch": steps, "train.batch_size": 32, "train.lr": 1e-3,
        "train.eval_hypotheses": 2, "train.val_max_samples": 64, "train.tensorboard_images_every": 0})


@pytest.fixture
def one_thread():
    """Training tests share the machine: one torch thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_crossmodal_vae_lifts_crops_better_than_the_mean_pose(tmp_path, one_thread):
    data_dir = write_tiny_dataset(tmp_path / "data", image_size=32)
    # 20 x 11 steps, about 30 s on one core; measured: 138 mm from crops against 209 mm.
    cfg = _tiny_crossmodal_cfg(data_dir, epochs=20, steps=11)
    history = fit(cfg, tmp_path / "run")
    assert all(np.isfinite(h["kl"]) and h["kl"] < 100 for h in history)  # the bounded log-variance heads
    checkpoint = tmp_path / "run" / EPOCH_DIR.format(epoch=20)
    from_rgb = evaluate_checkpoint(checkpoint, data_dir, hypotheses=4, modality="rgb")
    mean_pose_mm = mean_pose_tables(data_dir)["MPJPE (P1)"]["Average"]
    rgb_mm = from_rgb.tables["MPJPE (P1)"]["Average"]
    assert rgb_mm < 0.8 * mean_pose_mm, (rgb_mm, mean_pose_mm)
    assert from_rgb.tables["MPJPE best of 4 (P1)"]["Average"] <= rgb_mm + 1.0


def test_demo_crossmodal_config_streams_crops_to_ray_train_workers():
    cfg = load_config(REPO / "configs" / "crossmodal-demo.yaml")
    encoders, decoders = cfg.modalities
    assert cfg.uses_images and encoders == {"rgb", "pose2d"} and "pose3d" in decoders
    assert cfg.data.image_size == 64 and cfg.scaling.workers == 2


def test_demo_crossmodal_stage_skips_a_dataset_without_crops(tmp_path, capsys):
    from hpe_ray.demo import crossmodal_stage

    data_dir = write_tiny_dataset(tmp_path / "data")
    assert crossmodal_stage(_tiny_crossmodal_cfg(data_dir, epochs=1, steps=1), data_dir, tmp_path, "x") is None
    assert "skipping the cross-modal stage" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_crossmodal_stage_trains_evaluates_and_prints_a_predict_command(tmp_path, capsys, one_thread):
    import ray

    from hpe_ray.demo import EXAMPLE_CROPS, crossmodal_stage
    from hpe_ray.inference import predict_file

    data_dir = write_tiny_dataset(tmp_path / "data", image_size=32)
    cfg = _tiny_crossmodal_cfg(data_dir, epochs=1, steps=3).with_overrides({"scaling.workers": 2})
    ray.init(num_cpus=2, address="local")
    try:
        checkpoint = crossmodal_stage(cfg, data_dir, tmp_path / "runs", "demo", hypotheses=3)
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert checkpoint is not None and checkpoint.is_file()
    for row in ("| RGB crop -> 3D |", "| 2D pose -> 3D |", "| training mean pose (no input) |"):
        assert row in out
    assert "MPJPE best of 3 (P1)" in out
    crops = sorted((tmp_path / "runs" / "demo" / "crops").glob("*.png"))
    assert len(crops) == EXAMPLE_CROPS
    command = next(line for line in out.splitlines() if "hpe-ray predict" in line)
    assert f"--checkpoint {checkpoint} --images {crops[0].parent}" in command
    summary = predict_file(checkpoint, None, tmp_path / "poses.npz", hypotheses=3, images_dir=crops[0].parent)
    assert summary.image_lifted == EXAMPLE_CROPS
    with np.load(tmp_path / "poses.npz") as poses:
        assert poses["poses_3d_rgb"].shape == (EXAMPLE_CROPS, 17, 3) and np.isfinite(poses["poses_3d_rgb"]).all()
