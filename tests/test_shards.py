import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpe_ray import camera, normalization
from hpe_ray.data import shards, stream
from hpe_ray.data.sample import BadSampleError, PoseSample, make_key

# A standing body in the camera frame (x right, y down), pelvis at the origin, mm.
TEMPLATE_POSE_MM = np.array([
    [0, 0, 0], [-130, 0, 0], [-130, 450, 0], [-130, 880, 0], [130, 0, 0], [130, 450, 0], [130, 880, 0],
    [0, -230, 0], [0, -480, 0], [0, -580, 0], [0, -690, 0], [170, -450, 0], [200, -200, 0], [220, 30, 0],
    [-170, -450, 0], [-200, -200, 0], [-220, 30, 0]], dtype=np.float64)
ACTIONS = ("Walking", "Eating", "Sitting Down")


def make_samples(n: int, subject: str, *, seed: int = 0, image_px: int | None = 24) -> list[PoseSample]:
    """n random bodies 4-6 m in front of the four H36M cameras, projected; smooth random crops."""
    rng = np.random.default_rng(seed)
    samples = []
    for frame in range(n):
        camera_id = camera.H36M_CAMERA_IDS[frame % 4]
        intrinsics = camera.H36M_INTRINSICS[camera_id]
        yaw = rng.uniform(-np.pi, np.pi)
        rotation = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        pose = (TEMPLATE_POSE_MM @ rotation.T + rng.normal(0, 30, (17, 3))
                + [rng.uniform(-500, 500), rng.uniform(-200, 200), rng.uniform(4000, 6000)]).astype(np.float32)
        keypoints = camera.project_to_pixels(pose, intrinsics).astype(np.float32)
        image, crop_box = None, np.zeros(4, np.float32)
        if image_px:
            rows, cols = np.mgrid[0:image_px, 0:image_px] * (255 / image_px)
            image = np.clip(np.stack([cols, rows, (rows + cols) / 2], -1) * rng.uniform(0.5, 1.0)
                            + rng.uniform(0, 60), 0, 255).astype(np.uint8)
            crop_box = np.concatenate([keypoints.min(0) - 20, keypoints.max(0) + 20]).astype(np.float32)
        action = ACTIONS[frame % len(ACTIONS)]
        samples.append(PoseSample(
            key=make_key("test", subject, action, camera_id, f"{frame:06d}"), keypoints_2d_px=keypoints,
            pose_3d_cam_mm=pose, intrinsics=intrinsics, subject=subject, action=action, camera_id=camera_id,
            frame=frame, image=image, crop_box_px=crop_box))
    return samples


def make_splits(train: int = 10, val: int = 4, test: int = 3, **kw) -> dict[str, list[PoseSample]]:
    return {"train": make_samples(train, "S1", seed=1, **kw), "val": make_samples(val, "S6", seed=2, **kw),
            "test": make_samples(test, "S9", seed=3, **kw)}


def write_dataset(out_dir: Path, splits: dict[str, list[PoseSample]] | None = None, **kw) -> dict:
    kw.setdefault("max_samples_per_shard", 4)
    return shards.write_shards(splits or make_splits(), out_dir, source="test", settings={"seed": 1}, **kw)


def test_round_trip_keeps_every_field(tmp_path):
    splits = make_splits()
    write_dataset(tmp_path / "data", splits)
    for split, originals in splits.items():
        read = list(stream.iter_samples(tmp_path / "data", split))
        assert [s.key for s in read] == [s.key for s in originals]
        for got, want in zip(read, originals):
            np.testing.assert_array_equal(got.keypoints_2d_px, want.keypoints_2d_px)
            np.testing.assert_array_equal(got.pose_3d_cam_mm, want.pose_3d_cam_mm)
            np.testing.assert_array_equal(got.intrinsics.as_vector(), want.intrinsics.as_vector())
            assert got.intrinsics.image_size == want.intrinsics.image_size
            assert (got.subject, got.action, got.camera_id, got.frame) == (
                want.subject, want.action, want.camera_id, want.frame)
            np.testing.assert_array_equal(got.crop_box_px, want.crop_box_px)
            assert got.image.shape == want.image.shape and got.image.dtype == np.uint8
            error = np.abs(got.image.astype(int) - want.image)
            assert error.mean() < 2 and error.max() < 25  # JPEG quality 90 on a smooth image


def test_manifest_counts_shards_and_summary(tmp_path):
    manifest = write_dataset(tmp_path / "data")
    assert manifest == shards.load_manifest(tmp_path / "data")
    train = manifest["splits"]["train"]
    assert train["count"] == 10 and train["with_images"] == 10
    assert train["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert train["shard_counts"] == [4, 4, 2]
    assert train["shard_bytes"] == [(tmp_path / "data" / name).stat().st_size for name in train["shards"]]
    assert train["bytes"] == sum(train["shard_bytes"])
    assert train["subjects"] == ["S1"] and train["actions"] == sorted(ACTIONS)
    assert train["camera_ids"] == sorted(camera.H36M_CAMERA_IDS)
    assert [manifest["splits"][s]["count"] for s in ("val", "test")] == [4, 3]
    assert manifest["skipped"] == {"train": {}, "val": {}, "test": {}}
    assert manifest["source"] == "test" and manifest["settings"] == {"seed": 1}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        ["manifest.json", "stats.json"] + [n + ext for e in manifest["splits"].values() for n in e["shards"]
                                           for ext in ("", ".idx")]
        + [f"{split}-poses.npz" for split in ("train", "val", "test")])
    text = shards.summary(tmp_path / "data")
    assert "train: 10 samples (10 with images) in 3 shards" in text and "2-4 samples per shard" in text
    assert "subjects (1): S9" in text


