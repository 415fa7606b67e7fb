"""Training with Ray Train: a plain-PyTorch loop per worker, launched by a TorchTrainer.

The loop is what Ray's own examples look like: build the model, `prepare_model` (DDP), train,
validate, and `ray.train.report` once per epoch with a checkpoint from rank 0. Everything a
restarted worker needs (model, optimiser, scheduler, norm stats, config, epoch, global step,
running best) is in that checkpoint, so Ray's FailureConfig restarts a failed run from its last
epoch and running `run_training` again with the same run name continues the run.

Two data paths:
- lifting (no image modality): all 2D/3D arrays live on the worker's device; each epoch every
  rank takes its slice of one shared permutation (equal batches per rank), optionally seen
  through random virtual cameras;
- images: WebDataset shards streamed by `hpe_ray.data.stream.make_loader`.

Testing hook: with the environment variable HPE_RAY_FAIL_AT_EPOCH=N set where the trainer is
built, rank 1 (rank 0 with one worker) exits hard at the start of the N-th epoch (1-based, like
the reported `epoch`), once per run directory (a marker file records it), to test recovery.
It first waits a few of Ray's health-check intervals so that the previous epoch's checkpoint
has reached the controller: a checkpoint reported moments before a real crash can be lost, and
that epoch is then trained again (the run still ends with the configured number of epochs).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from hpe_ray.checkpoint import build_model, read_checkpoint_state, save_checkpoint
from hpe_ray.config import Config, TrainConfig, config_from_dict
from hpe_ray.data.stream import (
    PoseArrays,
    load_manifest,
    load_pose_arrays,
    load_stats,
    make_eval_loader,
    make_loader,
    verify_shards,
)
from hpe_ray.models import BATCH_KEY, DEFAULT_RECON_KIND, make_beta_schedule, pair_loss, reprojection_loss
from hpe_ray.lifting import (
    Batch,
    batch_errors,
    most_common_camera,
    pose_batch,
    predict_pose_3d_mm,
    virtual_camera_views,
)
from hpe_ray.normalization import NormStats, denormalize_3d

logger = logging.getLogger(__name__)

FAIL_AT_EPOCH_ENV = "HPE_RAY_FAIL_AT_EPOCH"
# Ray's default (60 s) is short for a loaded machine importing torch in every worker. A start
# that times out (e.g. resources that never free up) is retried at most run.max_failures times
# (FailureConfig.controller_failure_limit; Ray's default retries forever).
WORKER_GROUP_START_TIMEOUT_S = "300"

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


def evaluation_modality(cfg: Config) -> str:
    """The encoder validation lifts from: the 2D pose one if the model has it, else RGB."""
    encoders, decoders = cfg.modalities
    if "pose3d" not in decoders:
        raise ValueError("loss.pairs: no pair decodes pose3d, so there is no 3D pose to validate")
    return "pose2d" if "pose2d" in encoders else "rgb"


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors moved to `device`; other entries (action names) kept."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------- schedules

def lr_factor(train: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate in a 0-based epoch: cosine decay towards zero over
    train.epochs, step (x0.1 at 50 % and again at 75 % of the epochs), or none."""
    if train.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / train.epochs))
    if train.lr_schedule == "step":
        return 0.1 ** sum(epoch >= train.epochs * share for share in (0.5, 0.75))
    return 1.0


# ---------------------------------------------------------------- data inside a worker

