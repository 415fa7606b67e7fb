"""Hyperparameter search: a YAML search space run as Ray Tune trials, one TorchTrainer each.

A search space file has three sections:

    base:             a Config fragment applied to the defaults before sampling
    search:           dotted config key -> one distribution
                        {choice: [a, b, ...]}      any of the listed values
                        {uniform: [low, high]}     float
                        {loguniform: [low, high]}  float, log scale (low > 0)
                        {randint: [low, high]}     integer, both ends included
    search_settings:  num_samples, sampler (tpe | random | cmaes), seed, startup_trials,
                      max_concurrent (auto | N), scheduler (asha | none), grace_period,
                      reduction_factor, trial_cpus, points_to_evaluate

The whole file is checked before Ray starts: every key must exist in the Config (new pairs
under loss.pairs may be created), and the edges of the space must give valid Configs.

Optuna proposes the values (flat dotted keys), ASHA stops weak trials early on the epoch
they report, and each trial trains `base + sampled values` with `train.make_trainer`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpe_ray.config import Config, ConfigError, config_from_dict, read_yaml_mapping

if TYPE_CHECKING:
    import pandas as pd

ASHA_METRIC = "val_mpjpe"
"""ASHA compares trials on the error of the epoch they have reached (mm)."""
SEARCH_METRIC = "val_mpjpe_best"
"""Optuna is told each trial's best error: the checkpoint a trial keeps is its best one."""
MODE = "min"
OPEN_SECTIONS = ("loss.pairs",)
"""Config sections whose entries a search may create (a new encoder->decoder pair)."""
SPACE_COPY = "search_space.yaml"
SEARCH_INFO = "search.json"
TRAIN_RUNS = "train_runs"


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(8, ge=1)
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    seed: int = 0
    startup_trials: int | None = Field(None, ge=1)
    """Random trials before TPE/CMA-ES model the results; None: Optuna's default (10 for TPE)."""
    max_concurrent: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """auto: as many trials as the cluster's free CPUs and GPUs hold at once."""
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: int = Field(2, ge=2)
    trial_cpus: float = Field(1.0, gt=0.0)
    """CPUs reserved for the trial process itself; it only waits on its TorchTrainer."""
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    """Points tried first, e.g. the thesis defaults; a missing key takes the base config's value."""


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    base: Config
    params: dict[str, BaseDistribution]
    settings: SearchSettings
    points_to_evaluate: list[dict[str, Any]]
    """Complete points (every searched key), checked against the distributions."""


# ---------------------------------------------------------------- reading a space file

def parse_distribution(spec: Any, where: str) -> BaseDistribution:
    """{choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {randint: [lo, hi]}."""
    kinds = "choice, uniform, loguniform, randint"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution {{KIND: ARGS}} with KIND in {kinds}, got {spec!r}")
    (kind, args), = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {args!r}")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in args):
            raise ConfigError(f"{where}: choice values must be scalars (text, numbers, booleans), got {args!r}")
        return CategoricalDistribution(args)
    if kind not in ("uniform", "loguniform", "randint"):
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use one of {kinds}")
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if low >= high:
        raise ConfigError(f"{where}: {kind} low ({low}) must be below high ({high})")
    if kind == "randint":
        if not all(isinstance(v, int) for v in args):
            raise ConfigError(f"{where}: randint bounds must be integers, got {args!r}")
        return IntDistribution(low, high)
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    return FloatDistribution(float(low), float(high), log=kind == "loguniform")


def config_value(tree: dict[str, Any], dotted: str, where: str) -> Any:
    """The value at a dotted key of a Config tree; None for a new entry of an open section.

    Raises ConfigError for a key the Config does not have, suggesting the closest one.
    """
    node: Any = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if parent in OPEN_SECTIONS and i == len(parts) - 1:
            return node.get(part)
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(part, list(node) if isinstance(node, dict) else [], n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], close[0]])!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown config key {dotted!r}{hint}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{where}: {dotted!r} is a section; search the keys inside it")
    return node


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high