def test_poses_only_samples_store_no_jpeg(tmp_path):
    manifest = write_dataset(tmp_path / "data", make_splits(image_px=None))
    assert manifest["splits"]["train"]["with_images"] == 0
    assert all(s.image is None for s in stream.iter_samples(tmp_path / "data", "train"))


def test_stats_come_from_the_training_split_only(tmp_path):
    splits = make_splits()
    write_dataset(tmp_path / "a", splits)
    write_dataset(tmp_path / "b", {**splits, "val": make_samples(6, "S6", seed=99)})
    stats_a = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats_a == json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats_a["num_samples"] == 10 and len(stats_a["joint_names"]) == 17
    train = stream.load_pose_arrays(tmp_path / "a", "train")
    for mode_2d in ("camera", "pixel"):
        expected = normalization.compute_stats(train.keypoints_2d_px, train.pose_3d_cam_mm,
                                               train.intrinsics[:, :2], train.intrinsics[:, 2:4], mode_2d)
        loaded = stream.load_stats(tmp_path / "a", mode_2d)
        assert loaded.mode_2d == mode_2d
        np.testing.assert_allclose(loaded.mean_2d, expected.mean_2d, rtol=1e-6)
        np.testing.assert_allclose(loaded.std_3d, expected.std_3d, rtol=1e-6)


def _failing_after(samples, n):
    yield from samples[:n]
    raise RuntimeError("source broke half-way")


def test_failed_conversion_leaves_no_dataset(tmp_path):
    splits = make_splits()
    with pytest.raises(RuntimeError, match="half-way"):
        write_dataset(tmp_path / "data", {**splits, "val": _failing_after(splits["val"], 2)})
    assert list(tmp_path.iterdir()) == []  # neither data/ nor the partial directory


def test_partial_folders_of_killed_conversions_are_removed(tmp_path, caplog):
    """Of this host's and older hpe_ray's (no host) partial folders, those of a PID that no longer
    runs; another host's PIDs mean nothing here, a live PID may still be writing."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, host = int(ended.stdout), shards._host()
    stale = [tmp_path / f".data.partial-{host}-{dead}", tmp_path / f".other.partial-{dead}"]
    kept = [tmp_path / f".data.partial-elsewhere-{dead}", tmp_path / f".data.partial-{host}-{os.getppid()}"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "train-000000.tar").write_bytes(b"half a shard")
    write_dataset(tmp_path / "data")
    assert [folder.exists() for folder in stale + kept] == [False, False, True, True]
    assert f"removing {stale[0]}: left by a conversion (PID {dead}) that no longer runs" in caplog.text


def test_existing_dataset_is_replaced_only_with_overwrite(tmp_path):
    write_dataset(tmp_path / "data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dataset(tmp_path / "data")
    manifest = write_dataset(tmp_path / "data", make_splits(train=5), overwrite=True)
    assert manifest["splits"]["train"]["count"] == 5
    assert stream.load_pose_arrays(tmp_path / "data", "train").key.shape == (5,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset"):
        write_dataset(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def _bad_train_samples() -> list[PoseSample]:
    samples = make_samples(8, "S1", seed=1)
    samples[1].keypoints_2d_px = samples[1].keypoints_2d_px.copy()
    samples[1].keypoints_2d_px[3, 0] = np.nan
    samples[4].pose_3d_cam_mm = samples[4].pose_3d_cam_mm[:16]
    samples[6].key = samples[2].key
    return samples


def test_skip_mode_counts_invalid_samples_by_reason(tmp_path):
    manifest = write_dataset(tmp_path / "data", {"train": _bad_train_samples()}, on_error="skip")
    assert manifest["splits"]["train"]["count"] == 5
    assert manifest["skipped"]["train"] == {
        "keypoints_2d_px contains NaN or infinite coordinates": 1,
        "pose_3d_cam_mm has shape (16, 3), expected (17, 3)": 1,
        "duplicate key": 1}
    assert "skipped 3" in shards.summary(tmp_path / "data")


def test_raise_mode_names_the_split_and_key(tmp_path):
    samples = _bad_train_samples()
    with pytest.raises(BadSampleError, match=rf"test train split: sample '{samples[1].key}': keypoints_2d_px"):
        write_dataset(tmp_path / "data", {"train": samples})
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        write_dataset(tmp_path / "data", on_error="ignore")
    with pytest.raises(ValueError, match="split names"):
        write_dataset(tmp_path / "data", {"train/x": make_samples(2, "S1")})
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        shards.load_manifest(tmp_path)


def test_summary_lists_long_name_lists_in_part(tmp_path):
    """291 clips as subjects: the line shows the count and the first names, the rest on request."""
    manifest = write_dataset(tmp_path / "data")
    clips = [f"clip{i:03d}" for i in range(291)]
    manifest["splits"]["train"]["subjects"] = clips
    (tmp_path / "data" / shards.MANIFEST_FILE).write_text(json.dumps(manifest))
    short = shards.summary(tmp_path / "data").splitlines()
    line = next(text for text in short if text.startswith("  subjects (291)"))
    assert line.endswith("clip011, ... 279 more (--full lists them)") and "clip012" not in line
    full = shards.summary(tmp_path / "data", full=True)
    assert ", ".join(clips) in full and "more (--full" not in full