def _in_memory_train(cfg: Config, stats: NormStats, rank: int, world_size: int,
                     device: torch.device) -> tuple[int, Callable[[int], Iterator[Batch]]]:
    """(steps per epoch, epoch -> batches) with the train split on the device."""
    arrays = load_pose_arrays(cfg.data.dir, "train", on_error=cfg.data.on_error)
    keypoints_2d_px, pose_3d_cam_mm, intrinsics = (
        torch.as_tensor(np.asarray(a, np.float32), device=device)
        for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics))
    n, batch_size = len(pose_3d_cam_mm), cfg.train.batch_size
    if n < world_size:
        raise ValueError(f"{cfg.data.dir}: the train split has {n} samples, fewer than {world_size} workers")
    steps = steps_per_epoch(n // world_size, batch_size, cfg.train.steps_per_epoch)

    def batches(epoch: int) -> Iterator[Batch]:
        mine = rank_slice(n, rank, world_size, cfg.train.seed, epoch).to(device)[:steps * batch_size]
        views = (keypoints_2d_px[mine], pose_3d_cam_mm[mine], intrinsics[mine])  # indexing copies
        if cfg.data.virtual_camera_fraction > 0:
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + rank)
            virtual = (torch.rand(len(mine), generator=generator) < cfg.data.virtual_camera_fraction).to(device)
            for view, new_view in zip(views, virtual_camera_views(views[1][virtual], views[2][virtual], generator)):
                view[virtual] = new_view
        epoch_data = pose_batch(*views, stats)
        for step in range(steps):
            yield {k: v[step * batch_size:(step + 1) * batch_size] for k, v in epoch_data.items()}

    return steps, batches


