"""Shared test fixtures: a tiny synthetic dataset and a tiny trained lifting model (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpe_ray.checkpoint import build_model, save_checkpoint
from hpe_ray.config import Config
from hpe_ray.data.shards import write_shards
from hpe_ray.data.stream import iter_samples, load_pose_arrays, load_stats
from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits
from hpe_ray.lifting import pose_batch
from hpe_ray.models import pair_loss

TINY_ACTIONS = ("Walking", "Sitting", "Greeting")


def write_tiny_dataset(out_dir: Path, image_size: int | None = None) -> Path:
    """Synthetic shards: 3 actions, one 6-frame sequence each, 4 cameras (360 train samples)."""
    spec = SyntheticSpec(actions=TINY_ACTIONS, sequences_per_action=1, frames_per_sequence=6,
                         image_size=image_size)
    write_shards(synthetic_splits(spec), out_dir, source="synthetic", settings={})
    return out_dir


def train_tiny_checkpoint(data_dir: Path, out_dir: Path, *, steps: int = 200, rgb: bool = False,
                          mode_2d: str = "camera") -> Path:
    """A small lifting VAE (and RGB encoder) trained for `steps` Adam steps, saved as a checkpoint."""
    torch.manual_seed(0)
    pairs = {"pose2d_to_pose3d": 1.0, **({"rgb_to_pose3d": 1.0} if rgb else {})}
    cfg = Config().with_overrides({
        "data.dir": str(data_dir), "data.mode_2d": mode_2d, "data.image_size": 32, "loss.pairs": pairs,
        "model.latent_dim": 8, "model.hidden": 32, "model.blocks": 2, "loss.beta.max": 0.01})
    stats = load_stats(data_dir, mode_2d)
    arrays = load_pose_arrays(data_dir, "train")
    data = pose_batch(*(torch.as_tensor(a) for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm,
                                                      arrays.intrinsics)), stats)
    if rgb:
        images = np.stack([sample.image for sample in iter_samples(data_dir, "train")])
        data["image"] = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    model = build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = {k: v[torch.randint(0, len(arrays), (32,))] for k, v in data.items()}
        loss = 0.0
        for src, dst, _ in cfg.loss.pair_list():
            recon, mu, logvar = model(src, dst, batch)
            loss = loss + pair_loss(recon, batch["pose_3d"], mu, logvar, beta=cfg.loss.beta.max)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return save_checkpoint(out_dir, model=model.eval(), optimizer=optimizer, scheduler=scheduler, stats=stats,
                           cfg=cfg, epoch=0, metrics={"val_mpjpe": float("nan")})


# Session-scoped and at fixed paths under the base temp dir: made once for the results tests
# (predict, viz, export), and found on disk again if another session-scoped user asks.
@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.getbasetemp() / "tiny-results-data"
    return out_dir if (out_dir / "manifest.json").is_file() else write_tiny_dataset(out_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.getbasetemp() / "tiny-results-checkpoint"
    # metrics.json is the last file save_checkpoint writes.
    if (out_dir / "metrics.json").is_file():
        return out_dir / "checkpoint.pt"
    return train_tiny_checkpoint(tiny_dataset, out_dir)
