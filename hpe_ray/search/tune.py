"""Running a search: a search space as Ray Tune trials.

Optuna proposes the values (flat dotted keys), ASHA stops weak trials early on the epoch
they report, and each trial trains `base + sampled values`. A space whose trials all use one
worker trains each in the trial's own process through the training core (`training.loop.fit`),
so a short trial does not pay for a Ray Train controller and worker group; multi-worker trials
are a TorchTrainer each (`distributed.make_trainer`). The space file is read by search.space,
the finished experiment by search.results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

from hpe_ray.config import Config, ConfigError, absolute_paths
from hpe_ray.search.results import SearchResult, summarize_search
from hpe_ray.search.space import (ASHA_METRIC, MODE, SEARCH_INFO, SEARCH_METRIC, SPACE_COPY,
                                  SearchSettings, SearchSpace, edge_points, load_space, max_epochs, trial_config)
from hpe_ray.search.study import open_study_storage, shown_url, study_storage_url

logger = logging.getLogger(__name__)

TRAIN_RUNS = "train_runs"
"""The Ray Train runs of the trials, in the experiment directory."""


# ---------------------------------------------------------------- trials and resources

def trial_resources(cfg: Config, trial_cpus: float) -> dict[str, float]:
    """What one trial holds: its own process plus its Ray Train workers."""
    s = cfg.scaling
    return {"CPU": trial_cpus + s.workers * s.cpus_per_worker, "GPU": s.workers * s.gpus_per_worker}


def max_concurrent_trials(available: dict[str, float], per_trial: dict[str, float]) -> int:
    """How many trials fit side by side; the scarcest resource decides, and at least one runs.

    >>> max_concurrent_trials({"CPU": 16, "GPU": 4}, {"CPU": 3, "GPU": 1})
    4
    """
    fits = [math.floor(available.get(name, 0.0) / need + 1e-9)
            for name, need in per_trial.items() if need > 0]
    return max(1, min(fits, default=1))


def fits_one_node(per_trial: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether some node's resources hold a trial's whole request (Tune places it on one node).

    >>> fits_one_node({"CPU": 2, "GPU": 0}, [{"CPU": 1}, {"CPU": 1}])
    False
    """
    return any(all(node.get(name, 0.0) + 1e-9 >= need for name, need in per_trial.items() if need > 0)
               for node in nodes)


def space_resources(space: SearchSpace) -> dict[str, float]:
    """The largest per-trial need anywhere in the space (scaling.* may be searched)."""
    needs = [trial_resources(space.base.with_overrides(p), space.settings.trial_cpus)
             for p in edge_points(space.params)]
    return {name: max(n[name] for n in needs) for name in needs[0]}


def make_sampler(settings: SearchSettings):
    import optuna

    startup = {} if settings.startup_trials is None else {"n_startup_trials": settings.startup_trials}
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if settings.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=settings.seed, **startup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate: since Optuna 2.2
        return optuna.samplers.TPESampler(seed=settings.seed, multivariate=settings.multivariate, **startup)


