"""The training loop of one rank, plain PyTorch: model, optimiser, schedules, one epoch of
steps, validation, and the state a checkpoint resumes from.

`Trainer` is what every entry point runs: `fit` in this process (tests, benchmarks, notebooks,
one-worker trials) and `hpe_ray.distributed` on Ray Train workers, which only wraps the model
in DDP and reports each epoch. Metrics are summed over ranks with torch.distributed when a
process group exists, so the same code gives the same numbers on one rank or many.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpe_ray.camera import most_common_camera, pixels_to_normalized
from hpe_ray.config import Config, TrainConfig
from hpe_ray.data.batch import Batch
from hpe_ray.data.stream import load_pose_arrays, load_stats
from hpe_ray.metrics import POSE_ERRORS, pose_errors
from hpe_ray.models import (BATCH_KEY, DEFAULT_RECON_KIND, best_of_k_loss, build_model, make_beta_schedule,
                            pair_loss, predict_pose_3d_mm, reprojection_loss, unwrap_model)
from hpe_ray.normalization import NormStats, denormalize_3d
from hpe_ray.training.checkpoint import (latest_checkpoint_state, prune_checkpoints, save_checkpoint,
                                         set_aside_unreadable)
from hpe_ray.training.data import streams_shards, to_device, train_batches, val_batches
from hpe_ray.training.tensorboard import EpochWriter

logger = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """A NaN or infinite loss (under train.nonfinite_loss: stop) or prediction: the model diverged."""

EPOCH_DIR = "checkpoint_epoch_{epoch:04d}"


def lr_factor(train: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate in a 0-based epoch: cosine decay towards zero over
    train.epochs, step (x0.1 at 50 % and again at 75 % of the epochs), or none."""
    if train.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / train.epochs))
    if train.lr_schedule == "step":
        return 0.1 ** sum(epoch >= train.epochs * share for share in (0.5, 0.75))
    return 1.0


def evaluation_modality(cfg: Config) -> str:
    """The encoder validation lifts from: the 2D pose one if the model has it, else RGB."""
    encoders, decoders = cfg.modalities
    if "pose3d" not in decoders:
        raise ValueError("loss.pairs: no pair decodes pose3d, so there is no 3D pose to validate")
    return "pose2d" if "pose2d" in encoders else "rgb"


# What validation reports each epoch (the rest of POSE_ERRORS is for `evaluate`).
VALIDATION_ERRORS = ("mpjpe", "pa_mpjpe", "mpjpe_best_of_k")


def batch_errors(model: torch.nn.Module, batch: Batch, modality: str, stats: NormStats, hypotheses: int,
                 names: tuple[str, ...] = tuple(POSE_ERRORS)) -> dict[str, torch.Tensor]:
    """Per-sample values (B,) in mm, 17 joints, root at zero, of `hpe_ray.metrics.POSE_ERRORS`
    (`names` only): Protocol 1 ("mpjpe") and 2 ("pa_mpjpe") errors of the mean decoding, both as
    best of K hypotheses, and how the K hypotheses scatter."""
    rays = None
    if modality == "pose2d":
        intrinsics = batch["intrinsics"]
        rays = pixels_to_normalized(batch["keypoints_2d_px"], intrinsics[:, 0:2], intrinsics[:, 2:4])
    mean_mm, samples_mm = predict_pose_3d_mm(model, batch[BATCH_KEY[modality]], modality, stats, hypotheses, rays,
                                             keypoint_weights=batch.get("keypoint_scores"))
    if not torch.isfinite(mean_mm).all():
        raise NonFiniteError("the model predicts non-finite poses: its weights have diverged (lower train.lr)")
    return pose_errors(mean_mm, samples_mm, batch["pose_3d_cam_mm"].float(), names)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank. DDP syncs buffers at the start of a
    forward pass, so after the last step each rank holds its own; validation must use the
    checkpointed (rank 0) model everywhere."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict], modality: str, stats: NormStats,
             hypotheses: int, device: torch.device) -> dict[str, float]:
    """Validation errors over all ranks (sums and counts all-reduced), mm, and
    "val_skipped_samples": bad samples streaming passed over (on_error: skip)."""
    model.eval()
    _broadcast_buffers(model)
    names = VALIDATION_ERRORS
    sums = torch.zeros(len(names) + 2, dtype=torch.float64, device=device)
    for batch in batches:
        errors = batch_errors(model, to_device(batch, device), modality, stats, hypotheses, names)
        sums[:-2] += torch.stack([errors[k].sum().double() for k in names])
        sums[-2] += len(errors["mpjpe"])
        sums[-1] += batch.get("skipped_samples", 0)
    _all_reduce_sum(sums)
    count = sums[-2].item()
    if count == 0:
        raise ValueError("validation saw no samples")
    return {**{f"val_{k}": (sums[i] / count).item() for i, k in enumerate(names)},
            "val_skipped_samples": int(sums[-1].item())}