def edge_points(params: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Points at the edges of a space: every key low, every key high, and each choice once.

    Validating these catches bounds the Config rejects before any trial is run.
    """
    def at(dist: BaseDistribution, high: bool) -> Any:
        if isinstance(dist, CategoricalDistribution):
            return dist.choices[-1 if high else 0]
        return dist.high if high else dist.low

    low = {key: at(dist, False) for key, dist in params.items()}
    points = [low, {key: at(dist, True) for key, dist in params.items()}]
    for key, dist in params.items():
        if isinstance(dist, CategoricalDistribution):
            points += [{**low, key: choice} for choice in dist.choices[1:-1]]
    return points


def _parse_settings(raw: Any, where: str) -> SearchSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {raw!r}")
    try:
        return SearchSettings.model_validate(raw)
    except ValidationError as err:
        problems = [f"  {'.'.join(map(str, e['loc']))}: "
                    f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join([f"{where}: invalid settings", *problems])) from None


def _complete_point(point: Any, params: dict[str, BaseDistribution], base_tree: dict[str, Any],
                    where: str) -> dict[str, Any]:
    if not isinstance(point, dict):
        raise ConfigError(f"{where}: must be a mapping of searched keys to values, got {point!r}")
    unknown = sorted(set(point) - set(params))
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not searched keys")
    complete = {}
    for key, dist in params.items():
        value = point[key] if key in point else config_value(base_tree, key, where)
        if value is None:
            raise ConfigError(f"{where}: give a value for {key!r}; the base config has none")
        if not _contains(dist, value):
            raise ConfigError(f"{where}: {key}={value!r} is outside its distribution {dist}")
        complete[key] = value
    return complete


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search space file; every problem is a ConfigError naming file and key."""
    path = Path(path)
    tree = read_yaml_mapping(path, "search space file", "a mapping with base, search, search_settings")
    unknown = sorted(set(tree) - {"base", "search", "search_settings"})
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; use base, search, search_settings")

    base = config_from_dict(tree.get("base"), origin=f"{path}: base")
    base_tree = base.model_dump()
    search = tree.get("search")
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{path}: search: needs at least one `dotted.key: {{distribution}}`")
    params: dict[str, BaseDistribution] = {}
    for key, spec in search.items():
        where = f"{path}: search.{key}"
        current = config_value(base_tree, key, where)
        dist = parse_distribution(spec, where)
        # pydantic accepts 2.0 for an int field, so a float range would pass the edge checks
        if isinstance(dist, FloatDistribution) and isinstance(current, int) and not isinstance(current, bool):
            raise ConfigError(f"{where}: {key} is an integer; use randint or choice")
        params[key] = dist

    settings = _parse_settings(tree.get("search_settings") or {}, f"{path}: search_settings")
    points = [_complete_point(p, params, base_tree, f"{path}: search_settings.points_to_evaluate[{i}]")
              for i, p in enumerate(settings.points_to_evaluate)]
    for point in edge_points(params) + points:
        try:
            base.with_overrides(point)
        except ConfigError as err:
            raise ConfigError(f"{path}: the search space reaches an invalid config at {point}:\n{err}") from None
    if settings.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(f"{path}: search_settings.sampler: cmaes needs the 'cmaes' package, "
                          "which is not installed; use tpe or random")
    space = SearchSpace(path=path, base=base, params=params, settings=settings, points_to_evaluate=points)
    if settings.scheduler == "asha" and settings.grace_period > max_epochs(space):
        raise ConfigError(f"{path}: search_settings.grace_period ({settings.grace_period}) exceeds "
                          f"train.epochs ({max_epochs(space)})")
    return space


# ---------------------------------------------------------------- trials and resources

def trial_config(base_tree: dict[str, Any], params: dict[str, Any], data_dir: str) -> Config:
    """The Config a trial trains: the base config, the sampled values, and the data directory."""
    return config_from_dict(base_tree).with_overrides({**params, "data.dir": data_dir})


def max_epochs(space: SearchSpace) -> int:
    """The longest a trial can run (train.epochs may itself be searched)."""
    return max(space.base.with_overrides(p).train.epochs for p in edge_points(space.params))


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
    return optuna.samplers.TPESampler(seed=settings.seed, **startup)


def make_scheduler(settings: SearchSettings, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "none":
        return FIFOScheduler()
    # time_attr is our own epoch: Tune's training_iteration restarts when a trial is restored
    return ASHAScheduler(time_attr="epoch", metric=ASHA_METRIC, mode=MODE, max_t=epochs,
                         grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], data_dir: str, train_storage: str) -> None:
    """One Tune trial: train the base config with this trial's sampled values (`params`).

    The Train run is named after the trial id only, so a restored trial finds its
    checkpoints and continues from them.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hpe_ray.train import make_trainer

    cfg = trial_config(base, params, data_dir)
    trainer = make_trainer(cfg, run_name=f"train-{ray.tune.get_context().get_trial_id()}",
                           storage_path=train_storage, extra_callbacks=[TuneReportCallback()])
    trainer.fit()


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# ---------------------------------------------------------------- reading results

@dataclass
class TrialRecord:
    trial_id: str
    status: str
    """complete | stopped early (ASHA) | error | unfinished (the search was interrupted)."""
    params: dict[str, Any]
    """The sampled values, by dotted config key."""
    config: Config | None
    """None when the sampled values do not make a valid Config (the trial failed)."""
    history: "pd.DataFrame"
    """One row per reported epoch: epoch, val_mpjpe, losses, beta, lr, checkpoint_path, ..."""


@dataclass(frozen=True)
class SearchResult:
    experiment_dir: Path
    trials: list[TrialRecord]
    leaderboard: "pd.DataFrame"
    best_config: Path | None
    best_checkpoint: str | None
    finished: bool
    """False when the search was interrupted; run it again with resume."""

    def describe(self) -> str:
        board = self.leaderboard
        counts = board["status"].value_counts()
        lines = [f"{self.experiment_dir}: {len(board)} trials ("
                 + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")"]
        if self.best_config is not None:
            best = board.iloc[0]
            lines += [f"best trial {best['trial_id']}: val MPJPE {best['val_mpjpe']:.1f} mm, "
                      f"PA-MPJPE {best['val_pa_mpjpe']:.1f} mm at epoch {int(best['best_epoch'])}",
                      f"best config: {self.best_config}",
                      f"best checkpoint: {self.best_checkpoint}"]
        if not self.finished:
            lines.append("the search is unfinished: run it again with --resume to continue")
        return "\n".join(lines)


def _trial_status(tune_status: str, epochs_run: int, epochs_planned: int) -> str:
    if tune_status == "ERROR":
        return "error"
    if tune_status != "TERMINATED":
        return "unfinished"
    return "complete" if epochs_run >= epochs_planned else "stopped early"


def load_trials(experiment_dir: str | Path) -> list[TrialRecord]:
    """Every trial of an experiment directory, with its per-epoch history."""
    import pandas as pd
    from ray.tune import ExperimentAnalysis

    experiment_dir = Path(experiment_dir).resolve()
    base = load_space(experiment_dir / SPACE_COPY).base.model_dump()
    data_dir = json.loads((experiment_dir / SEARCH_INFO).read_text())["data_dir"]
    analysis = ExperimentAnalysis(str(experiment_dir))
    records = []
    for trial in analysis.trials:
        params = dict(trial.evaluated_params)
        try:
            cfg = trial_config(base, params, data_dir)
        except ConfigError:  # values that do not combine into a valid Config: the trial failed at once
            cfg = None
        history = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        epochs_run = int(history["epoch"].max()) if "epoch" in history else 0
        planned = cfg.train.epochs if cfg else 0
        records.append(TrialRecord(trial_id=trial.trial_id, params=params, config=cfg, history=history,
                                   status=_trial_status(trial.status, epochs_run, planned)))
    return records


def leaderboard(trials: list[TrialRecord]) -> "pd.DataFrame":
    """One row per trial, best first: its best epoch's val_mpjpe and val_pa_mpjpe (mm).

    Columns: trial_id, status, epochs, best_epoch, val_mpjpe, val_pa_mpjpe, then the
    sampled values by dotted key. Trials without results come last.
    """
    import pandas as pd

    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status, "epochs": 0,
                               "best_epoch": math.nan, "val_mpjpe": math.nan, "val_pa_mpjpe": math.nan}
        if ASHA_METRIC in t.history:
            best = t.history.loc[t.history[ASHA_METRIC].idxmin()]
            row.update(epochs=int(t.history["epoch"].max()), best_epoch=int(best["epoch"]),
                       val_mpjpe=float(best[ASHA_METRIC]), val_pa_mpjpe=float(best["val_pa_mpjpe"]))
        rows.append({**row, **t.params})
    board = pd.DataFrame(rows).sort_values(ASHA_METRIC, na_position="last", kind="stable")
    board.index = pd.RangeIndex(1, len(board) + 1, name="rank")
    return board


def best_checkpoint(trial: TrialRecord) -> str | None:
    """The trial's lowest-error checkpoint still on disk (older ones may have been rotated out)."""
    if "checkpoint_path" not in trial.history:
        return None
    saved = trial.history.dropna(subset=["checkpoint_path"])
    saved = saved[[Path(p).is_dir() for p in saved["checkpoint_path"]]]
    if saved.empty:
        return None
    return str(saved.loc[saved[ASHA_METRIC].idxmin(), "checkpoint_path"])


def markdown_table(board: "pd.DataFrame") -> str:
    """A GitHub Markdown table; floats with 4 significant digits."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    header = [board.index.name or "", *map(str, board.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in board.iterrows():
        lines.append("| " + " | ".join([cell(index), *map(cell, row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


def summarize_search(experiment_dir: str | Path) -> SearchResult:
    """Write leaderboard.csv/.md, best_config.yaml and best_checkpoint.txt of an experiment.

    best_config.yaml is a complete Config (`hpe-ray train --config` takes it unchanged): the
    base config, the best trial's values, the data directory, and run.name "best-<experiment>".
    """
    experiment_dir = Path(experiment_dir).resolve()
    trials = load_trials(experiment_dir)
    board = leaderboard(trials)
    board.to_csv(experiment_dir / "leaderboard.csv")
    (experiment_dir / "leaderboard.md").write_text(markdown_table(board))

    config_path = checkpoint = None
    if len(board) and not math.isnan(board.iloc[0][ASHA_METRIC]):
        best = next(t for t in trials if t.trial_id == board.iloc[0]["trial_id"])
        config_path = experiment_dir / "best_config.yaml"
        best.config.with_overrides({"run.name": f"best-{experiment_dir.name}"}).to_yaml(config_path)
        checkpoint = best_checkpoint(best)
        (experiment_dir / "best_checkpoint.txt").write_text(f"{checkpoint or ''}\n")

    info_path = experiment_dir / SEARCH_INFO
    planned = json.loads(info_path.read_text())["num_samples"] if info_path.is_file() else len(trials)
    finished = len(trials) >= planned and not (board["status"] == "unfinished").any()
    return SearchResult(experiment_dir=experiment_dir, trials=trials, leaderboard=board, best_config=config_path,
                        best_checkpoint=checkpoint, finished=finished)


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
        known = address != "auto" and "://" not in address
        ray.init(address=address, runtime_env={"env_vars": {"RAY_ADDRESS": address}} if known else None)
        return False
    port = _free_port()
    url_host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "::") else dashboard_host
    ray.init(include_dashboard=True, dashboard_host=dashboard_host, dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{url_host}:{port}"}})
    print(f"Ray dashboard: http://{url_host}:{port}")
    return True


def _trainable(space: SearchSpace, data_dir: Path, experiment_dir: Path):
    """run_trial with what every trial shares bound to it; a trial's config is its sampled values."""
    from ray import tune

    shared = tune.with_parameters(run_trial, base=space.base.model_dump(), data_dir=str(data_dir),
                                  train_storage=str(experiment_dir / TRAIN_RUNS))
    return tune.with_resources(shared, {"cpu": space.settings.trial_cpus})


def _new_tuner(space: SearchSpace, data_dir: Path, experiment_dir: Path, num_samples: int):
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    settings = space.settings
    per_trial = space_resources(space)
    concurrent = (max_concurrent_trials(ray.available_resources(), per_trial)
                  if settings.max_concurrent == "auto" else settings.max_concurrent)
    print(f"search {experiment_dir.name}: {num_samples} trials, {settings.sampler} + {settings.scheduler}, "
          f"{concurrent} at a time ({per_trial['CPU']:g} CPU, {per_trial['GPU']:g} GPU each)")
    searcher = OptunaSearch(space=space.params, metric=SEARCH_METRIC, mode=MODE,
                            points_to_evaluate=space.points_to_evaluate or None,
                            sampler=make_sampler(settings))
    return tune.Tuner(
        _trainable(space, data_dir, experiment_dir),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(settings, max_epochs(space)),
                                    num_samples=num_samples, max_concurrent_trials=concurrent,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=experiment_dir.name, storage_path=str(experiment_dir.parent),
                                  verbose=1),
    )