def make_scheduler(settings: SearchSettings, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "none":
        return FIFOScheduler()
    # time_attr is our own epoch: Tune's training_iteration restarts when a trial is restored
    return ASHAScheduler(time_attr="epoch", metric=ASHA_METRIC, mode=MODE, max_t=epochs,
                         grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)


def in_process(space: SearchSpace) -> bool:
    """Whether every trial of the space has one worker, so trials train in their own process."""
    return all(space.base.with_overrides(p).scaling.workers == 1 for p in edge_points(space.params))


def run_trial(params: dict[str, Any], *, base: dict[str, Any], data_dir: str, train_storage: str,
              train_in_process: bool) -> None:
    """One Tune trial: train the base config with this trial's sampled values (`params`).

    The training run is named after the trial id only, so a restored trial finds its
    checkpoints and continues from them.
    """
    import ray.tune

    cfg = trial_config(base, params, data_dir)
    run_name = f"train-{ray.tune.get_context().get_trial_id()}"
    if train_in_process:
        import torch

        from hpe_ray.training.loop import fit

        device = "cuda" if cfg.scaling.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        fit(cfg, Path(train_storage) / run_name, device=device,
            on_epoch=lambda metrics, checkpoint_dir: ray.tune.report(
                {**metrics, "checkpoint_path": str(checkpoint_dir)}))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from hpe_ray.distributed import make_trainer

    make_trainer(cfg, run_name=run_name, storage_path=train_storage, extra_callbacks=[TuneReportCallback()]).fit()


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# ---------------------------------------------------------------- running a search

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(address: str | None, dashboard_host: str) -> bool:
    """Join the given cluster, or start a local one with the dashboard; True when started here.

    When ASHA stops a trial, Train's placement-group cleaner (a worker process) frees the
    trial's resources through the State API, that is the dashboard. A worker finds the
    cluster by RAY_ADDRESS or RAY_API_SERVER_ADDRESS; without them it guesses, and fails as
    soon as a second Ray instance runs on the node: the resources stay held and the next
    trial waits forever. So every worker is told the address.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from hpe_ray.distributed import address_for_workers

        ray.init(address=address, runtime_env=address_for_workers(address))
        return False
    port = _free_port()
    url_host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "::") else dashboard_host
    ray.init(include_dashboard=True, dashboard_host=dashboard_host, dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{url_host}:{port}"}})
    from hpe_ray.search.dashboard import ssh_tunnel_hint

    print(f"Ray dashboard: http://{url_host}:{port}  (from another machine: {ssh_tunnel_hint(port, url_host)})")
    return True


def _trainable(space: SearchSpace, data_dir: Path, experiment_dir: Path):
    """run_trial with what every trial shares bound to it; a trial's config is its sampled values.
    A trial trained in its own process holds its worker's resources itself."""
    from ray import tune

    own_process = in_process(space)
    # Paths resolved here, in the driver's directory: trials run in their own.
    shared = tune.with_parameters(run_trial, base=absolute_paths(space.base).model_dump(), data_dir=str(data_dir),
                                  train_storage=str(experiment_dir / TRAIN_RUNS), train_in_process=own_process)
    per_trial = space_resources(space) if own_process else {"CPU": space.settings.trial_cpus, "GPU": 0}
    return tune.with_resources(shared, {"cpu": per_trial["CPU"], "gpu": per_trial["GPU"]})


def _new_tuner(space: SearchSpace, data_dir: Path, experiment_dir: Path, num_samples: int):
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    settings = space.settings
    per_trial = space_resources(space)
    concurrent = (max_concurrent_trials(ray.available_resources(), per_trial)
                  if settings.max_concurrent == "auto" else settings.max_concurrent)
    where = "in their own processes" if in_process(space) else "as Ray Train runs"
    on_one_node = per_trial if in_process(space) else {"CPU": settings.trial_cpus}
    if not fits_one_node(on_one_node, [n["Resources"] for n in ray.nodes() if n["Alive"]]):
        # A warning, not an error: an autoscaling cluster may still add such a node.
        logger.warning("no node of this Ray cluster holds one trial (%s): its trials wait until one joins; lower "
                       "search_settings.trial_cpus or scaling.cpus_per_worker", on_one_node)
    print(f"search {experiment_dir.name}: {num_samples} trials {where}, {settings.sampler} + {settings.scheduler}, "
          f"{concurrent} at a time ({per_trial['CPU']:g} CPU, {per_trial['GPU']:g} GPU each)")
    searcher = OptunaSearch(space=space.params, metric=SEARCH_METRIC, mode=MODE,
                            points_to_evaluate=space.points_to_evaluate or None, sampler=make_sampler(settings),
                            storage=open_study_storage(study_storage_url(settings, experiment_dir)),
                            study_name=experiment_dir.name)
    return tune.Tuner(
        _trainable(space, data_dir, experiment_dir),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(settings, max_epochs(space)),
                                    num_samples=num_samples, max_concurrent_trials=concurrent,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=experiment_dir.name, storage_path=str(experiment_dir.parent),
                                  # -q / HPE_RAY_LOG_LEVEL=WARNING turn the per-trial tables off
                                  verbose=1 if logging.getLogger().isEnabledFor(logging.INFO) else 0,
                                  # Trials in their own process restart from their last checkpoint like Train runs do.
                                  failure_config=tune.FailureConfig(max_failures=space.base.run.max_failures)),
    )


def _check_same_space(space: SearchSpace, experiment_dir: Path) -> None:
    stored = load_space(experiment_dir / SPACE_COPY)
    if stored.params != space.params or stored.base != space.base:
        raise ConfigError(f"{space.path}: differs from the space of the experiment being resumed "
                          f"({experiment_dir / SPACE_COPY}); a search space cannot change on resume")


