"""Training on Ray Train: the training core's `Trainer` on each worker, launched by a TorchTrainer.

The worker loop is what Ray's own examples look like: the core builds the model, data and
optimiser; this layer wraps the model in DDP (`prepare_model`), and each epoch calls
`ray.train.report` with a checkpoint from rank 0. Everything a restarted worker needs (model,
optimiser, scheduler, norm stats, config, epoch, global step, running best) is in that
checkpoint, so Ray's FailureConfig restarts a failed run from its last epoch and running
`run_training` again with the same run name continues the run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import signal
import threading
from contextlib import contextmanager, nullcontext
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import ray
import ray.train
import ray.train.torch

from hpe_ray.config import Config, absolute_paths, config_from_dict
from hpe_ray.training.checkpoint import (latest_checkpoint_state, prune_checkpoints, read_checkpoint_state,
                                         run_checkpoints, set_aside_unreadable)
from hpe_ray.training.data import verify_training_data
from hpe_ray.training.loop import Trainer, check_resumable, log_epoch
from hpe_ray.training.tensorboard import EpochWriter

# Ray's default (60 s) is short for a loaded machine importing torch in every worker. A start
# that times out (e.g. resources that never free up) is retried at most run.max_failures times
# (FailureConfig.controller_failure_limit; Ray's default retries forever).
WORKER_GROUP_START_TIMEOUT_S = "300"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker. loop_config: {"config": Config.model_dump(), "run_dir": str}."""
    cfg = config_from_dict(loop_config["config"], origin="train_loop_config")
    # Worker processes start without logging handlers; Ray forwards their stderr to the driver.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    # The newest checkpoint on disk that loads: Ray's own list misses one written while the run
    # was being interrupted, and holds one that a kill left truncated. Ray's is the fallback
    # when the run folder is not on this node's filesystem.
    state = None
    if (latest := latest_checkpoint_state(loop_config["run_dir"], map_location=device)) is not None:
        state, directory = latest
        if rank == 0:
            logger.info("resuming from %s (epoch %d)", directory, state["epoch"])
    elif (checkpoint := ray.train.get_checkpoint()) is not None:
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


def address_for_workers(address: str | None) -> dict | None:
    """The runtime_env that hands a cluster's "ip:port" on to its worker processes, or None.

    Train's placement-group cleaner (a worker process) finds the cluster by RAY_ADDRESS; workers
    get the raylet's environment, not the driver's, and guess wrong when two Ray instances run
    on one node. "auto" and URLs (ray://, http://) are not GCS addresses a worker can use.
    """
    if not address or address == "auto" or "://" in address:
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


class RunStopped(Exception):
    """A training run that ended before its last epoch: by SIGINT or SIGTERM (exit_code 128 + the
    signal), or failed once Ray Train's retries ran out (exit_code 1). The message says where it
    stopped and how to continue."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def _interrupts_recorded():
    """Yields a list that receives the signal numbers of SIGINT and SIGTERM while the body runs.

    SIGTERM (a scheduler's kill, `timeout`) is turned into SIGINT so that Ray Train's own handler,
    installed inside fit(), aborts the run gracefully for both. Only in the main thread (signal's rule).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum, frame):
        received.append(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)

    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # until fit() installs Ray's handler
        received.append(signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


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
    if moved := set_aside_unreadable(storage / run_name):
        _forget_in_ray_snapshot(storage / run_name, {path.name for path in moved})
    if (latest := latest_checkpoint_state(storage / run_name)) is not None:
        check_resumable(cfg, *latest)  # a retry cannot fix it: before Ray starts
    trainer = make_trainer(cfg, run_name=run_name, storage_path=storage)
    result = None
    if not ray.is_initialized():
        # Before our handlers: Ray's native failure handler, installed by init, aborts the process on SIGTERM.
        ray.init(runtime_env=address_for_workers(os.environ.get("RAY_ADDRESS")))
    failure = None
    with _interrupts_recorded() as received:
        try:
            result = trainer.fit()
        except (KeyboardInterrupt, SystemExit):  # Ray's SIGINT handler ends an aborted fit() in SystemExit
            if not received:
                received.append(signal.SIGINT)
        except ray.train.TrainingFailedError as err:  # FailureConfig's retries are spent
            failure = err
    # An interrupted attempt may have left checkpoints Ray's list never took in (so never pruned);
    # Ray's own list (and its latest) stays, since Ray refuses to resume without its folders.
    prune_checkpoints(storage / run_name, cfg.run.checkpoints_to_keep, protected=_ray_checkpoint_names(storage / run_name))
    done = run_checkpoints(storage / run_name)
    epoch = int(done[-1][0].get("epoch", 0)) if done else 0
    if failure is not None or received or result is None or epoch < cfg.train.epochs:
        where = f"after epoch {epoch} of {cfg.train.epochs} (last checkpoint {done[-1][1]})" if done else \
            f"before its first checkpoint (0 of {cfg.train.epochs} epochs)"
        if failure is not None:
            cause = next((line.strip() for line in str(failure).splitlines() if line.strip()), "")
            raise RunStopped(f"run {storage / run_name} failed {where} once run.max_failures "
                             f"({cfg.run.max_failures}) retries were spent: ray.train.{type(failure).__name__}: "
                             f"{cause}; run the same command to continue from it", 1) from failure
        raise RunStopped(f"run {storage / run_name} interrupted {where}; run the same command to "
                         "continue from it", 128 + (received[0] if received else signal.SIGINT))
    return result


def _forget_in_ray_snapshot(run_dir: Path, names: set[str]) -> None:
    """Drop checkpoint folders set aside from Ray Train's checkpoint list: Ray refuses to resume
    a run whose list names a missing folder, and would rank them by their metrics."""
    snapshot = run_dir / RAY_SNAPSHOT
    if not snapshot.is_file():
        return
    state = json.loads(snapshot.read_text())
    kept = [i for i, r in enumerate(state["checkpoint_results"]) if r["checkpoint_dir_name"] not in names]
    indices = state["checkpoint_report_indices"]
    state["checkpoint_results"] = [state["checkpoint_results"][i] for i in kept]
    state["checkpoint_report_indices"] = [indices[i] for i in kept]
    if (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name") in names:
        newest = max(range(len(kept)), key=lambda j: state["checkpoint_report_indices"][j], default=None)
        state["latest_checkpoint_result"] = None if newest is None else state["checkpoint_results"][newest]
    pending = [(r, v) for r, v in zip(state.get("pending_training_results", []),
                                      state.get("pending_validation_specs", [])) if r["checkpoint_dir_name"] not in names]
    state["pending_training_results"], state["pending_validation_specs"] = [r for r, _ in pending], [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in state:
            state[key] = [name for name in state[key] if name not in names]
    partial = snapshot.with_name(snapshot.name + ".partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, snapshot)


def _ray_checkpoint_names(run_dir: Path) -> frozenset[str]:
    """The checkpoint folders Ray Train's checkpoint list holds (it prunes those itself)."""
    snapshot = run_dir / RAY_SNAPSHOT
    if not snapshot.is_file():
        return frozenset()
    return frozenset(entry["checkpoint_dir_name"] for entry in json.loads(snapshot.read_text())["checkpoint_results"])
