"""Shared test fixtures: a tiny synthetic dataset, a tiny lifting model trained by the training
core in this process (no Ray), and random camera-frame poses for hand-made batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpe_ray.config import Config
from hpe_ray.data.shards import write_shards
from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits
from hpe_ray.training.checkpoint import CHECKPOINT_FILE
from hpe_ray.training.loop import EPOCH_DIR, fit

TINY_ACTIONS = ("Walking", "Sitting", "Greeting")
H36M_INTRINSICS_VECTOR = [1145.0, 1144.0, 512.5, 515.5, -0.2, 0.25, -0.003, -0.001, -0.0014]


def camera_poses_mm(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 17, 3) camera-frame mm: random joints around a root 4-5 m in front of the camera,
    thorax above the pelvis (camera y points down), right hip on the camera's left (a person
    facing the camera)."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randn(n, 17, 3, generator=g, dtype=torch.float64) * 200
    body[:, 0] = 0
    body[:, 8] = torch.tensor([0.0, -500.0, 0.0], dtype=torch.float64)
    body[:, 1] = torch.tensor([-100.0, 0.0, 0.0], dtype=torch.float64)
    body[:, 4] = torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64)
    root = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) * 400 - 200,
                        torch.rand(n, generator=g, dtype=torch.float64) * 200 - 100,
                        4000 + torch.rand(n, generator=g, dtype=torch.float64) * 1000], -1)
    return (body + root[:, None]).float()


def h36m_intrinsics(n: int) -> torch.Tensor:
    """(n, 9) intrinsics vectors of one Human3.6M camera (distortion included)."""
    return torch.tensor(H36M_INTRINSICS_VECTOR).expand(n, 9).clone()


def write_tiny_dataset(out_dir: Path, image_size: int | None = None) -> Path:
    """Synthetic shards: 3 actions, one 6-frame sequence each, 4 cameras (360 train samples)."""
    spec = SyntheticSpec(actions=TINY_ACTIONS, sequences_per_action=1, frames_per_sequence=6,
                         image_size=image_size)
    write_shards(synthetic_splits(spec), out_dir, source="synthetic", settings={})
    return out_dir


def train_tiny_checkpoint(data_dir: Path, out_dir: Path, *, steps: int = 200, rgb: bool = False,
                          mode_2d: str = "camera", epochs: int = 1, overrides: dict | None = None) -> Path:
    """A small lifting VAE (and RGB encoder) trained by the training core for `epochs` epochs of
    up to `steps` steps (at least one; an epoch ends with the data), with further config
    `overrides` (dotted keys); returns the path of its last checkpoint.pt."""
    pairs = {"pose2d_to_pose3d": 1.0, **({"rgb_to_pose3d": 1.0} if rgb else {})}
    cfg = Config().with_overrides({
        "data.dir": str(data_dir), "data.mode_2d": mode_2d, "data.image_size": 32, "loss.pairs": pairs,
        "data.virtual_camera_fraction": 0.0, "model.latent_dim": 8, "model.hidden": 32, "model.blocks": 2,
        "loss.beta.max": 0.01, "loss.schedule": "sum", "train.epochs": epochs, "train.steps_per_epoch": max(steps, 1),
        "train.batch_size": 32, "train.lr": 3e-3, "train.eval_hypotheses": 2, "train.tensorboard_images_every": 0,
        **(overrides or {})})
    fit(cfg, out_dir)
    return out_dir / EPOCH_DIR.format(epoch=epochs) / CHECKPOINT_FILE


# Session-scoped and at fixed paths under the base temp dir: made once for the results tests
# (predict, viz, export), and found on disk again if another session-scoped user asks.
@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.getbasetemp() / "tiny-results-data"
    return out_dir if (out_dir / "manifest.json").is_file() else write_tiny_dataset(out_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.getbasetemp() / "tiny-results-checkpoint"
    checkpoint = out_dir / EPOCH_DIR.format(epoch=1) / CHECKPOINT_FILE
    # metrics.json is the last file save_checkpoint writes.
    return checkpoint if (checkpoint.parent / "metrics.json").is_file() else train_tiny_checkpoint(tiny_dataset, out_dir)