def _streaming_train(cfg: Config, stats: NormStats, rank: int, world_size: int
                     ) -> tuple[int, Callable[[int], Iterable[dict]]]:
    """(steps per epoch, epoch -> batches) streamed from the shards (with images if the model uses them)."""
    count = load_manifest(cfg.data.dir)["splits"]["train"]["count"]
    steps = steps_per_epoch(count // world_size, cfg.train.batch_size, cfg.train.steps_per_epoch)
    # One loader for the run: its persistent workers draw new shards every epoch.
    loader = make_loader(cfg.data.dir, "train", cfg.train.batch_size, with_images=cfg.uses_images,
                         image_size=cfg.data.image_size, stats=stats, shuffle_buffer=cfg.data.shuffle_buffer,
                         num_workers=cfg.data.loader_workers, batches_per_epoch=steps, seed=cfg.train.seed,
                         on_error=cfg.data.on_error, rank=rank, world_size=world_size, verify=False)
    return steps, lambda epoch: loader


def _val_batches(cfg: Config, stats: NormStats, modality: str, rank: int, world_size: int,
                 device: torch.device) -> Callable[[], Iterable[dict]]:
    """() -> this rank's share of the val split, capped at about train.val_max_samples overall
    (poses: evenly spaced samples; images: the first batches in shard order)."""
    cap = cfg.train.val_max_samples
    if modality == "rgb":
        loader = eval_loader(cfg, stats, "val", cfg.data.dir, rank=rank, world_size=world_size, verify=False)
        max_batches = math.ceil(cap / (world_size * cfg.train.batch_size)) if cap else None
        return lambda: itertools.islice(loader, max_batches)
    arrays = load_pose_arrays(cfg.data.dir, "val", on_error=cfg.data.on_error)
    n = len(arrays)
    # Evenly spaced, so a cap still covers every action and subject.
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


def streams_shards(cfg: Config) -> bool:
    """Whether training streams the shards (images, or in_memory "never") instead of holding poses."""
    return cfg.uses_images or cfg.data.in_memory == "never"


def verify_training_data(cfg: Config) -> None:
    """Read every tar header of the train and val splits once, on the driver, for runs that stream
    them: a bad shard fails here, named, before any worker starts. The workers' loaders then skip
    this full read (they still check shard sizes against the manifest and name bad samples)."""
    if streams_shards(cfg):
        verify_shards(cfg.data.dir, ["train", "val"], on_error=cfg.data.on_error)


# ---------------------------------------------------------------- the loop

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
def _validate(model: torch.nn.Module, batches: Iterable[dict], modality: str, stats: NormStats,
              hypotheses: int, device: torch.device) -> dict[str, float]:
    """Validation errors over all ranks (sums and counts all-reduced), mm."""
    model.eval()
    _broadcast_buffers(model)
    names = ("mpjpe", "pa_mpjpe", "mpjpe_best_of_k")
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
    for batch in batches:
        errors = batch_errors(model, to_device(batch, device), modality, stats, hypotheses)
        sums[:-1] += torch.stack([errors[k].sum().double() for k in names])
        sums[-1] += len(errors["mpjpe"])
    _all_reduce_sum(sums)
    count = sums[-1].item()
    if count == 0:
        raise ValueError("validation saw no samples")
    return {f"val_{k}": (sums[i] / count).item() for i, k in enumerate(names)}


def _pair_losses(model: torch.nn.Module, batch: Batch, src: str, dst: str, beta: float, cfg: Config,
                 stats: NormStats) -> dict[str, torch.Tensor]:
    """{"total", "kl"} of one encoder -> decoder pair, with the configured 3D terms."""
    recon, mu, logvar = model(src, dst, batch)
    kind = DEFAULT_RECON_KIND["rgb"] if dst == "rgb" else cfg.loss.pose_loss
    losses = pair_loss(recon, batch[BATCH_KEY[dst]], mu, logvar, beta, kind)
    without_3d_labels = dst == "pose3d" and not cfg.loss.use_3d_labels
    total = beta * losses["kl"] if without_3d_labels else losses["total"]
    if dst == "pose3d" and cfg.loss.reprojection_weight > 0:
        with torch.autocast(recon.device.type, enabled=False):  # a linear solve inside: float32
            pred_mm = denormalize_3d(recon.float(), stats)
            total = total + cfg.loss.reprojection_weight * reprojection_loss(
                pred_mm, batch["keypoints_2d_px"].float(), batch["intrinsics"].float())
    return {"total": total, "kl": losses["kl"]}


def _maybe_fail(fail_at_epoch: int | None, epoch: int, rank: int, world_size: int, run_dir: Path) -> None:
    """The testing hook of the module docstring; `epoch` is 0-based here."""
    if fail_at_epoch != epoch + 1 or rank != min(1, world_size - 1):
        return
    marker = run_dir / f".fault-injected-epoch-{fail_at_epoch}"
    if marker.exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    # Ray's controller collects reports when it polls the workers; a report made moments before
    # a crash would be lost with its checkpoint. Waiting a few polls makes the test deterministic.
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
    logger.warning("%s=%d: rank %d exits now (fault injection)", FAIL_AT_EPOCH_ENV, fail_at_epoch, rank)
    os._exit(1)


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict],
                 cfg: Config, stats: NormStats, beta_at: Callable[[int], float], global_step: int,
                 device: torch.device) -> tuple[dict[str, float], int]:
    """One epoch of optimiser steps: (train metrics summed over ranks, new global step)."""
    model.train()
    pairs = cfg.loss.pair_list()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.train.amp and device.type == "cuda")
    # Per pair its loss sum and step count, then the KL sum, the step count, the sample count.
    sums = torch.zeros(2 * len(pairs) + 3, dtype=torch.float64, device=device)
    lr, beta = optimizer.param_groups[0]["lr"], beta_at(global_step)
    started = time.perf_counter()
    for batch in batches:
        batch = to_device(batch, device)
        active = range(len(pairs)) if cfg.loss.schedule == "sum" else [global_step % len(pairs)]
        beta = beta_at(global_step)
        with torch.autocast(**autocast):
            losses = {i: _pair_losses(model, batch, pairs[i][0], pairs[i][1], beta, cfg, stats) for i in active}
            total = sum(pairs[i][2] * losses[i]["total"] for i in active)
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
    metrics.update(kl=sums[-3] / sums[-2], beta=float(beta), lr=lr, train_samples_per_s=sums[-1] / train_seconds)
    return metrics, global_step


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker. loop_config: {"config": Config.model_dump(), "run_dir": str,
    "fail_at_epoch": int | None}."""
    cfg = config_from_dict(loop_config["config"], origin="train_loop_config")
    # Worker processes start without logging handlers; Ray forwards their stderr to the driver.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_dir = Path(loop_config["run_dir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)  # identical initial weights (DDP also broadcasts rank 0's)
    if cfg.data.in_memory == "always" and cfg.uses_images:
        raise ValueError("data.in_memory: 'always' keeps poses only; this model uses images (rgb pairs)")
    modality = evaluation_modality(cfg)

    state = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            state = read_checkpoint_state(directory, map_location=device)
    stats = NormStats.from_dict(state["stats"]) if state else load_stats(cfg.data.dir, mode_2d=cfg.data.mode_2d)
    if streams_shards(cfg):
        steps, train_batches = _streaming_train(cfg, stats, rank, world_size)
    else:
        steps, train_batches = _in_memory_train(cfg, stats, rank, world_size, device)
    val_batches = _val_batches(cfg, stats, modality, rank, world_size, device)

    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg.train, epoch))
    start_epoch, global_step, best_mpjpe = 0, 0, math.inf
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, global_step, best_mpjpe = (
            state["epoch"], state["extra"]["global_step"], state["extra"]["val_mpjpe_best"])
    # Alternating pairs leave the other branches without gradients in a step, which DDP must know.
    unused = cfg.loss.schedule == "alternate" and len(cfg.loss.pair_list()) > 1
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    beta = cfg.loss.beta
    beta_at = make_beta_schedule(beta.kind, beta.max, round(beta.warmup_epochs * steps), beta.cycles,
                                 cfg.train.epochs * steps, beta.ratio)
    writer = _tensorboard_writer(run_dir, start_epoch) if rank == 0 else None
    # [fx, fy, cx, cy] px of the commonest training camera: what `predict` assumes for keypoints
    # that come without intrinsics, kept in the checkpoint so inference needs no dataset.
    train_camera = (np.concatenate(most_common_camera(load_pose_arrays(cfg.data.dir, "train").intrinsics)).tolist()
                    if rank == 0 else None)

    for epoch in range(start_epoch, cfg.train.epochs):
        _maybe_fail(loop_config.get("fail_at_epoch"), epoch, rank, world_size, run_dir)
        train_metrics, global_step = _train_epoch(model, optimizer, train_batches(epoch), cfg, stats, beta_at,
                                                  global_step, device)
        scheduler.step()
        metrics = {"epoch": epoch + 1, **train_metrics,
                   **_validate(model, val_batches(), modality, stats, cfg.train.eval_hypotheses, device)}
        every = cfg.train.tensorboard_images_every
        if writer is not None and every and (epoch + 1) % every == 0:
            _log_prediction_grid(writer, model, val_batches(), modality, stats, cfg.train.eval_hypotheses,
                                 epoch + 1, device)
        best_mpjpe = min(best_mpjpe, metrics["val_mpjpe"])
        metrics["val_mpjpe_best"] = best_mpjpe
        _report(metrics, rank, writer, model, optimizer, scheduler, stats, cfg, global_step, train_camera)
    if writer is not None:
        writer.close()


def _report(metrics: dict[str, float], rank: int, writer, model, optimizer, scheduler, stats: NormStats,
            cfg: Config, global_step: int, train_camera: list[float] | None) -> None:
    """Every rank reports (it is a barrier); rank 0 also logs and passes the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    epoch = metrics["epoch"]
    losses = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("loss_") or k == "kl")
    logger.info("epoch %d/%d %s val_mpjpe=%.1fmm val_pa_mpjpe=%.1fmm %.0f samples/s", epoch, cfg.train.epochs,
                losses, metrics["val_mpjpe"], metrics["val_pa_mpjpe"], metrics["train_samples_per_s"])
    for name, value in metrics.items():
        if name != "epoch":
            writer.add_scalar(name, value, epoch)
    writer.flush()
    with tempfile.TemporaryDirectory(prefix="hpe-ray-ckpt-") as directory:
        save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler, stats=stats, cfg=cfg,
                        epoch=epoch, metrics=metrics,
                        extra={"global_step": global_step, "val_mpjpe_best": metrics["val_mpjpe_best"],
                               "train_camera": train_camera})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


