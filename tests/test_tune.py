"""Search spaces (fast, no Ray), the leaderboard (fast), and real searches on tiny data (slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpe_ray.config import Config, ConfigError, load_config
from hpe_ray.search.results import TrialRecord, best_checkpoint, leaderboard, markdown_table
from hpe_ray.search.space import SearchSettings, edge_points, load_space, parse_distribution, trial_config
from hpe_ray.search.tune import fits_one_node, max_concurrent_trials, space_resources, trial_resources

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def write_space(tmp_path: Path, tree: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


# ---------------------------------------------------------------- distributions and space files

def test_distributions_map_to_optuna():
    assert parse_distribution({"choice": [16, 32]}, "k") == CategoricalDistribution([16, 32])
    assert parse_distribution({"uniform": [0, 4]}, "k") == FloatDistribution(0.0, 4.0)
    assert parse_distribution({"loguniform": [1e-4, 1e-1]}, "k") == FloatDistribution(1e-4, 1e-1, log=True)
    # int includes both ends (Optuna's suggest_int); randint excludes high (Ray Tune's, numpy's)
    assert parse_distribution({"int": [1, 5]}, "k") == IntDistribution(1, 5)
    assert parse_distribution({"randint": [1, 5]}, "k") == IntDistribution(1, 4)


@pytest.mark.parametrize("spec, message", [
    ({"normal": [0, 1]}, "unknown distribution 'normal'"),
    ({"uniform": [4, 0]}, r"low \(4\) must be below high \(0\)"),
    ({"loguniform": [0, 1]}, "loguniform needs low > 0"),
    ({"randint": [1, 4.5]}, "randint bounds must be integers"),
    ({"int": [1.0, 4]}, "int bounds must be integers"),
    ({"randint": [3, 4]}, r"randint excludes high, so \[3, 4\] holds one value"),
    ({"uniform": [0]}, r"uniform needs \[low, high\] numbers"),
    ({"choice": []}, "choice needs a non-empty list"),
    ({"choice": [[1, 2]]}, "choice values must be scalars"),
    ([1, 2], "expected one distribution"),
])
def test_bad_distributions_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=rf"space\.yaml: search\.train\.lr: .*{message}"):
        parse_distribution(spec, "space.yaml: search.train.lr")


@pytest.mark.parametrize("name", ["quick.yaml", "lifting.yaml", "crossmodal.yaml"])
def test_shipped_spaces_are_valid(name):
    space = load_space(REPO / "tune_spaces" / name)
    assert space.params and space.settings.num_samples >= 8


def test_quick_space_is_the_demo_search():
    space = load_space(REPO / "tune_spaces" / "quick.yaml")
    assert not space.base.uses_images
    assert space.settings.scheduler == "asha" and space.settings.num_samples >= 8
    # the thesis defaults run first, so the leaderboard measures default vs best
    thesis = Config()
    first = space.points_to_evaluate[0]
    assert first["model.latent_dim"] == thesis.model.latent_dim
    assert first["loss.beta.max"] == thesis.loss.beta.max
    # one 2-CPU trial at a time on a 2-core machine (every ASHA cut sees the trials before it)
    assert max_concurrent_trials({"CPU": 2.0}, space_resources(space)) == 1


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write_space(tmp_path, {"search": {"model.latnet_dim": {"choice": [16, 32]}}})
    with pytest.raises(ConfigError, match=r"space\.yaml: search\.model\.latnet_dim: unknown config key "
                                          r"'model\.latnet_dim' \(did you mean 'model\.latent_dim'\?\)"):
        load_space(path)


def test_a_section_cannot_be_searched(tmp_path):
    path = write_space(tmp_path, {"search": {"loss.beta": {"choice": [1, 2]}}})
    with pytest.raises(ConfigError, match="'loss.beta' is a section"):
        load_space(path)


def test_new_pairs_may_be_created_under_loss_pairs(tmp_path):
    path = write_space(tmp_path, {"search": {"loss.pairs.pose2d_to_pose2d": {"uniform": [0.0, 0.5]}}})
    space = load_space(path)
    assert space.params == {"loss.pairs.pose2d_to_pose2d": FloatDistribution(0.0, 0.5)}


def test_float_range_on_an_integer_key_is_rejected(tmp_path):
    path = write_space(tmp_path, {"search": {"model.latent_dim": {"uniform": [16, 64]}}})
    with pytest.raises(ConfigError, match="model.latent_dim is an integer; use int, randint or choice"):
        load_space(path)


def test_edges_outside_the_config_bounds_are_caught(tmp_path):
    # latent_dim must be >= 2; the low edge of the range breaks it
    path = write_space(tmp_path, {"search": {"model.latent_dim": {"randint": [1, 8]}}})
    with pytest.raises(ConfigError, match=r"(?s)space\.yaml: the search space reaches an invalid config at "
                                          r"\{'model\.latent_dim': 1\}.*model\.latent_dim: Input should be greater"):
        load_space(path)


def test_a_bad_choice_in_the_middle_is_caught(tmp_path):
    path = write_space(tmp_path, {"search": {"data.image_size": {"choice": [32, 100, 64]}}})
    with pytest.raises(ConfigError, match=r"(?s)'data\.image_size': 100.*power of two"):
        load_space(path)


def test_bad_base_and_settings_are_named(tmp_path):
    path = write_space(tmp_path, {"base": {"train": {"epohcs": 3}}, "search": {"train.lr": {"uniform": [0.1, 1]}}})
    with pytest.raises(ConfigError, match=r"space\.yaml: base: invalid configuration\n  train\.epohcs: unknown key"):
        load_space(path)
    path = write_space(tmp_path, {"search": {"train.lr": {"uniform": [0.1, 1]}},
                                   "search_settings": {"samplr": "tpe", "scheduler": "hyperband"}})
    with pytest.raises(ConfigError, match=r"search_settings: invalid settings\n"
                                          r"  scheduler: Input should be 'asha' or 'none'\n  samplr: unknown key"):
        load_space(path)


def test_grace_period_longer_than_training_is_rejected(tmp_path):
    path = write_space(tmp_path, {"base": {"train": {"epochs": 3}}, "search": {"train.lr": {"uniform": [0.1, 1]}},
                                   "search_settings": {"grace_period": 4}})
    with pytest.raises(ConfigError, match=r"grace_period \(4\) exceeds train\.epochs \(3\)"):
        load_space(path)


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed here")
def test_cmaes_needs_its_package(tmp_path):
    path = write_space(tmp_path, {"search": {"train.lr": {"uniform": [0.1, 1]}},
                                   "search_settings": {"sampler": "cmaes"}})
    with pytest.raises(ConfigError, match="cmaes needs the 'cmaes' package"):
        load_space(path)


def test_points_to_evaluate_are_completed_from_the_base(tmp_path):
    path = write_space(tmp_path, {
        "base": {"model": {"latent_dim": 64}},
        "search": {"model.latent_dim": {"choice": [16, 64]}, "train.lr": {"loguniform": [1e-4, 1e-2]}},
        "search_settings": {"points_to_evaluate": [{}, {"train.lr": 0.003}]}})
    space = load_space(path)
    assert space.points_to_evaluate == [{"model.latent_dim": 64, "train.lr": 0.001},
                                        {"model.latent_dim": 64, "train.lr": 0.003}]


@pytest.mark.parametrize("point, message", [
    ({"train.lr": 0.5}, r"train\.lr=0\.5 is outside its distribution"),
    ({"model.hidden": 128}, r"\['model\.hidden'\] are not searched keys"),
])
def test_bad_points_to_evaluate_are_named(tmp_path, point, message):
    path = write_space(tmp_path, {"search": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                                   "search_settings": {"points_to_evaluate": [point]}})
    with pytest.raises(ConfigError, match=rf"points_to_evaluate\[0\]: {message}"):
        load_space(path)


def test_edge_points_hand_values():
    params = {"a": CategoricalDistribution(["x", "y", "z"]), "b": FloatDistribution(0.5, 2.0),
              "c": IntDistribution(1, 4)}
    assert edge_points(params) == [{"a": "x", "b": 0.5, "c": 1}, {"a": "z", "b": 2.0, "c": 4},
                                   {"a": "y", "b": 0.5, "c": 1}]


# ---------------------------------------------------------------- resources

def test_trial_resources_count_the_trial_process_and_its_workers():
    cfg = Config().with_overrides({"scaling.workers": 4, "scaling.cpus_per_worker": 2, "scaling.gpus_per_worker": 0.5})
    assert trial_resources(cfg, trial_cpus=1.0) == {"CPU": 9.0, "GPU": 2.0}


@pytest.mark.parametrize("available, per_trial, expected", [
    ({"CPU": 16, "GPU": 4}, {"CPU": 3, "GPU": 1}, 4),       # GPUs decide
    ({"CPU": 16, "GPU": 8}, {"CPU": 5, "GPU": 1}, 3),       # CPUs decide
    ({"CPU": 2}, {"CPU": 1.5, "GPU": 0}, 1),
    ({"CPU": 2}, {"CPU": 3, "GPU": 0}, 1),                  # never zero: Ray queues the one trial
    ({"CPU": 3.0}, {"CPU": 0.1 + 0.2, "GPU": 0}, 10),       # float rounding does not lose a trial
    ({"CPU": 64}, {"CPU": 2, "GPU": 0.25}, 1),              # GPU trials on a CPU-only cluster
])
def test_max_concurrent_trials(available, per_trial, expected):
    assert max_concurrent_trials(available, per_trial) == expected


def test_space_resources_take_the_largest_searched_scaling(tmp_path):
    path = write_space(tmp_path, {"base": {"scaling": {"cpus_per_worker": 2}},
                                   "search": {"scaling.workers": {"choice": [1, 3, 2]}},
                                   "search_settings": {"trial_cpus": 0.5}})
    assert space_resources(load_space(path)) == {"CPU": 6.5, "GPU": 0.0}


def test_settings_defaults():
    settings = SearchSettings()
    assert (settings.sampler, settings.scheduler, settings.max_concurrent) == ("tpe", "asha", "auto")


# ---------------------------------------------------------------- leaderboard

def _trial(trial_id: str, val_mpjpe: list[float], tmp_path: Path | None = None, **params) -> TrialRecord:
    epochs = list(range(1, len(val_mpjpe) + 1))
    history = pd.DataFrame({"epoch": epochs, "val_mpjpe": val_mpjpe,
                            "val_pa_mpjpe": [v / 2 for v in val_mpjpe]})
    if tmp_path is not None:
        history["checkpoint_path"] = [str(tmp_path / f"{trial_id}-{e}") for e in epochs]
    cfg = Config().with_overrides({"train.epochs": 4, **params})
    return TrialRecord(trial_id=trial_id, status="complete", params=params, config=cfg, history=history)


def test_leaderboard_ranks_by_the_best_epoch():
    trials = [_trial("a", [90.0, 80.0, 85.0], **{"train.lr": 0.01}),
              _trial("b", [70.0, 75.0], **{"train.lr": 0.001}),
              TrialRecord("c", "unfinished", {"train.lr": 0.1}, Config(), pd.DataFrame())]
    board = leaderboard(trials)
    assert board["trial_id"].tolist() == ["b", "a", "c"]
    assert board.index.tolist() == [1, 2, 3]
    best = board.iloc[0]
    assert (best["val_mpjpe"], best["val_pa_mpjpe"], best["best_epoch"], best["epochs"]) == (70.0, 35.0, 1, 2)
    # the PA-MPJPE is the one of the best epoch, not the lowest seen
    assert board.iloc[1]["val_pa_mpjpe"] == 40.0 and board.iloc[1]["best_epoch"] == 2
    assert math.isnan(board.iloc[2]["val_mpjpe"]) and board.iloc[2]["epochs"] == 0
    assert board["train.lr"].tolist() == [0.001, 0.01, 0.1]


def test_markdown_table():
    board = leaderboard([_trial("a", [90.0, 80.12345])])
    lines = markdown_table(board).splitlines()
    assert lines[0] == "| rank | trial_id | status | epochs | best_epoch | val_mpjpe | val_pa_mpjpe |"
    assert lines[1] == "|" + "---|" * 7
    assert lines[2] == "| 1 | a | complete | 2 | 2 | 80.12 | 40.06 |"


def test_best_checkpoint_is_the_lowest_error_one_still_on_disk(tmp_path):
    trial = _trial("a", [90.0, 70.0, 80.0, 85.0], tmp_path)
    for epoch in (1, 3, 4):  # epoch 2 (the best) was rotated out
        (tmp_path / f"a-{epoch}").mkdir()
    assert best_checkpoint(trial) == str(tmp_path / "a-3")
    assert best_checkpoint(_trial("b", [90.0])) is None


def test_trial_config_applies_values_and_data_dir():
    cfg = trial_config(Config().model_dump(), {"model.latent_dim": 16, "loss.beta.kind": "cyclical"}, "/data/x")
    assert (cfg.model.latent_dim, cfg.loss.beta.kind, cfg.data.dir) == (16, "cyclical", "/data/x")


# ---------------------------------------------------------------- real searches (slow)

TINY_SPACE = {
    "base": {"train": {"epochs": 3, "steps_per_epoch": 8, "batch_size": 128, "val_max_samples": 256,
                       "eval_hypotheses": 2},
             "model": {"hidden": 64, "blocks": 2},
             "scaling": {"workers": 1, "cpus_per_worker": 0.5}},
    "search": {"model.latent_dim": {"choice": [8, 16, 32]}, "train.lr": {"loguniform": [1e-4, 3e-3]}},
    "search_settings": {"num_samples": 4, "seed": 0, "startup_trials": 2, "scheduler": "asha",
                        "grace_period": 1, "reduction_factor": 2, "trial_cpus": 0.5,
                        "points_to_evaluate": [{"model.latent_dim": 16, "train.lr": 0.001}]},
}


def make_tiny_dataset(out_dir: Path) -> Path:
    """About 2400 train / 960 val / 960 test pose-only synthetic samples (2 s to write)."""
    from hpe_ray.data.shards import write_shards
    from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits

    spec = SyntheticSpec(image_size=0, sequences_per_action=1, frames_per_sequence=8)
    write_shards(synthetic_splits(spec), out_dir, source="synthetic", settings={"test": "tiny"},
                 max_samples_per_shard=1000)
    return out_dir


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([PYTHON, "-m", "hpe_ray", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"hpe-ray {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def tfrecords(path: Path):
    """The records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 4-trial TPE + ASHA search through the CLI on a tiny dataset: (experiment dir, data, space)."""
    root = tmp_path_factory.mktemp("search")
    data = make_tiny_dataset(root / "data")
    space = write_space(root, TINY_SPACE, "tiny.yaml")
    run_cli("tune", "--space", str(space), "--data", str(data), "--storage", str(root / "runs"),
            "--name", "tiny", cwd=root, timeout=600)
    return root / "runs" / "tiny", data, space


@pytest.mark.slow
def test_search_writes_a_sorted_leaderboard(searched):
    experiment, _, _ = searched
    board = pd.read_csv(experiment / "leaderboard.csv")
    assert len(board) == 4
    assert board["val_mpjpe"].is_monotonic_increasing and board["val_mpjpe"].notna().all()
    assert set(board["status"]) <= {"complete", "stopped early"}
    assert (board["val_mpjpe"] > 0).all()
    # the given point ran as one of the trials
    assert ((board["model.latent_dim"] == 16) & (board["train.lr"] == 0.001)).any()
    assert (experiment / "leaderboard.md").read_text().startswith("| rank | trial_id |")
    checkpoint = (experiment / "best_checkpoint.txt").read_text().strip()
    assert (Path(checkpoint) / "checkpoint.pt").is_file()
    assert json.loads((Path(checkpoint) / "metrics.json").read_text())["val_mpjpe"] == pytest.approx(board["val_mpjpe"][0])


@pytest.mark.slow
def test_best_config_round_trips_and_trains(searched, tmp_path):
    experiment, data, _ = searched
    board = pd.read_csv(experiment / "leaderboard.csv")
    cfg = load_config(experiment / "best_config.yaml")
    best = board.iloc[0]
    assert cfg.model.latent_dim == best["model.latent_dim"]
    assert cfg.train.lr == pytest.approx(best["train.lr"])
    assert cfg.data.dir == str(data.resolve())
    assert cfg.model.hidden == 64  # from the space's base
    assert cfg == Config.model_validate(yaml.safe_load((experiment / "best_config.yaml").read_text()))
    run_cli("train", "--config", str(experiment / "best_config.yaml"), "--epochs", "1", cwd=tmp_path)
    assert list((tmp_path / "runs" / "best-tiny").glob("checkpoint_*/checkpoint.pt"))


@pytest.mark.slow
def test_tensorboard_events_hold_hparams_and_val_mpjpe(searched):
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    experiment, _, _ = searched
    files = sorted(experiment.glob("trial_*/events.out.tfevents.*"))
    assert len(files) == 4
    tags, hparams, metrics = set(), set(), set()
    for event_file in files:
        for record in tfrecords(event_file):
            for value in event_pb2.Event.FromString(record).summary.value:
                tags.add(value.tag)
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams |= {info.name for info in plugin.experiment.hparam_infos}
                    metrics |= {info.name.tag for info in plugin.experiment.metric_infos}
    assert {"ray/tune/val_mpjpe", "ray/tune/val_mpjpe_best"} <= tags
    assert hparams == {"model.latent_dim", "train.lr"}
    assert "ray/tune/val_mpjpe_best" in metrics


@pytest.mark.slow
def test_report_cli_writes_the_figures(searched):
    experiment, _, _ = searched
    result = run_cli("report", str(experiment), cwd=experiment)
    assert "| rank | trial_id |" in result.stdout
    for name in ("curves.png", "importance.png", "best_trial.png"):
        assert (experiment / name).stat().st_size > 10_000, name


@pytest.mark.slow
def test_ray_job_submit_runs_the_search(tmp_path):
    """`ray job submit` of a search to a Ray head started here, on its own ports and temp dir."""
    from ray.runtime_env import RuntimeEnv

    data = make_tiny_dataset(tmp_path / "data")
    space = write_space(tmp_path, {**TINY_SPACE, "search_settings": {**TINY_SPACE["search_settings"],
                                                                      "num_samples": 2}}, "tiny.yaml")
    # The README's second route: the runtime env's pip list from `hpe-ray requirements`, checked by
    # Ray's own parser. It is not submitted here: a head running from a virtualenv makes Ray clone
    # the whole virtualenv per pip runtime env (6.5 GB with CUDA torch), which filled CI's disk.
    # The job below takes the first route: the nodes already have the environment.
    pip_env = json.loads(run_cli("requirements", "--runtime-env", cwd=tmp_path).stdout)
    assert any(r.startswith("optuna") for r in RuntimeEnv(**pip_env)["pip"]["packages"])
    job_id = 200_000 + os.getpid() % 100_000
    gcs, node_manager, object_manager, client, dashboard, agent_grpc, agent_listen, metrics, runtime_env, \
        min_worker, max_worker = subprocess.run(
            ["bash", "-c", f"source {REPO / 'slurm' / 'ray_cluster.sh'}; ray_job_ports {job_id}"],
            capture_output=True, text=True, check=True).stdout.split()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray = str(Path(PYTHON).parent / "ray")
    temp_dir = Path(f"/tmp/ray_{job_id}")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_listen}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        entrypoint = (f"{PYTHON} -m hpe_ray tune --space {space} --data {data} --storage {tmp_path / 'runs'} "
                      "--name submitted")
        submit = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
                  "--", *entrypoint.split()]
        deadline = time.monotonic() + 60
        while (result := subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)).returncode:
            # the dashboard takes a few seconds to come up
            assert time.monotonic() < deadline and "Connection" in result.stderr + result.stdout, \
                result.stdout[-4000:] + result.stderr[-4000:]
            time.sleep(3)
        assert "succeeded" in result.stdout, result.stdout[-4000:]
    finally:
        head.terminate()  # `ray start --block` stops its own processes on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    board = pd.read_csv(tmp_path / "runs" / "submitted" / "leaderboard.csv")
    assert len(board) == 2 and board["val_mpjpe"].notna().all()


def test_a_trial_must_fit_on_one_node_not_only_in_the_cluster():
    """Two 1-CPU nodes hold 2 CPUs, but not a 2-CPU trial (found in the two-node SLURM test:
    such a search waited forever, so `tune` now warns)."""
    two_small = [{"CPU": 1.0, "memory": 1e9}, {"CPU": 1.0}]
    assert not fits_one_node({"CPU": 2.0, "GPU": 0.0}, two_small)
    assert fits_one_node({"CPU": 1.0, "GPU": 0.0}, two_small)
    assert not fits_one_node({"CPU": 1.0, "GPU": 1.0}, two_small + [{"CPU": 0.5, "GPU": 1.0}])
    assert fits_one_node({"CPU": 1.0, "GPU": 1.0}, two_small + [{"CPU": 4.0, "GPU": 2.0}])


def test_one_worker_spaces_train_in_the_trial_process(tmp_path):
    from hpe_ray.search.tune import in_process

    assert in_process(load_space(write_space(tmp_path, TINY_SPACE, "one.yaml")))
    mixed = {**TINY_SPACE, "search": {**TINY_SPACE["search"], "scaling.workers": {"choice": [1, 2]}}}
    assert not in_process(load_space(write_space(tmp_path, mixed, "mixed.yaml")))


@pytest.mark.slow
def test_multi_worker_trials_run_as_ray_train_runs(tmp_path):
    """Two-worker trials keep their TorchTrainer: each trial's Train run has checkpoints and the
    leaderboard is complete."""
    data = make_tiny_dataset(tmp_path / "data")
    space = {**TINY_SPACE, "base": {**TINY_SPACE["base"], "train": {**TINY_SPACE["base"]["train"], "epochs": 1},
                                    "scaling": {"workers": 2, "cpus_per_worker": 0.5}},
             "search_settings": {**TINY_SPACE["search_settings"], "num_samples": 2, "scheduler": "none"}}
    result = run_cli("tune", "--space", str(write_space(tmp_path, space, "two.yaml")), "--data", str(data),
                     "--storage", str(tmp_path / "runs"), "--name", "two", cwd=tmp_path, timeout=600)
    assert "as Ray Train runs" in result.stdout
    board = pd.read_csv(tmp_path / "runs" / "two" / "leaderboard.csv")
    assert len(board) == 2 and board["val_mpjpe"].notna().all()
    assert len(list((tmp_path / "runs" / "two" / "train_runs").glob("train-*/checkpoint_*/checkpoint.pt"))) == 2


# ---------------------------------------------------------------- the stored study and its dashboard

@pytest.mark.slow
def test_the_optuna_study_is_stored_beside_the_trials(searched):
    import optuna

    experiment, _, _ = searched
    board = pd.read_csv(experiment / "leaderboard.csv")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    # the study's value of a trial is its best epoch, as the leaderboard ranks it
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(board["val_mpjpe"]))
    assert study.metric_names == ["val_mpjpe_best (mm)"]
    assert json.loads((experiment / "search.json").read_text())["study"]["name"] == "tiny"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]  # lets the page's scripts fetch the study before the dump


def _chromium() -> str:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("HPE_RAY_REQUIRE_BROWSER"):  # .ci/run installs it and sets this
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    return found


@pytest.mark.slow
def test_dashboard_shows_the_trials_in_a_real_browser(searched, tmp_path):
    """`hpe-ray dashboard` on a free loopback port, loaded by headless Chromium: the study's trials
    and a value appear in the rendered page, and a screenshot is taken."""
    import optuna

    chromium = _chromium()
    experiment, _, _ = searched
    server = subprocess.Popen([PYTHON, "-m", "hpe_ray", "dashboard", str(experiment)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        assert first.startswith("optuna-dashboard: http://127.0.0.1:"), first + server.stdout.read()
        url = first.split()[1]
        assert "ssh -N -L" in server.stdout.readline()
        browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        trials_page = subprocess.run([*browse, "--dump-dom", f"{url}/studies/1/trials"],
                                     capture_output=True, text=True, timeout=120).stdout
        for number in range(4):
            assert f"Trial {number}" in trials_page
        # the page opens on the first trial, showing its value as stored
        first_trial = optuna.load_study(study_name="tiny", storage=f"sqlite:///{experiment / 'optuna.db'}").trials[0]
        assert repr(first_trial.value) in trials_page
        screenshot = tmp_path / "study.png"
        subprocess.run([*browse, "--window-size=1400,1000", f"--screenshot={screenshot}", f"{url}/studies/1"],
                       capture_output=True, timeout=120)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_errors_are_one_line(tmp_path):
    missing = subprocess.run([PYTHON, "-m", "hpe_ray", "dashboard", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "search.json: missing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_new_search_refuses_a_study_that_already_has_trials(tmp_path):
    import optuna

    from hpe_ray.search.tune import _create_study

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    taken = optuna.create_study(storage=url, study_name="exp")
    taken.enqueue_trial({})
    space = load_space(write_space(tmp_path, {**TINY_SPACE, "search_settings": {
        **TINY_SPACE["search_settings"], "storage": url}}))
    with pytest.raises(ConfigError, match="already holds a study named 'exp' with 1 trials"):
        _create_study(space, tmp_path / "exp")
    _create_study(space, tmp_path / "fresh")  # a free name is created, with the metric named
    assert optuna.load_study(study_name="fresh", storage=url).metric_names == ["val_mpjpe_best (mm)"]


def test_an_experiment_folder_holds_one_search_at_a_time(tmp_path):
    from hpe_ray.search.tune import experiment_lock

    with experiment_lock(tmp_path):
        with pytest.raises(ConfigError, match=rf"another search is running on this experiment \(pid {os.getpid()} on "):
            with experiment_lock(tmp_path):
                pass
    with experiment_lock(tmp_path):  # released when the first search ends
        pass
