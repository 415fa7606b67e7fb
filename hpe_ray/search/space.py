"""Search space files, read and checked without Ray; the Config each trial trains.

A search space file has three sections:

    base:             a Config fragment applied to the defaults before sampling
    search:           dotted config key -> one distribution
                        {choice: [a, b, ...]}      any of the listed values
                        {uniform: [low, high]}     float
                        {loguniform: [low, high]}  float, log scale (low > 0)
                        {int: [low, high]}         integer, both ends included (Optuna's suggest_int)
                        {randint: [low, high]}     integer, high excluded (as Ray Tune's and numpy's randint)
    search_settings:  num_samples, sampler (tpe | random | cmaes), seed, startup_trials, multivariate,
                      max_concurrent (auto | N), scheduler (asha | none), grace_period,
                      reduction_factor, trial_cpus, points_to_evaluate

The whole file is checked before Ray starts: every key must exist in the Config (new pairs
under loss.pairs may be created), and the edges of the space must give valid Configs.
Also here: the metric names and the file names an experiment directory shares between
running a search (search.tune) and reading its results (search.results).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpe_ray.config import (Config, ConfigError, config_from_dict, find_resource, format_validation_error,
                            read_yaml_mapping)

ASHA_METRIC = "val_mpjpe"
"""ASHA compares trials on the error of the epoch they have reached (mm)."""
SEARCH_METRIC = "val_mpjpe_best"
"""Optuna is told each trial's best error: the checkpoint a trial keeps is its best one."""
MODE = "min"
OPEN_SECTIONS = ("loss.pairs",)
"""Config sections whose entries a search may create (a new encoder->decoder pair)."""
SPACE_COPY = "search_space.yaml"
"""The space file as the experiment started, in its directory (checked on resume, read by reports)."""
SEARCH_INFO = "search.json"
"""The experiment's trial budget, space path, data directory and Optuna study, in its directory."""
OPTUNA_DB = "optuna.db"
"""The default Optuna study database (SQLite), in the experiment directory."""


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(8, ge=1)
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    seed: int = 0
    startup_trials: int | None = Field(None, ge=1)
    """Random trials before TPE/CMA-ES model the results; None: Optuna's default (10 for TPE)."""
    multivariate: bool = False
    """TPE only: model the searched keys jointly (Optuna's multivariate TPE) instead of one by one."""
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
    storage: str | None = None
    """SQLAlchemy URL of the Optuna study (e.g. postgresql://user@host/db on a cluster); None: a
    SQLite file in the experiment folder (optuna.db). The study is named after the experiment."""


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
    """{choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {int: [lo, hi]} | {randint: [lo, hi]}.

    Each borrows its library's meaning: int includes hi (Optuna), randint excludes it (Ray Tune).
    """
    kinds = "choice, uniform, loguniform, int, randint"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution {{KIND: ARGS}} with KIND in {kinds}, got {spec!r}")
    (kind, args), = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {args!r}")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in args):
            raise ConfigError(f"{where}: choice values must be scalars (text, numbers, booleans), got {args!r}")
        return CategoricalDistribution(args)
    if kind not in ("uniform", "loguniform", "int", "randint"):
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use one of {kinds}")
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if low >= high:
        raise ConfigError(f"{where}: {kind} low ({low}) must be below high ({high})")
    if kind in ("int", "randint"):
        if not all(isinstance(v, int) for v in args):
            raise ConfigError(f"{where}: {kind} bounds must be integers, got {args!r}")
        if kind == "randint" and high - low < 2:
            raise ConfigError(f"{where}: randint excludes high, so [{low}, {high}] holds one value; use choice")
        return IntDistribution(low, high if kind == "int" else high - 1)
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
        raise ConfigError(format_validation_error(err, where, "settings")) from None


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
    """Read and check a search space file (a path, or the name of a packaged one: `quick`); every
    problem is a ConfigError naming file and key."""
    path = find_resource("tune_spaces", path)
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
            raise ConfigError(f"{where}: {key} is an integer; use int, randint or choice")
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


# ---------------------------------------------------------------- what a trial trains

def trial_config(base_tree: dict[str, Any], params: dict[str, Any], data_dir: str) -> Config:
    """The Config a trial trains: the base config, the sampled values, and the data directory."""
    return config_from_dict(base_tree).with_overrides({**params, "data.dir": data_dir})


def max_epochs(space: SearchSpace) -> int:
    """The longest a trial can run (train.epochs may itself be searched)."""
    return max(space.base.with_overrides(p).train.epochs for p in edge_points(space.params))