@torch.no_grad()
def _log_prediction_grid(writer, model: torch.nn.Module, batches: Iterable[dict], modality: str, stats: NormStats,
                         hypotheses: int, epoch: int, device: torch.device, count: int = 8) -> None:
    """The first validation samples, prediction (and K hypotheses) against ground truth, to
    TensorBoard's image tab (rank 0 only: no collective calls here)."""
    from hpe_ray.viz import render_predictions_image  # matplotlib only where images are wanted

    batch = to_device(next(iter(batches)), device)
    mean_mm, samples_mm = predict_pose_3d_mm(model, batch[BATCH_KEY[modality]][:count], modality, stats, hypotheses)
    image = render_predictions_image(mean_mm.cpu().numpy(), batch["pose_3d_cam_mm"][:count].cpu().numpy(),
                                     hypotheses_mm=samples_mm.cpu().numpy() if hypotheses > 1 else None)
    writer.add_image("val/predictions", image, epoch, dataformats="HWC")


def _tensorboard_writer(run_dir: Path, start_epoch: int):
    from tensorboardX import SummaryWriter

    # purge_step drops events a failed attempt wrote after the checkpoint we resume from.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


# ---------------------------------------------------------------- launching

def make_trainer(cfg: Config, *, run_name: str, storage_path: str | Path,
                 extra_callbacks: Iterable = ()) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for `cfg` writing to storage_path/run_name (a local or shared path).

    An existing run of that name is continued from its latest checkpoint (Train V2 restores the
    run's checkpoint list). extra_callbacks: e.g. ray.tune.integration.ray_train.TuneReportCallback().
    """
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    storage_path = Path(storage_path).resolve()
    gpus = cfg.scaling.gpus_per_worker
    resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})}
    fail_at_epoch = os.environ.get(FAIL_AT_EPOCH_ENV)
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(), "run_dir": str(storage_path / run_name),
                           "fail_at_epoch": int(fail_at_epoch) if fail_at_epoch else None},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.workers, use_gpu=gpus > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures,
                                                   controller_failure_limit=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.checkpoints_to_keep, checkpoint_score_attribute="val_mpjpe",
                checkpoint_score_order="min"),
            callbacks=list(extra_callbacks)),
    )


def absolute_paths(cfg: Config) -> Config:
    """data.dir and a model.image_pretrained file as absolute paths, resolved in the caller's
    working directory: Ray workers (and Tune trials, which change directory) do not share it."""
    overrides = {"data.dir": str(Path(cfg.data.dir).resolve())}
    if cfg.model.image_pretrained not in (None, "torchvision"):
        overrides["model.image_pretrained"] = str(Path(cfg.model.image_pretrained).resolve())
    return cfg.with_overrides(overrides)


def run_training(cfg: Config, *, resume: bool = True) -> ray.train.Result:
    """Train `cfg` as run cfg.run.name under cfg.run.storage (relative paths: from here).

    resume=True continues an existing run of that name (same command again = resume);
    resume=False leaves it alone and starts a new run named "<name>-restart-<timestamp>".
    """
    cfg = absolute_paths(cfg)
    verify_training_data(cfg)
    storage = Path(cfg.run.storage).resolve()
    run_name = cfg.run.name
    if not resume and (storage / run_name).exists():
        run_name = f"{run_name}-restart-{datetime.now():%Y%m%d-%H%M%S}"
    return make_trainer(cfg, run_name=run_name, storage_path=storage).fit()