def _create_study(space: SearchSpace, experiment_dir: Path) -> None:
    """The experiment's Optuna study, created before OptunaSearch loads it: named metric, and a new
    experiment never adds its trials to an existing study (another search's in a shared database,
    or one left by a start that failed before Tune saved anything)."""
    import optuna

    url = study_storage_url(space.settings, experiment_dir)
    study = optuna.create_study(storage=open_study_storage(url), study_name=experiment_dir.name, load_if_exists=True,
                                direction="minimize" if MODE == "min" else "maximize")
    if study.trials:  # an empty one is this experiment's own, left by a start that failed before any trial
        raise ConfigError(f"search_settings.storage: {shown_url(url)} already holds a study named "
                          f"{experiment_dir.name!r} with {len(study.trials)} trials; choose another --name "
                          "(or delete that study)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice since 3.2
        study.set_metric_names([f"{SEARCH_METRIC} (mm)"])
    study.set_user_attr("search_space", str(space.path.resolve()))


def run_search(space_path: str | Path, data_dir: str | Path, *, trials: int | None = None,
               resume: bool = False, address: str | None = None, storage: str | Path | None = None,
               name: str | None = None, dashboard_host: str = "127.0.0.1") -> SearchResult:
    """Run (or resume) a search and write its leaderboard, best config and best checkpoint path.

    space_path: a search space YAML (see hpe_ray.search.space).
    data_dir:   a shard directory; made absolute because trials run in their own directories.
    trials:     number of trials (default: search_settings.num_samples). On resume the
                original budget holds.
    resume:     continue the experiment of this name: finished trials are kept, unfinished
                and errored ones resume from their checkpoints, Optuna's state is restored.
                With nothing to resume a new search starts, so a resubmitted job can always
                pass it.
    address:    an existing Ray cluster ("ip:port", "auto"); default: RAY_ADDRESS, else a
                local cluster with the dashboard on `dashboard_host`.
    storage:    parent of the experiment directory (a shared filesystem on a cluster);
                default: the base config's run.storage. The experiment is `storage/name`,
                name defaulting to "tune-<space file stem>".
    """
    space = load_space(space_path)
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{data_dir}: no manifest.json; not a dataset directory "
                                "(create one with `hpe-ray data synth --out DIR`)")
    experiment_dir = Path(storage or space.base.run.storage).resolve() / (name or f"tune-{space.path.stem}")
    experiment_dir.mkdir(parents=True, exist_ok=True)
    with experiment_lock(experiment_dir):
        return _run_locked(space, data_dir, experiment_dir, trials=trials, resume=resume, address=address,
                           dashboard_host=dashboard_host)


LOCK_FILE = ".search.lock"


@contextlib.contextmanager
def experiment_lock(experiment_dir: Path):
    """Hold the experiment folder for one search: a second search (or resume) of the same folder
    refuses at once instead of both writing its trials and study. The kernel drops the lock when
    the process dies, so a killed search never leaves the folder locked."""
    import fcntl

    handle = open(experiment_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{experiment_dir}: another search is running on this experiment ({holder}); "
                          "wait for it, or choose another --name") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _run_locked(space: SearchSpace, data_dir: Path, experiment_dir: Path, *, trials: int | None, resume: bool,
                address: str | None, dashboard_host: str) -> SearchResult:
    import ray
    from ray import tune

    can_restore = tune.Tuner.can_restore(str(experiment_dir))
    if can_restore and not resume:
        raise ConfigError(f"{experiment_dir}: an experiment of this name exists; "
                          "resume it (--resume) or choose another --name")
    if can_restore:
        _check_same_space(space, experiment_dir)
        info = json.loads((experiment_dir / SEARCH_INFO).read_text())
        if trials is not None and trials != info["num_samples"]:
            print(f"resuming with the experiment's original budget of {info['num_samples']} trials")
    else:
        info = {"num_samples": trials or space.settings.num_samples, "space": str(space.path.resolve())}
    info["data_dir"] = str(data_dir)
    info["study"] = {"name": experiment_dir.name,
                     "storage": shown_url(study_storage_url(space.settings, experiment_dir))}

    from hpe_ray.training.data import verify_training_data

    # Shards are checked once here, not by every worker of every trial.
    verify_training_data(space.base.with_overrides({"data.dir": str(data_dir)}))
    if not can_restore:
        _create_study(space, experiment_dir)  # a study name already taken fails here, before Ray starts
    started = _connect(address, dashboard_host)
    try:
        if can_restore:
            print(f"resuming {experiment_dir}")
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=_trainable(space, data_dir, experiment_dir),
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = _new_tuner(space, data_dir, experiment_dir, info["num_samples"])
            shutil.copyfile(space.path, experiment_dir / SPACE_COPY)
        (experiment_dir / SEARCH_INFO).write_text(json.dumps(info, indent=2))
        print(f"Optuna study {info['study']['name']!r} in {info['study']['storage']}; "
              f"watch it with: hpe-ray dashboard {experiment_dir}")
        tuner.fit()
    finally:
        if started:
            ray.shutdown()

    result = summarize_search(experiment_dir)
    print(result.describe())
    return result
