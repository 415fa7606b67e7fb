"""One rank's training and validation batches.

Two paths:
- lifting (no image modality): all 2D/3D arrays live on the device; each epoch every rank takes
  its slice of one shared permutation (equal batches per rank), augmented on the device
  (`hpe_ray.data.augment.augment_views`: virtual cameras, bodies, keypoint conventions, noise;
  `simulate_detector` for models that read detector scores);
- images: WebDataset shards streamed by `hpe_ray.data.stream.make_loader`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from hpe_ray.config import Config
from hpe_ray.data.augment import augment_views, simulate_detector
from hpe_ray.data.batch import Batch, pose_batch
from hpe_ray.data.sample import PoseArrays
from hpe_ray.data.stream import (check_shard_sizes, load_manifest, load_pose_arrays, load_stats, make_eval_loader,
                                 make_loader, verify_shards)
from hpe_ray.normalization import NormStats

EpochBatches = Callable[[int], Iterable[Batch]]


def rank_slice(n: int, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's indices (n // world_size,) of one permutation of range(n) shared by all ranks
    (the same seed and epoch give the same permutation everywhere), so ranks never overlap and
    all take the same number of batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    per_rank = n // world_size
    return torch.randperm(n, generator=generator)[rank * per_rank:(rank + 1) * per_rank]


def steps_per_epoch(samples_per_rank: int, batch_size: int, cap: int | None) -> int:
    """Optimiser steps per epoch: one pass over the rank's samples (last partial batch dropped),
    at most `cap`, at least one."""
    return max(1, min(samples_per_rank // batch_size, cap or math.inf))


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors moved to `device`; other entries (action names) kept."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def streams_shards(cfg: Config) -> bool:
    """Whether training streams the shards (images, or in_memory "never") instead of holding poses."""
    return cfg.uses_images or cfg.data.in_memory == "never"


def verify_training_data(cfg: Config) -> None:
    """Check what a run reads before any worker starts, so that errors no retry can fix (a missing
    folder, a corrupt manifest or stats.json, a bad poses index or shard) fail here, named, instead
    of inside Ray after its retries. Streaming runs read every tar header of train and val once
    (the workers' loaders then skip this full read); in-memory runs read the two poses indexes
    (checked against the manifest's size and sha256) and stat the shards. Hashing every shard is
    left to `hpe-ray data verify`."""
    load_manifest(cfg.data.dir)
    load_stats(cfg.data.dir, cfg.data.mode_2d)
    if streams_shards(cfg):
        verify_shards(cfg.data.dir, ["train", "val"], on_error=cfg.data.on_error, checksums=False)
    else:
        for split in ("train", "val"):
            check_shard_sizes(cfg.data.dir, split, on_error=cfg.data.on_error)
            load_pose_arrays(cfg.data.dir, split)


def train_batches(cfg: Config, stats: NormStats, rank: int, world_size: int, device: torch.device,
                  arrays: PoseArrays | None) -> tuple[int, EpochBatches]:
    """(steps per epoch, epoch -> this rank's batches) of the train split. arrays: the split's
    poses, which in-memory lifting trains on (the caller has read them; streaming ignores them)."""
    if streams_shards(cfg):
        return _streaming_train(cfg, stats, rank, world_size)
    if arrays is None:
        raise ValueError("in-memory lifting needs the train split's pose arrays")
    return _in_memory_train(cfg, arrays, stats, rank, world_size, device)


def _in_memory_train(cfg: Config, arrays: PoseArrays, stats: NormStats, rank: int, world_size: int,
                     device: torch.device) -> tuple[int, EpochBatches]:
    keypoints_2d_px, pose_3d_cam_mm, intrinsics = (
        torch.as_tensor(np.asarray(a, np.float32), device=device)
        for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics))
    n, batch_size = len(pose_3d_cam_mm), cfg.train.batch_size
    if n < world_size:
        raise ValueError(f"{cfg.data.dir}: the train split has {n} samples, fewer than {world_size} workers")
    steps = steps_per_epoch(n // world_size, batch_size, cfg.train.steps_per_epoch)

    def batches(epoch: int) -> Iterator[Batch]:
        mine = rank_slice(n, rank, world_size, cfg.train.seed, epoch).to(device)[:steps * batch_size]
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + rank)
        keypoints, *views = augment_views(keypoints_2d_px[mine], pose_3d_cam_mm[mine], intrinsics[mine], cfg.data,
                                          generator)
        scores = None
        if cfg.data.keypoint_scores:  # a detector's view of the exact 2D: some joints occluded, low scores
            keypoints, scores = simulate_detector(keypoints, cfg.data.augment, generator)
        epoch_data = pose_batch(keypoints, *views, stats, scores)
        for step in range(steps):
            yield {k: v[step * batch_size:(step + 1) * batch_size] for k, v in epoch_data.items()}

    return steps, batches


def _streaming_train(cfg: Config, stats: NormStats, rank: int, world_size: int) -> tuple[int, EpochBatches]:
    count = load_manifest(cfg.data.dir)["splits"]["train"]["count"]
    steps = steps_per_epoch(count // world_size, cfg.train.batch_size, cfg.train.steps_per_epoch)
    # One loader for the run: its persistent workers draw new shards every epoch.
    loader = make_loader(cfg.data.dir, "train", cfg.train.batch_size, with_images=cfg.uses_images,
                         image_size=cfg.data.image_size, stats=stats, shuffle_buffer=cfg.data.shuffle_buffer,
                         num_workers=cfg.data.loader_workers, batches_per_epoch=steps, seed=cfg.train.seed,
                         on_error=cfg.data.on_error, rank=rank, world_size=world_size, verify=False)
    return steps, lambda epoch: loader


def val_batches(cfg: Config, stats: NormStats, modality: str, rank: int, world_size: int,
                device: torch.device, max_samples: int | None = None) -> Callable[[], Iterable[dict]]:
    """() -> this rank's share of the val split, capped at about train.val_max_samples overall,
    or at max_samples when that is lower: evenly spaced samples, so a cap still covers every
    action and subject."""
    caps = [c for c in (cfg.train.val_max_samples, max_samples) if c is not None]
    cap = min(caps) if caps else None
    if modality == "rgb":
        # Every stride-th sample: ranks r < world_size of world_size * stride keep index i when
        # i % (world_size * stride) == r. Every shard's bytes are read, only those are decoded.
        count = load_manifest(cfg.data.dir)["splits"]["val"]["count"]
        stride = max(1, math.ceil(count / cap)) if cap else 1
        loader = eval_loader(cfg, stats, "val", cfg.data.dir, rank=rank, world_size=world_size * stride, verify=False)
        return lambda: loader
    arrays = load_pose_arrays(cfg.data.dir, "val", on_error=cfg.data.on_error)
    n = len(arrays)
    chosen = np.linspace(0, n - 1, min(n, cap or n)).round().astype(int)[rank::world_size]
    batches = array_batches(arrays, stats, cfg.train.batch_size, device, chosen)
    return lambda: batches


def array_batches(arrays: PoseArrays, stats: NormStats, batch_size: int, device: torch.device | str = "cpu",
                  indices: np.ndarray | None = None) -> list[dict]:
    """Batch dicts like `make_loader`'s (no images) of in-memory poses, all or `indices`, on `device`."""
    indices = np.arange(len(arrays)) if indices is None else indices
    data = pose_batch(*(torch.as_tensor(np.asarray(a[indices], np.float32), device=device)
                        for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics)), stats)
    data["action"] = arrays.action[indices].tolist()
    return [{k: v[i:i + batch_size] for k, v in data.items()} for i in range(0, len(indices), batch_size)]


def eval_loader(cfg: Config, stats: NormStats, split: str, data_dir: str, *, rank: int = 0,
                world_size: int = 1, verify: bool = True) -> Iterable[dict]:
    """Every sample of a split once over all ranks, with images; this rank's share."""
    return make_eval_loader(data_dir, split, cfg.train.batch_size, with_images=True, image_size=cfg.data.image_size,
                            stats=stats, num_workers=cfg.data.loader_workers, on_error=cfg.data.on_error,
                            rank=rank, world_size=world_size, verify=verify)