# Spreads tried for the hypotheses (posterior std x t) and how many validation samples choose one.
SAMPLE_TEMPERATURES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TEMPERATURE_SAMPLES = 1024


@torch.no_grad()
def fit_sample_temperature(model: torch.nn.Module, batches: Iterable[dict], modality: str, stats: NormStats,
                           hypotheses: int, device: torch.device) -> float:
    """Set the model's `sample_temperature` to the one of SAMPLE_TEMPERATURES whose K hypotheses
    come closest (best-of-K MPJPE) on `batches` over all ranks (validation samples spread over
    the split: the first ones would be a few actions only); returns it. Training samples at 1,
    which spreads the hypotheses wider than best-of-K wants (fewer hits near the truth). Every
    temperature sees the same noise (seeded per batch, the training's random state left as it
    was), so they differ only in the spread."""
    model.eval()
    _broadcast_buffers(model)
    core = unwrap_model(model)
    sums = torch.zeros(len(SAMPLE_TEMPERATURES), dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch_index, batch in enumerate(batches):
            batch = to_device(batch, device)
            for i, temperature in enumerate(SAMPLE_TEMPERATURES):
                core.sample_temperature.fill_(temperature)
                torch.manual_seed(batch_index)
                sums[i] += batch_errors(model, batch, modality, stats, hypotheses, ("mpjpe_best_of_k",))[
                    "mpjpe_best_of_k"].sum().double()
    best = SAMPLE_TEMPERATURES[int(_all_reduce_sum(sums).argmin())]
    core.sample_temperature.fill_(best)
    return best


def pair_losses(model: torch.nn.Module, batch: Batch, src: str, dst: str, beta: float, cfg: Config,
                stats: NormStats) -> dict[str, torch.Tensor]:
    """{"total", "kl"} of one encoder -> decoder pair, with the configured 3D terms."""
    kind = DEFAULT_RECON_KIND["rgb"] if dst == "rgb" else cfg.loss.pose_loss
    target = batch[BATCH_KEY[dst]]
    best_of_k = dst == "pose3d" and cfg.loss.hypotheses > 0 and not cfg.model.deterministic
    recon, mu, logvar = model(src, dst, batch, hypotheses=cfg.loss.hypotheses if best_of_k else 0)
    if best_of_k:
        recon, hypotheses = recon[:, 0], recon[:, 1:]
    losses = pair_loss(recon, target, mu, logvar, beta, kind)
    without_3d_labels = dst == "pose3d" and not cfg.loss.use_3d_labels
    total = beta * losses["kl"] if without_3d_labels else losses["total"]
    if best_of_k and cfg.loss.use_3d_labels:
        total = total + cfg.loss.hypotheses_weight * best_of_k_loss(hypotheses, target, kind)
    if dst == "pose3d" and cfg.loss.reprojection_weight > 0:
        with torch.autocast(recon.device.type, enabled=False):  # a linear solve inside: float32
            pred_mm = denormalize_3d(recon.float(), stats)
            total = total + cfg.loss.reprojection_weight * reprojection_loss(
                pred_mm, batch["keypoints_2d_px"].float(), batch["intrinsics"].float())
    return {"total": total, "kl": losses["kl"]}


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict],
                cfg: Config, stats: NormStats, beta_at: Callable[[int], float], global_step: int,
                device: torch.device) -> tuple[dict[str, float], int]:
    """One epoch of optimiser steps: (train metrics summed over ranks, new global step).
    "skipped_samples": bad samples the streaming loader passed over (on_error: skip)."""
    model.train()
    pairs = cfg.loss.pair_list()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.train.amp and device.type == "cuda")
    # Per pair its loss sum and step count, then the skipped samples, the KL sum, the step count, the sample count.
    sums = torch.zeros(2 * len(pairs) + 4, dtype=torch.float64, device=device)
    lr, beta = optimizer.param_groups[0]["lr"], beta_at(global_step)
    started = time.perf_counter()
    nonfinite_steps = 0
    for batch_index, batch in enumerate(batches):
        batch = to_device(batch, device)
        sums[-4] += batch.get("skipped_samples", 0)  # also when its step is skipped below
        active = range(len(pairs)) if cfg.loss.schedule == "sum" else [global_step % len(pairs)]
        beta = beta_at(global_step)
        # A skipped step must not leave its batch in the batch-norm statistics either.
        buffers = [b.detach().clone() for b in model.buffers()] if cfg.train.nonfinite_loss == "skip" else None
        with torch.autocast(**autocast):
            losses = {i: pair_losses(model, batch, pairs[i][0], pairs[i][1], beta, cfg, stats) for i in active}
            total = sum(pairs[i][2] * losses[i]["total"] for i in active)
        # Every rank takes the same branch: DDP's backward is collective.
        if _all_reduce_sum((~torch.isfinite(total.detach())).double().reshape(1)).item() > 0:
            if cfg.train.nonfinite_loss == "stop":
                values = ", ".join(f"{pairs[i][0]}_to_{pairs[i][1]}={losses[i]['total'].item():.4g}" for i in active)
                raise NonFiniteError(f"batch {batch_index + 1}: the loss is not finite ({values}); "
                                         "lower train.lr, or set train.nonfinite_loss: skip")
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), buffers):
                    buffer.copy_(saved)
            nonfinite_steps += 1
            global_step += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        global_step += 1
        for i in active:
            sums[2 * i] += losses[i]["total"].detach().double()
            sums[2 * i + 1] += 1
        sums[-3] += sum(losses[i]["kl"].detach().double() for i in active) / len(active)
        sums[-2] += 1
        sums[-1] += len(batch["pose_3d_cam_mm"])
    train_seconds = time.perf_counter() - started
    sums = _all_reduce_sum(sums).tolist()
    metrics = {}
    for i, (src, dst, _) in enumerate(pairs):
        # NaN for a pair that got no step (alternating with fewer steps than pairs).
        metrics[f"loss_{src}_to_{dst}"] = sums[2 * i] / sums[2 * i + 1] if sums[2 * i + 1] else math.nan
    metrics.update(kl=sums[-3] / sums[-2] if sums[-2] else math.nan, beta=float(beta), lr=lr,
                   train_samples_per_s=sums[-1] / train_seconds, skipped_samples=int(sums[-4]),
                   nonfinite_steps=nonfinite_steps)
    return metrics, global_step


