"""Where a search's Optuna study lives: a database named by URL, recorded in search.json.

The search writes the study as trials report (Ray Tune's OptunaSearch with this storage), so
`--resume` continues it and optuna-dashboard can watch it live.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpe_ray.search.space import OPTUNA_DB, SEARCH_INFO, SearchSettings


def study_storage_url(settings: SearchSettings, experiment_dir: Path) -> str:
    """Where the search's Optuna study lives: the space's storage URL, else SQLite beside the trials."""
    return settings.storage or f"sqlite:///{experiment_dir / OPTUNA_DB}"


def open_study_storage(url: str):
    """An Optuna RDBStorage; SQLite waits for the dashboard's reads instead of failing on a lock."""
    import optuna

    engine = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def shown_url(url: str) -> str:
    """The URL with its password masked: what search.json and the log may hold."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def study_location(experiment_dir: str | Path) -> tuple[str, str]:
    """(storage URL, study name) of an experiment, from its search.json.

    A URL whose password search.json masks must be given again (`storage`): it is never written.
    """
    info_path = Path(experiment_dir) / SEARCH_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; not a search experiment directory "
                                "(made by `hpe-ray tune`)")
    study = json.loads(info_path.read_text()).get("study")
    if study is None:
        raise ValueError(f"{info_path}: no Optuna study recorded (the search predates stored studies)")
    return study["storage"], study["name"]


