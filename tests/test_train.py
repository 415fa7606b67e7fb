"""Training: pure helpers of the loop (fast) and real Ray Train runs on synthetic shards (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import camera_poses_mm, h36m_intrinsics, train_tiny_checkpoint
from hpe_ray.camera import fit_to_keypoints, most_common_camera, pixels_to_normalized, project_to_pixels
from hpe_ray.config import Config, absolute_paths
from hpe_ray.data.batch import pose_batch
from hpe_ray.models import build_model, predict_pose_3d_mm
from hpe_ray.normalization import NormStats, normalize_2d, normalize_3d
from hpe_ray.rotation import rotation_about_axis
from hpe_ray.training.checkpoint import CHECKPOINT_FILE, best_checkpoint_dir, load_checkpoint, save_checkpoint
from hpe_ray.training.data import rank_slice, steps_per_epoch, to_device, val_batches
from hpe_ray.training.loop import SAMPLE_TEMPERATURES, batch_errors, fit_sample_temperature, lr_factor

def _unit_stats() -> NormStats:
    return NormStats(np.zeros((16, 2)), np.ones((16, 2)), np.zeros((16, 3)), np.ones((16, 3)), "camera")


def test_rotation_about_axis_hand_values():
    axes = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    rotation = rotation_about_axis(axes, torch.tensor([math.pi / 2, math.pi]))
    # A quarter turn about z takes x to y; a half turn about x takes y to -y.
    assert torch.allclose(rotation[0] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(rotation[1] @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6)


def test_rank_slices_partition_one_permutation_per_epoch():
    slices = [rank_slice(10, rank, 3, seed=0, epoch=0) for rank in range(3)]
    assert [len(s) for s in slices] == [3, 3, 3]
    everything = torch.cat(slices)
    assert len(set(everything.tolist())) == 9 and everything.max() < 10
    assert torch.equal(rank_slice(10, 1, 3, seed=0, epoch=0), slices[1])
    assert not torch.equal(rank_slice(10, 1, 3, seed=0, epoch=1), slices[1])


def test_steps_per_epoch_hand_values():
    assert steps_per_epoch(1000, 256, None) == 3
    assert steps_per_epoch(1000, 256, 2) == 2
    assert steps_per_epoch(100, 256, None) == 1


def test_lr_factor_hand_values():
    cfg = Config()
    cosine = cfg.train.model_copy(update={"epochs": 8, "lr_schedule": "cosine"})
    assert lr_factor(cosine, 0) == pytest.approx(1.0)
    assert lr_factor(cosine, 4) == pytest.approx(0.5)
    step = cfg.train.model_copy(update={"epochs": 8, "lr_schedule": "step"})
    assert [lr_factor(step, e) for e in (3, 4, 5, 6)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert lr_factor(cfg.train.model_copy(update={"lr_schedule": "none"}), 7) == 1.0


def test_pose_batch_matches_the_normalisation_functions():
    poses = camera_poses_mm(5)
    intrinsics = h36m_intrinsics(5)
    keypoints = project_to_pixels(poses, intrinsics)
    stats = _unit_stats()
    batch = pose_batch(keypoints, poses, intrinsics, stats)
    assert batch["pose_2d"].shape == (5, 16, 2) and batch["pose_3d"].shape == (5, 16, 3)
    assert torch.allclose(batch["pose_2d"], normalize_2d(keypoints, intrinsics[:, :2], intrinsics[:, 2:4], stats))
    assert torch.allclose(batch["pose_3d"], normalize_3d(poses, stats))
    assert (batch["pose_3d_cam_mm"][:, 0] == 0).all()


def test_absolute_paths_resolve_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(Config().with_overrides({"data.dir": "data/x", "model.image_pretrained": "w.pt"}))
    assert cfg.data.dir == str(tmp_path / "data" / "x") and cfg.model.image_pretrained == str(tmp_path / "w.pt")
    assert absolute_paths(Config().with_overrides({"model.image_pretrained": "torchvision"})).model.image_pretrained \
        == "torchvision"


def _tiny_cfg(**overrides) -> Config:
    base = {"model.latent_dim": 8, "model.hidden": 32, "model.blocks": 2}
    return Config().with_overrides({**base, **overrides})


def test_prediction_puts_the_root_back_and_best_of_k_never_loses():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).eval()
    stats = _unit_stats()
    poses, intrinsics = camera_poses_mm(6), h36m_intrinsics(6)
    batch = pose_batch(project_to_pixels(poses, intrinsics), poses, intrinsics, stats)
    torch.manual_seed(1)
    decoded_mm, _ = predict_pose_3d_mm(model, batch["pose_2d"], "pose2d", stats, hypotheses=0)
    # With unit stats, mm are the decoder's outputs: the mean decodes the latent mean.
    mu, _ = model.encode("pose2d", batch["pose_2d"])
    assert torch.allclose(decoded_mm[:, 1:], model.decode("pose3d", mu))
    # Validation fits the poses to the keypoints' rays (model.fit_2d, the default).
    rays = pixels_to_normalized(batch["keypoints_2d_px"], batch["intrinsics"][:, 0:2], batch["intrinsics"][:, 2:4])
    torch.manual_seed(1)
    mean_mm, samples_mm = predict_pose_3d_mm(model, batch["pose_2d"], "pose2d", stats, 4, rays)
    assert mean_mm.shape == (6, 17, 3) and samples_mm.shape == (6, 4, 17, 3)
    assert (mean_mm[:, 0] == 0).all() and (samples_mm[:, :, 0] == 0).all()
    assert torch.allclose(mean_mm, fit_to_keypoints(decoded_mm, rays))
    torch.manual_seed(1)  # the same hypotheses as above
    errors = batch_errors(model, batch, "pose2d", stats, hypotheses=4)
    truth = batch["pose_3d_cam_mm"]
    distances = (mean_mm - truth).norm(dim=-1)
    assert torch.allclose(errors["mpjpe"], distances.mean(-1))  # 17 joints, root error 0 included
    # Procrustes minimises squared distances: PA-MPJPE <= its RMS <= the unaligned RMS.
    assert (errors["pa_mpjpe"] <= distances.square().mean(-1).sqrt() + 1e-4).all()
    per_sample = (samples_mm - truth[:, None]).norm(dim=-1).mean(-1)
    assert torch.allclose(errors["mpjpe_best_of_k"], per_sample.amin(1))


def test_deterministic_model_repeats_its_one_hypothesis():
    model = build_model(_tiny_cfg(**{"model.deterministic": True})).eval()
    pose_2d = torch.randn(3, 16, 2)
    mean_mm, samples_mm = predict_pose_3d_mm(model, pose_2d, "pose2d", _unit_stats(), hypotheses=5)
    assert torch.equal(samples_mm, mean_mm[:, None].expand(-1, 5, -1, -1))


def _save_tiny_checkpoint(directory: Path, cfg: Config, val_mpjpe: float, epoch: int) -> torch.nn.Module:
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler, stats=_unit_stats(),
                    cfg=cfg, epoch=epoch, metrics={"val_mpjpe": val_mpjpe}, extra={"global_step": 7})
    return model


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    cfg = _tiny_cfg()
    model = _save_tiny_checkpoint(tmp_path / "ckpt", cfg, val_mpjpe=50.0, epoch=3).eval()
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {CHECKPOINT_FILE, "config.yaml", "stats.json",
                                                                "metrics.json"}
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / CHECKPOINT_FILE):
        loaded = load_checkpoint(path)
        assert loaded.cfg == cfg and loaded.epoch == 3 and loaded.metrics == {"val_mpjpe": 50.0}
        assert not loaded.model.training and loaded.state["extra"] == {"global_step": 7}
        pose_2d = torch.randn(4, 16, 2)
        with torch.no_grad():
            assert torch.allclose(loaded.model.lift("pose2d", pose_2d)[0], model.lift("pose2d", pose_2d)[0])
        assert np.array_equal(loaded.stats.std_3d, np.ones((16, 3)))


def test_run_directory_resolves_to_the_lowest_val_mpjpe(tmp_path):
    cfg = _tiny_cfg()
    for epoch, error in ((1, 80.0), (2, 60.0), (3, 70.0)):
        _save_tiny_checkpoint(tmp_path / f"checkpoint_{epoch}", cfg, error, epoch)
    assert best_checkpoint_dir(tmp_path) == tmp_path / "checkpoint_2"
    assert load_checkpoint(tmp_path).epoch == 2
    assert json.loads((tmp_path / "checkpoint_2" / "metrics.json").read_text())["epoch"] == 2


def test_load_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint directories"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable hpe-ray checkpoint"):
        load_checkpoint(bad)


def test_a_load_failure_never_passes_on_the_advice_to_drop_weights_only():
    import pickle

    from hpe_ray.training.checkpoint import _load_failure

    refused = pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                                     "`False` will likely succeed.\nWeightsUnpickler error: Unsupported operand 103\n\nmore")
    assert _load_failure(refused) == "the weights-only unpickler refused it: Unsupported operand 103"
    reworded = pickle.UnpicklingError("Try weights_only=False to load it.")  # no reason given in torch's text
    assert _load_failure(reworded) == "the weights-only unpickler refused it"
    assert _load_failure(RuntimeError("failed finding central directory\ndetails")) == "failed finding central directory"


# ---------------------------------------------------------------- real Ray Train runs (slow)

EPOCH_STEPS_LIFTING = 39  # 5000 train samples / 2 ranks / batch 64


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, address="local")
    yield
    ray.shutdown()


def _write_synthetic(out_dir: Path, *, frames: int, image_size: int | None, splits=("train", "val", "test")) -> Path:
    from hpe_ray.data.shards import write_shards
    from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits

    spec = SyntheticSpec(sequences_per_action=1, frames_per_sequence=frames, frame_step=4, image_size=image_size)
    samples = {split: it for split, it in synthetic_splits(spec).items() if split in splits}
    write_shards(samples, out_dir, source="synthetic", settings={"test": True}, max_samples_per_shard=500)
    return out_dir


@pytest.fixture(scope="module")
def pose_shards(tmp_path_factory) -> Path:
    """Poses only: 5000 train, 2000 val, 2000 test samples (10 actions)."""
    return _write_synthetic(tmp_path_factory.mktemp("data") / "poses", frames=25, image_size=None)


def _lifting_cfg(data_dir: Path, storage: Path, name: str, epochs: int) -> Config:
    return Config().with_overrides({
        "data.dir": str(data_dir), "model.latent_dim": 32, "model.hidden": 256, "model.blocks": 3,
        "train.epochs": epochs, "train.batch_size": 64, "train.eval_hypotheses": 4, "train.lr": 2e-3,
        "scaling.workers": 2, "run.storage": str(storage), "run.name": name, "run.checkpoints_to_keep": 10,
        "train.tensorboard_images_every": 2})


def _checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["epoch"] for p in run_dir.glob("*/metrics.json"))


@pytest.fixture(scope="module")
def lifting_run(ray_cluster, pose_shards, tmp_path_factory):
    from hpe_ray.distributed import run_training

    cfg = _lifting_cfg(pose_shards, tmp_path_factory.mktemp("runs"), "lifting", epochs=4)
    return cfg, run_training(cfg)


@pytest.mark.slow
def test_lifting_with_two_workers_beats_the_mean_pose(lifting_run, pose_shards):
    cfg, result = lifting_run
    assert result.error is None
    metrics = result.metrics
    from hpe_ray.evaluate import mean_pose_tables

    baseline_mm = mean_pose_tables(pose_shards, "val")["MPJPE (P1)"]["Average"]  # answering the training mean pose
    assert metrics["epoch"] == 4
    assert metrics["val_mpjpe"] < 0.6 * baseline_mm, (metrics["val_mpjpe"], baseline_mm)
    assert metrics["val_pa_mpjpe"] <= metrics["val_mpjpe"]
    assert metrics["val_mpjpe_best_of_k"] <= metrics["val_mpjpe"] + 1.0
    assert metrics["val_mpjpe_best"] <= metrics["val_mpjpe"]
    for name in ("loss_pose2d_to_pose3d", "kl", "beta", "lr", "train_samples_per_s"):
        assert math.isfinite(metrics[name])
    run_dir = Path(result.path)
    assert _checkpoint_epochs(run_dir) == [1, 2, 3, 4]
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert b"val_mpjpe" in events and b"val/predictions" in events  # scalars and the prediction grid
    state = torch.load(Path(result.checkpoint.path) / CHECKPOINT_FILE, weights_only=True)
    assert state["extra"]["global_step"] == 4 * EPOCH_STEPS_LIFTING
    # The commonest training camera travels with the checkpoint, for keypoints without intrinsics.
    from hpe_ray.data.stream import load_pose_arrays
    from hpe_ray.inference import Lifter

    focal, center = most_common_camera(load_pose_arrays(pose_shards, "train").intrinsics)
    np.testing.assert_allclose(state["extra"]["train_camera"], [*focal, *center])
    lifter = Lifter(load_checkpoint(result.checkpoint.path))
    lifter.checkpoint.cfg.data.dir = "/nonexistent"  # the stored camera is used, not the dataset
    np.testing.assert_allclose(np.concatenate(lifter.default_camera()), [*focal, *center])


@pytest.mark.slow
def test_evaluate_a_trained_checkpoint(lifting_run, pose_shards, tmp_path):
    from hpe_ray.evaluate import AVERAGE_ROW, evaluate_checkpoint, write_tables

    cfg, result = lifting_run
    run_dir = Path(result.path)
    result_test = evaluate_checkpoint(run_dir, pose_shards, split="test", hypotheses=3)
    csv_path, md_path = write_tables(result_test, tmp_path)
    rows = csv_path.read_text().splitlines()
    actions = {row.split(",")[0] for row in rows[1:]}
    assert actions == {*np.unique(result_test.actions), AVERAGE_ROW} and len(actions) == 11
    assert rows[-1].startswith(AVERAGE_ROW) and "best of 3" in rows[0]
    assert "action-wise" in md_path.read_text()
    # The best checkpoint evaluated on val reproduces the val_mpjpe the train loop reported for it.
    best = json.loads((best_checkpoint_dir(run_dir) / "metrics.json").read_text())
    result_val = evaluate_checkpoint(run_dir, pose_shards, split="val")
    assert result_val.errors["mpjpe"].mean() == pytest.approx(best["val_mpjpe"], rel=1e-4)
    # On its own training data: finite, and alignment lowers the error. Only on average:
    # Procrustes minimises squared distances, so a single frame's mean distance can grow.
    result_train = evaluate_checkpoint(run_dir, pose_shards, split="train", hypotheses=2)
    for errors in result_train.errors.values():
        assert np.isfinite(errors).all()
    tables = list(result_train.tables.values())
    assert tables[1]["Average"] < tables[0]["Average"] and tables[3]["Average"] < tables[2]["Average"]


def _kill_a_train_worker_after(run_dir: Path, epochs_done: int, killed: list[int]) -> None:
    """SIGKILL one Ray Train worker process once Ray's controller has registered `epochs_done`
    checkpoints (its snapshot file lists them). The fault comes from outside, as a crash or the
    OOM killer would; the production loop has no hook."""
    import signal
    import time

    import psutil

    def registered() -> int:
        try:
            snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):  # not written yet, or being written
            return 0
        return len(snapshot["checkpoint_results"])

    deadline = time.monotonic() + 300
    while registered() < epochs_done and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
            process.send_signal(signal.SIGKILL)
            killed.append(process.pid)
            return


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint(ray_cluster, pose_shards, tmp_path):
    import threading

    from hpe_ray.distributed import run_training

    cfg = _lifting_cfg(pose_shards, tmp_path, "killed", epochs=4).with_overrides({"train.steps_per_epoch": 10})
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_train_worker_after, args=(tmp_path / "killed", 1, killed))
    killer.start()
    result = run_training(cfg)
    killer.join()
    assert killed, "no Ray Train worker was found to kill"
    assert result.error is None and result.metrics["epoch"] == 4
    epochs = _checkpoint_epochs(tmp_path / "killed")
    # Epoch 1 exactly once: the restarted workers went on from a checkpoint, not from scratch.
    assert set(epochs) == {1, 2, 3, 4} and epochs.count(1) == 1, epochs


@pytest.mark.slow
def test_the_core_trains_in_process_like_the_ray_path(ray_cluster, pose_shards, tmp_path):
    """One process, no Ray: the same seed and budget reach the same validation error as one Ray
    Train worker (the same Trainer runs in both)."""
    from hpe_ray.distributed import run_training
    from hpe_ray.training.loop import fit

    cfg = _lifting_cfg(pose_shards, tmp_path, "one-worker", epochs=2).with_overrides(
        {"scaling.workers": 1, "train.steps_per_epoch": 30})
    history = fit(cfg, tmp_path / "in-process")
    ray_result = run_training(cfg)
    assert [m["epoch"] for m in history] == [1, 2]
    print(f"val MPJPE after 2 epochs: in process {history[-1]['val_mpjpe']:.2f} mm, "
          f"one Ray Train worker {ray_result.metrics['val_mpjpe']:.2f} mm")  # shown with -s
    assert history[-1]["val_mpjpe"] == pytest.approx(ray_result.metrics["val_mpjpe"], rel=0.02)
    assert _checkpoint_epochs(tmp_path / "in-process") == [1, 2]
    assert load_checkpoint(tmp_path / "in-process").metrics["epoch"] in (1, 2)


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> Path:
    """Rendered 32 px crops: 800 train, 320 val samples."""
    return _write_synthetic(tmp_path_factory.mktemp("data") / "images", frames=4, image_size=32,
                            splits=("train", "val"))


@pytest.mark.slow
def test_cross_modal_pairs_checkpoints_and_resume(ray_cluster, image_shards, tmp_path):
    from hpe_ray.evaluate import evaluate_checkpoint
    from hpe_ray.distributed import run_training

    pairs = {"pose2d_to_pose3d": 1.0, "rgb_to_pose3d": 1.0, "rgb_to_rgb": 1.0, "pose2d_to_pose2d": 1.0}
    cfg = Config().with_overrides({
        "data.dir": str(image_shards), "data.image_size": 32, "loss.pairs": pairs,
        "model.latent_dim": 16, "model.hidden": 64, "model.blocks": 2,
        "train.epochs": 1, "train.batch_size": 16, "train.steps_per_epoch": 4, "train.eval_hypotheses": 2,
        "scaling.workers": 2, "run.storage": str(tmp_path), "run.name": "cross", "run.checkpoints_to_keep": 10})
    first = run_training(cfg)
    assert first.error is None and first.metrics["epoch"] == 1
    for pair in pairs:
        assert math.isfinite(first.metrics[f"loss_{pair}"]), pair
    assert _checkpoint_epochs(tmp_path / "cross") == [1]

    second = run_training(cfg.with_overrides({"train.epochs": 2}))
    assert second.error is None and second.metrics["epoch"] == 2
    assert _checkpoint_epochs(tmp_path / "cross") == [1, 2]
    state = torch.load(Path(second.checkpoint.path) / CHECKPOINT_FILE, weights_only=True)
    assert state["extra"]["global_step"] == 8  # 4 steps per epoch, continued from the first run

    from_rgb = evaluate_checkpoint(tmp_path / "cross", image_shards, split="val", modality="rgb")
    assert len(from_rgb.actions) == 320 and np.isfinite(from_rgb.errors["mpjpe"]).all()


def test_streaming_runs_verify_the_shards_once_on_the_driver(tmp_path):
    from conftest import write_tiny_dataset

    from hpe_ray.data.sample import BadSampleError
    from hpe_ray.training.data import verify_training_data

    data_dir = write_tiny_dataset(tmp_path / "data")
    shard = data_dir / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    lifting = Config().with_overrides({"data.dir": str(data_dir)})
    # In-memory lifting reads the poses index, not the tars, and checks their sizes (a stat).
    with pytest.raises(BadSampleError, match=r"val-000000\.tar: \d+ bytes, the manifest says \d+"):
        verify_training_data(lifting)
    verify_training_data(lifting.with_overrides({"data.on_error": "skip"}))  # a warning
    with pytest.raises(BadSampleError, match=r"val-000000\.tar"):
        verify_training_data(lifting.with_overrides({"data.in_memory": "never"}))


# ---------------------------------------------------------------- a diverging run

def _poisoned_trainer(data_dir: Path, nonfinite_loss: str):
    """A Trainer whose second train batch of every epoch carries a NaN 2D input (the fault)."""
    from hpe_ray.models.vae import BATCH_KEY
    from hpe_ray.training.loop import Trainer

    cfg = Config().with_overrides({
        "data.dir": str(data_dir), "model.latent_dim": 8, "model.hidden": 32, "model.blocks": 2,
        "train.epochs": 1, "train.steps_per_epoch": 6, "train.batch_size": 32, "train.eval_hypotheses": 2,
        "train.nonfinite_loss": nonfinite_loss})
    trainer = Trainer(cfg)
    clean = trainer._train_batches

    def poisoned(epoch):
        for index, batch in enumerate(clean(epoch)):
            if index == 1:
                batch = {**batch, BATCH_KEY["pose2d"]: torch.full_like(batch[BATCH_KEY["pose2d"]], math.nan)}
            yield batch

    trainer._train_batches = poisoned
    return trainer


def test_a_nonfinite_loss_stops_the_run_naming_epoch_and_batch(tiny_dataset):
    from hpe_ray.training.loop import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"^epoch 1, batch 2: the loss is not finite \(pose2d_to_pose3d=nan\)"):
        _poisoned_trainer(tiny_dataset, "stop").run_epoch()


def test_a_nonfinite_loss_can_be_skipped_and_counted(tiny_dataset):
    metrics = _poisoned_trainer(tiny_dataset, "skip").run_epoch()
    assert metrics["nonfinite_steps"] == 1
    assert math.isfinite(metrics["val_mpjpe"]) and math.isfinite(metrics["loss_pose2d_to_pose3d"])


def test_a_diverged_model_stops_at_validation(tiny_dataset, tmp_path):
    """Weights that overflow on a finite loss: validation names it instead of failing in an SVD."""
    from hpe_ray.training.loop import NonFiniteError

    with pytest.raises(NonFiniteError, match="the model predicts non-finite poses|the loss is not finite"):
        train_tiny_checkpoint(tiny_dataset, tmp_path, steps=20, overrides={
            "train.lr": 1e30, "train.grad_clip": 0.0, "train.nonfinite_loss": "skip"})
    assert not list(tmp_path.glob("checkpoint_*"))


def test_the_sample_temperature_is_the_grid_value_with_the_lowest_best_of_k_error(tiny_dataset, tmp_path):
    """fit_sample_temperature picks, from the same noise at every temperature, the spread whose
    hypotheses come closest on validation data, and leaves it in the checkpoint."""
    checkpoint = train_tiny_checkpoint(tiny_dataset, tmp_path / "run", steps=20)
    loaded = load_checkpoint(checkpoint)
    stored = loaded.metrics["sample_temperature"]
    assert stored in SAMPLE_TEMPERATURES
    assert float(loaded.model.sample_temperature) == pytest.approx(stored)
    device = torch.device("cpu")
    batches = val_batches(loaded.cfg, loaded.stats, "pose2d", 0, 1, device)
    rng_before = torch.get_rng_state()
    chosen = fit_sample_temperature(loaded.model, batches(), "pose2d", loaded.stats, 4, device)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training's random state untouched
    errors = []
    for temperature in SAMPLE_TEMPERATURES:
        loaded.model.sample_temperature.fill_(temperature)
        total = 0.0
        for index, batch in enumerate(batches()):
            torch.manual_seed(index)
            total += batch_errors(loaded.model, to_device(batch, device), "pose2d", loaded.stats, 4,
                                  ("mpjpe_best_of_k",))["mpjpe_best_of_k"].sum().item()
        errors.append(total)
    assert chosen == SAMPLE_TEMPERATURES[errors.index(min(errors))]
    # Training fits it on samples spread over the whole split, not on its first (few) actions.
    from hpe_ray.data.stream import load_pose_arrays
    val = load_pose_arrays(tiny_dataset, "val")
    spread = val_batches(loaded.cfg, loaded.stats, "pose2d", 0, 1, device, max_samples=4)()
    assert sum((b["action"] for b in spread), []) == val.action[np.linspace(0, len(val) - 1, 4).round().astype(int)].tolist()
    assert max(errors) > min(errors)  # the spread matters: the choice is not a tie


def test_capped_image_validation_takes_evenly_spaced_samples_over_ranks(tmp_path):
    """A cap on streamed (image) validation keeps every stride-th sample of the split, as the
    pose path does, not the first batches in shard order (a few actions)."""
    from conftest import write_tiny_dataset
    from hpe_ray.data.stream import load_pose_arrays, load_stats

    data_dir = write_tiny_dataset(tmp_path / "data", image_size=32)
    keys = load_pose_arrays(data_dir, "val").key.tolist()  # 144, in shard order
    cfg = Config().with_overrides({"data.dir": str(data_dir), "data.image_size": 32, "train.batch_size": 4})
    stats = load_stats(data_dir)

    def taken(rank: int, world_size: int) -> list[str]:
        return sum((b["key"] for b in val_batches(cfg, stats, "rgb", rank, world_size, torch.device("cpu"),
                                                  max_samples=5)()), [])

    assert taken(0, 1) == keys[::29]  # stride ceil(144 / 5)
    assert taken(0, 2) == keys[::58] and taken(1, 2) == keys[1::58]


def test_an_unreadable_checkpoint_is_set_aside_so_resume_prune_and_best_skip_it(tiny_dataset, tmp_path):
    """Found by the fault suite: a damaged checkpoint left in place ranked among the best by its
    metrics, pruning removed good ones, and a second damage left nothing to resume from."""
    from hpe_ray.training.checkpoint import run_checkpoints, set_aside_unreadable
    from hpe_ray.training.loop import fit

    run = tmp_path / "run"
    checkpoint = train_tiny_checkpoint(tiny_dataset, run, steps=5, epochs=3,
                                       overrides={"run.checkpoints_to_keep": 3})
    assert [int(m["epoch"]) for m, _ in run_checkpoints(run)] == [1, 2, 3]
    checkpoint.write_bytes(b"not a checkpoint")
    assert best_checkpoint_dir(run) in {d for _, d in run_checkpoints(run)}
    moved = set_aside_unreadable(run)
    assert moved == [run / "unreadable" / checkpoint.parent.name]
    assert (moved[0] / CHECKPOINT_FILE).read_bytes() == b"not a checkpoint"  # kept for inspection
    assert [int(m["epoch"]) for m, _ in run_checkpoints(run)] == [1, 2]
    assert set_aside_unreadable(run) == []
    cfg = load_checkpoint(run / "checkpoint_epoch_0002").cfg
    fit(cfg, run)  # resumes at 2 and writes epoch 3 again
    assert [int(m["epoch"]) for m, _ in run_checkpoints(run)] == [1, 2, 3]


def test_checkpoints_set_aside_are_dropped_from_ray_trains_list(tmp_path):
    """Ray refuses to resume a run whose checkpoint list names a missing folder."""
    from hpe_ray.distributed import RAY_SNAPSHOT, _forget_in_ray_snapshot

    def entry(name: str) -> dict:
        return {"version": 0, "checkpoint_dir_name": name, "metrics": {"val_mpjpe": 1.0}}

    (tmp_path / RAY_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": [entry("a"), entry("b"), entry("c")], "checkpoint_report_indices": [1, 3, 5],
        "latest_checkpoint_result": entry("c"), "pending_training_results": [entry("c")],
        "pending_validation_specs": [None], "current_report_index": 6, "validated_checkpoint_dir_names": ["a", "c"]}))
    _forget_in_ray_snapshot(tmp_path, {"c"})
    state = json.loads((tmp_path / RAY_SNAPSHOT).read_text())
    assert [r["checkpoint_dir_name"] for r in state["checkpoint_results"]] == ["a", "b"]
    assert state["checkpoint_report_indices"] == [1, 3]
    assert state["latest_checkpoint_result"]["checkpoint_dir_name"] == "b"  # the newest reported that is left
    assert state["pending_training_results"] == [] and state["pending_validation_specs"] == []
    assert state["validated_checkpoint_dir_names"] == ["a"] and state["current_report_index"] == 6


def test_resuming_with_another_model_fails_at_once_naming_the_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    """The same run name with a wider MLP: one ValueError naming the checkpoint, from `fit` and
    from `hpe-ray train`'s launcher before any Ray work (a retry could not fix it)."""
    import ray

    from hpe_ray import distributed
    from hpe_ray.training.loop import fit

    run = tmp_path / "runs" / "tiny"
    train_tiny_checkpoint(tiny_dataset, run, steps=5)
    wider = load_checkpoint(run).cfg.with_overrides({"model.hidden": 64, "train.epochs": 2,
                                                     "run.storage": str(tmp_path / "runs"), "run.name": "tiny"})
    with pytest.raises(ValueError, match=r"checkpoint_epoch_0001: this run's checkpoint was made by another model"):
        fit(wider, run)

    def ray_work(*args, **kwargs):  # Ray may already run in this test process: watch its entry points
        raise AssertionError("Ray work started before the checkpoint was checked")

    monkeypatch.setattr(distributed, "make_trainer", ray_work)
    monkeypatch.setattr(ray, "init", ray_work)
    with pytest.raises(ValueError, match=r"checkpoint_epoch_0001: .*size mismatch"):
        distributed.run_training(wider)