class Trainer:
    """One rank's run: data, model, optimiser and schedules, resumable from a checkpoint state.

    state: the dict of `read_checkpoint_state` to continue from, or None. wrap_model: applied
    to the built (and restored) model, e.g. DDP; the unwrapped model is what is checkpointed.
    """

    def __init__(self, cfg: Config, *, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 state: dict[str, Any] | None = None,
                 wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        self.cfg, self.device, self.rank = cfg, torch.device(device), rank
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        if cfg.data.in_memory == "always" and cfg.uses_images:
            raise ValueError("data.in_memory: 'always' keeps poses only; this model uses images (rgb pairs)")
        self.modality = evaluation_modality(cfg)
        self.stats = NormStats.from_dict(state["stats"]) if state else load_stats(cfg.data.dir, mode_2d=cfg.data.mode_2d)
        # Read once: in-memory lifting trains on these poses, and rank 0 takes its camera from them.
        arrays = (load_pose_arrays(cfg.data.dir, "train", on_error=cfg.data.on_error)
                  if rank == 0 or not streams_shards(cfg) else None)
        steps, self._train_batches = train_batches(cfg, self.stats, rank, world_size, self.device, arrays)
        self.val_batches = val_batches(cfg, self.stats, self.modality, rank, world_size, self.device)
        fits_temperature = (cfg.train.fit_sample_temperature and not cfg.model.deterministic
                            and cfg.train.eval_hypotheses > 1)
        self.temperature_batches = (val_batches(cfg, self.stats, self.modality, rank, world_size, self.device,
                                                max_samples=TEMPERATURE_SAMPLES) if fits_temperature else None)

        model = build_model(cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda epoch: lr_factor(cfg.train, epoch))
        self.epoch, self.global_step, self.best_mpjpe = 0, 0, math.inf
        if state:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.global_step, self.best_mpjpe = (
                state["epoch"], state["extra"]["global_step"], state["extra"]["val_mpjpe_best"])
        self.model = wrap_model(model) if wrap_model else model
        beta = cfg.loss.beta
        self.beta_at = make_beta_schedule(beta.kind, beta.max, round(beta.warmup_epochs * steps), beta.cycles,
                                          cfg.train.epochs * steps, beta.ratio)
        # [fx, fy, cx, cy] px of the commonest training camera: what `predict` assumes for keypoints
        # that come without intrinsics, kept in the checkpoint so inference needs no dataset.
        self.train_camera = np.concatenate(most_common_camera(arrays.intrinsics)).tolist() if rank == 0 else None

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.train.epochs

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch and validate: the metrics every rank reports ("epoch" is 1-based).
        A diverged model stops here, with the epoch named (NonFiniteError)."""
        cfg, epoch = self.cfg, self.epoch + 1
        try:
            train_metrics, self.global_step = train_epoch(self.model, self.optimizer, self._train_batches(self.epoch),
                                                          cfg, self.stats, self.beta_at, self.global_step, self.device)
            self.scheduler.step()
            if self.temperature_batches:
                train_metrics["sample_temperature"] = fit_sample_temperature(
                    self.model, self.temperature_batches(), self.modality, self.stats, cfg.train.eval_hypotheses, self.device)
            validation = validate(self.model, self.val_batches(), self.modality, self.stats,
                                  cfg.train.eval_hypotheses, self.device)
        except NonFiniteError as err:
            raise NonFiniteError(f"epoch {epoch}, {err}") from None
        self.epoch = epoch
        metrics = {"epoch": epoch, **train_metrics, **validation}
        self.best_mpjpe = min(self.best_mpjpe, metrics["val_mpjpe"])
        metrics["val_mpjpe_best"] = self.best_mpjpe
        return metrics

    def save(self, directory: str | Path, metrics: dict[str, float]) -> Path:
        """A checkpoint of the state after the last epoch; returns the path of checkpoint.pt."""
        return save_checkpoint(directory, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               stats=self.stats, cfg=self.cfg, epoch=self.epoch, metrics=metrics,
                               extra={"global_step": self.global_step, "val_mpjpe_best": self.best_mpjpe,
                                      "train_camera": self.train_camera})


def log_epoch(metrics: dict[str, float], epochs: int) -> None:
    """The one progress line per epoch, ending with the samples skipped as bad when there were any."""
    losses = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("loss_") or k == "kl")
    train_skipped, val_skipped = metrics.get("skipped_samples", 0), metrics.get("val_skipped_samples", 0)
    skipped = (f"; skipped {train_skipped + val_skipped} bad samples (train {train_skipped}, val {val_skipped})"
               if train_skipped or val_skipped else "")
    logger.info("epoch %d/%d %s val_mpjpe=%.1fmm val_pa_mpjpe=%.1fmm %.0f samples/s%s", metrics["epoch"], epochs,
                losses, metrics["val_mpjpe"], metrics["val_pa_mpjpe"], metrics["train_samples_per_s"], skipped)


def check_resumable(cfg: Config, state: dict[str, Any], directory: Path) -> None:
    """ValueError naming the checkpoint when the model `cfg` builds cannot take its weights (a
    run resumed with another model size or decoder): found before any training, or Ray start."""
    try:
        build_model(cfg, load_pretrained=False).load_state_dict(state["model"])
    except RuntimeError as err:
        mismatch = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"{directory}: this run's checkpoint was made by another model than the config "
                         f"describes ({mismatch}); resume it with its own config.yaml or start a new run "
                         "(another run.name or run.storage)") from None


def fit(cfg: Config, run_dir: str | Path, *, device: torch.device | str = "cpu",
        on_epoch: Callable[[dict[str, float], Path], None] | None = None) -> list[dict[str, float]]:
    """Train `cfg` in this process, one rank, no Ray; returns the metrics of each epoch run.

    Checkpoints go to run_dir/checkpoint_epoch_NNNN (the best run.checkpoints_to_keep by
    val_mpjpe and the latest are kept), TensorBoard events to run_dir/tensorboard. A run_dir
    that already holds checkpoints is continued from its latest one. on_epoch(metrics,
    checkpoint_dir) is called after each epoch's checkpoint is written (e.g. to report to Ray Tune).
    """
    run_dir = Path(run_dir)
    set_aside_unreadable(run_dir)
    latest = latest_checkpoint_state(run_dir, map_location=device)
    if latest is not None:
        check_resumable(cfg, *latest)
        logger.info("resuming from %s (epoch %d)", latest[1], latest[0]["epoch"])
    trainer = Trainer(cfg, device=device, state=latest[0] if latest else None)
    history = []
    with EpochWriter(run_dir, trainer) as writer:
        while not trainer.done:
            metrics = trainer.run_epoch()
            log_epoch(metrics, cfg.train.epochs)
            writer.write(metrics)
            checkpoint_dir = run_dir / EPOCH_DIR.format(epoch=trainer.epoch)
            trainer.save(checkpoint_dir, metrics)
            prune_checkpoints(run_dir, cfg.run.checkpoints_to_keep)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, checkpoint_dir)
    return history