def _check_same_space(space: SearchSpace, experiment_dir: Path) -> None:
    stored = load_space(experiment_dir / SPACE_COPY)
    if stored.params != space.params or stored.base != space.base:
        raise ConfigError(f"{space.path}: differs from the space of the experiment being resumed "
                          f"({experiment_dir / SPACE_COPY}); a search space cannot change on resume")


def run_search(space_path: str | Path, data_dir: str | Path, *, trials: int | None = None,
               resume: bool = False, address: str | None = None, storage: str | Path | None = None,
               name: str | None = None, dashboard_host: str = "127.0.0.1") -> SearchResult:
    """Run (or resume) a search and write its leaderboard, best config and best checkpoint path.

    space_path: a search space YAML (see the module docstring).
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
    import ray
    from ray import tune

    space = load_space(space_path)
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{data_dir}: no manifest.json; not a dataset directory "
                                "(create one with `hpe-ray data synth --out DIR`)")
    experiment_dir = Path(storage or space.base.run.storage).resolve() / (name or f"tune-{space.path.stem}")
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

    from hpe_ray.train import verify_training_data

    # Shards are checked once here, not by every worker of every trial.
    verify_training_data(space.base.with_overrides({"data.dir": str(data_dir)}))
    started = _connect(address, dashboard_host)
    try:
        if can_restore:
            print(f"resuming {experiment_dir}")
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=_trainable(space, data_dir, experiment_dir),
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = _new_tuner(space, data_dir, experiment_dir, info["num_samples"])
            experiment_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(space.path, experiment_dir / SPACE_COPY)
        (experiment_dir / SEARCH_INFO).write_text(json.dumps(info, indent=2))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()

    result = summarize_search(experiment_dir)
    print(result.describe())
    return result
