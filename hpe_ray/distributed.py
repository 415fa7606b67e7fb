"""Training on Ray Train: the training core's `Trainer` on each worker, launched by a TorchTrainer.

The worker loop is what Ray's own examples look like: the core builds the model, data and
optimiser; this layer wraps the model in DDP (`prepare_model`), and each epoch calls
`ray.train.report` with a checkpoint from rank 0. Everything a restarted worker needs (model,
optimiser, scheduler, norm stats, config, epoch, global step, running best) is in that
checkpoint, so Ray's FailureConfig restarts a failed run from its last epoch and running
`run_training` again with the same run name continues the run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import nullcontext
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import ray.train
import ray.train.torch

from hpe_ray.config import Config, absolute_paths, config_from_dict
from hpe_ray.training.checkpoint import read_checkpoint_state
from hpe_ray.training.data import verify_training_data
from hpe_ray.training.loop import Trainer, log_epoch
from hpe_ray.training.tensorboard import EpochWriter

# Ray's default (60 s) is short for a loaded machine importing torch in every worker. A start
# that times out (e.g. resources that never free up) is retried at most run.max_failures times
# (FailureConfig.controller_failure_limit; Ray's default retries forever).
WORKER_GROUP_START_TIMEOUT_S = "300"


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker. loop_config: {"config": Config.model_dump(), "run_dir": str}."""
    cfg = config_from_dict(loop_config["config"], origin="train_loop_config")
    # Worker processes start without logging handlers; Ray forwards their stderr to the driver.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    state = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            state = read_checkpoint_state(directory, map_location=device)
    # Alternating pairs leave the other branches without gradients in a step, which DDP must know.
    unused = cfg.loss.schedule == "alternate" and len(cfg.loss.pair_list()) > 1
    trainer = Trainer(cfg, device=device, rank=rank, world_size=context.get_world_size(), state=state,
                      wrap_model=lambda model: ray.train.torch.prepare_model(
                          model, parallel_strategy_kwargs={"find_unused_parameters": unused}))
    # Closed (events flushed) also when an epoch fails.
    with EpochWriter(loop_config["run_dir"], trainer) if rank == 0 else nullcontext() as writer:
        while not trainer.done:
            metrics = trainer.run_epoch()
            if writer is None:
                ray.train.report(metrics)  # every rank reports: it is a barrier
                continue
            log_epoch(metrics, cfg.train.epochs)
            writer.write(metrics)
            with tempfile.TemporaryDirectory(prefix="hpe-ray-ckpt-") as directory:
                trainer.save(directory, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


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
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(), "run_dir": str(storage_path / run_name)},
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
