import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import webdataset as wds

from hpe_ray import normalization
from hpe_ray.data import shards, stream
from hpe_ray.data.sample import BadSampleError
from hpe_ray.data.tar_index import index_path, read_indexed, tar_members, write_member_index
from test_shards import make_samples, make_splits, write_dataset


@pytest.fixture
def dataset(tmp_path) -> Path:
    """23 training samples in shards of 5, 5, 5, 5, 3 (uneven), 4 val, 3 test; 24 px crops."""
    write_dataset(tmp_path / "data", make_splits(train=23), max_samples_per_shard=5)
    return tmp_path / "data"


def _loader(data_dir, split="train", *, batch_size=4, with_images=False, **kw):
    kw.setdefault("image_size", 24)
    kw.setdefault("num_workers", 0)
    return stream.make_loader(data_dir, split, batch_size, with_images=with_images,
                              stats=stream.load_stats(data_dir), shuffle_buffer=8, **kw)


def _eval_loader(data_dir, split="train", *, batch_size=4, with_images=False, **kw):
    return stream.make_eval_loader(data_dir, split, batch_size, with_images=with_images, image_size=24,
                                   stats=stream.load_stats(data_dir), **kw)


def test_load_pose_arrays_matches_the_samples(dataset):
    arrays = stream.load_pose_arrays(dataset, "train")
    originals = make_samples(23, "S1", seed=1)
    assert len(arrays) == 23 and arrays.keypoints_2d_px.shape == (23, 17, 2)
    assert arrays.key.tolist() == [s.key for s in originals]
    np.testing.assert_array_equal(arrays.pose_3d_cam_mm, np.stack([s.pose_3d_cam_mm for s in originals]))
    np.testing.assert_array_equal(arrays.intrinsics[5], originals[5].intrinsics.as_vector())
    assert arrays.frame.tolist() == list(range(23))
    assert (arrays.subject[0], arrays.action[2]) == ("S1", "Sitting Down")
    assert arrays.camera_id[1] == originals[1].camera_id


def test_poses_index_equals_the_shards(dataset):
    from_index = stream.load_pose_arrays(dataset, "train")
    from_tars = stream.load_pose_arrays(dataset, "train", use_index=False)
    for name in ("key", "keypoints_2d_px", "pose_3d_cam_mm", "intrinsics", "subject", "action", "camera_id", "frame"):
        np.testing.assert_array_equal(getattr(from_index, name), getattr(from_tars, name))


def test_poses_index_that_disagrees_with_the_manifest_is_named(dataset):
    index_path = dataset / "train-poses.npz"
    with np.load(index_path) as index:
        columns = {name: index[name][:-1] for name in index.files}
    np.savez(index_path, **columns)
    with pytest.raises(BadSampleError, match=r"train-poses\.npz: poses index does not match the manifest"):
        stream.load_pose_arrays(dataset, "train")


def test_batches_are_normalised_with_the_stats(dataset):
    stats = stream.load_stats(dataset)
    arrays = stream.load_pose_arrays(dataset, "train")
    row = {key: i for i, key in enumerate(arrays.key)}
    batch = next(iter(_loader(dataset, with_images=True, image_size=16)))
    index = [row[key] for key in batch["key"]]
    intrinsics = arrays.intrinsics[index]
    expected_2d = normalization.normalize_2d(arrays.keypoints_2d_px[index], intrinsics[:, :2], intrinsics[:, 2:4],
                                             stats)
    expected_3d = normalization.normalize_3d(arrays.pose_3d_cam_mm[index], stats)
    np.testing.assert_allclose(batch["pose_2d"].numpy(), expected_2d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch["pose_3d"].numpy(), expected_3d, rtol=1e-5, atol=1e-5)
    relative = arrays.pose_3d_cam_mm[index] - arrays.pose_3d_cam_mm[index, :1]
    np.testing.assert_allclose(batch["pose_3d_cam_mm"].numpy(), relative, atol=1e-3)
    assert batch["pose_3d_cam_mm"].shape == (4, 17, 3) and batch["intrinsics"].shape == (4, 9)
    assert batch["action"] == arrays.action[index].tolist() and batch["subject"] == ["S1"] * 4
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32  # resized from 24
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1


def test_image_pixels_map_to_minus_one_one(dataset):
    batch = next(iter(_eval_loader(dataset, batch_size=2, with_images=True)))
    stored = [s.image for s in stream.iter_samples(dataset, "train")][:2]
    np.testing.assert_allclose(batch["image"].permute(0, 2, 3, 1).numpy(), np.stack(stored) / 127.5 - 1, atol=1e-6)


def test_ranks_get_the_same_number_of_batches_from_uneven_shards(dataset):
    per_rank = []
    for rank in (0, 1):
        loader = _loader(dataset, rank=rank, world_size=2)
        epochs = [[len(batch["key"]) for batch in loader] for _ in range(2)]
        per_rank.append(epochs)
    # ceil(23 / (2 ranks * 4)) = 3 full batches, every epoch, on both ranks.
    assert per_rank == [[[4, 4, 4], [4, 4, 4]]] * 2


def test_rank_comes_from_the_environment(dataset, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert stream.distributed_rank_and_world_size() == (2, 3)
    assert len(list(_loader(dataset))) == 2  # ceil(23 / (3 * 4))
    with pytest.raises(ValueError, match="rank"):
        _loader(dataset, rank=3)


def test_training_stream_follows_the_seed(dataset):
    def first_keys(seed):
        return [key for batch in _loader(dataset, seed=seed, batches_per_epoch=2) for key in batch["key"]]

    assert first_keys(0) == first_keys(0)
    assert first_keys(0) != first_keys(1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_visits_every_sample_once_across_ranks(dataset, num_workers):
    keys = Counter()
    per_rank = []
    for rank in range(3):
        batches = list(_eval_loader(dataset, rank=rank, world_size=3, num_workers=num_workers))
        per_rank.append(sum(len(b["key"]) for b in batches))
        keys.update(key for b in batches for key in b["key"])
    assert sorted(keys) == sorted(stream.load_pose_arrays(dataset, "train").key.tolist())
    assert set(keys.values()) == {1}
    assert per_rank == [8, 8, 7]


def test_poses_only_reading_never_decodes_a_jpeg(dataset, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a JPEG was decoded")

    monkeypatch.setattr(stream, "decode_jpeg", no_decoding)
    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    assert len(stream.load_pose_arrays(dataset, "train")) == 23
    assert len(next(iter(_loader(dataset)))["key"]) == 4
    assert sum(len(b["key"]) for b in _eval_loader(dataset)) == 23
    with pytest.raises(AssertionError, match="JPEG was decoded"):  # the check itself works
        next(iter(_loader(dataset, with_images=True)))


def _rewrite_shard(path: Path, records: list[dict]) -> None:
    """As the conversion writes a shard: the tar, then its offset index."""
    with wds.TarWriter(str(path), encoder=False) as writer:
        for record in records:
            writer.write(record)
    write_member_index(path)


@pytest.fixture
def bad_dataset(dataset) -> tuple[Path, list[str]]:
    """Shard train-000001 rewritten with a NaN sample, a 16-joint sample and a missing field."""
    samples = make_samples(23, "S1", seed=1)[5:10]
    samples[0].pose_3d_cam_mm = samples[0].pose_3d_cam_mm.copy()
    samples[0].pose_3d_cam_mm[2, 1] = np.nan
    samples[1].keypoints_2d_px = samples[1].keypoints_2d_px[:16]
    records = [shards.encode_sample(s, "test") for s in samples]
    del records[3]["pose3d.npy"]
    _rewrite_shard(dataset / "train-000001.tar", records)
    # As if the writer itself had stored them: the manifest agrees with the shard's size.
    manifest = shards.load_manifest(dataset)
    manifest["splits"]["train"]["shard_bytes"][1] = (dataset / "train-000001.tar").stat().st_size
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    return dataset, [samples[i].key for i in (0, 1, 3)]


def test_skip_mode_counts_bad_samples(bad_dataset, caplog):
    data_dir, bad_keys = bad_dataset
    report = stream.verify_shards(data_dir, on_error="skip")
    assert report["train"] == {"samples": 20, "skipped": {
        "pose_3d_cam_mm contains NaN or infinite coordinates": 1,
        "keypoints_2d_px has shape (16, 2), expected (17, 2)": 1,
        "missing pose3d.npy": 1}}
    assert report["val"] == {"samples": 4, "skipped": {}}
    arrays = stream.load_pose_arrays(data_dir, "train", on_error="skip", use_index=False)
    assert len(arrays) == 20 and not set(bad_keys) & set(arrays.key)
    assert all(key in caplog.text for key in bad_keys)
    loader = _eval_loader(data_dir, on_error="skip")
    assert sum(len(b["key"]) for b in loader) == 20
    assert sum(loader.skips.counts.values()) == 3


def test_raise_mode_names_the_shard_and_key(bad_dataset):
    data_dir, bad_keys = bad_dataset
    pattern = rf"train-000001\.tar: sample '{bad_keys[0]}': pose_3d_cam_mm contains NaN"
    with pytest.raises(BadSampleError, match=pattern):
        stream.verify_shards(data_dir)
    with pytest.raises(BadSampleError, match=pattern):
        stream.load_pose_arrays(data_dir, "train", use_index=False)
    with pytest.raises(BadSampleError, match=pattern):
        _loader(data_dir)  # before the first batch
    with pytest.raises(BadSampleError, match=pattern):
        list(_eval_loader(data_dir, verify=False))  # and while streaming


def test_truncated_shard_is_named(dataset):
    loader = _eval_loader(dataset, verify=False)
    shard = dataset / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    with pytest.raises(BadSampleError, match=r"train-000002\.tar: unreadable after \d samples: truncated or corrupt"):
        list(loader)  # cut while streaming
    with pytest.raises(BadSampleError, match=r"train-000002\.tar: \d+ bytes, the manifest says \d+"):
        _loader(dataset, verify=False)  # seen from the size alone
    with pytest.raises(BadSampleError, match=r"train-000002\.tar: .*runs past the end"):
        stream.verify_shards(dataset)
    report = stream.verify_shards(dataset, ["train"], on_error="skip")
    # Counted in samples: those the manifest says the shard holds beyond the ones read.
    usable, skipped = report["train"]["samples"], report["train"]["skipped"]
    assert usable < 23 and sum(skipped.values()) == 23 - usable
    assert len(report["train"]["skipped"]) == 1 and "mismatches" not in report["train"]


@pytest.mark.parametrize("damage", ["cut", "garble"])
def test_damage_tarfile_reads_as_the_end_is_caught_by_the_count(dataset, damage):
    """tarfile takes a tar cut at a member boundary, or a garbled header, for the end of the
    archive: the sample count in the manifest catches both."""
    shard = dataset / "train-000000.tar"
    with tarfile.open(shard) as tar:
        fourth_sample = [m.offset for m in tar.getmembers() if m.name.endswith(".intr.npy")][3]
    data = shard.read_bytes()
    if damage == "cut":
        shard.write_bytes(data[:fourth_sample])
    else:
        shard.write_bytes(data[:fourth_sample] + b"\xff" * 100 + data[fourth_sample + 100:])
    with pytest.raises(BadSampleError, match=r"train-000000\.tar: holds 3 samples, the manifest says 5"):
        stream.verify_shards(dataset)


def test_missing_images_and_splits_are_refused_early(tmp_path):
    write_dataset(tmp_path / "data", make_splits(image_px=None))
    with pytest.raises(BadSampleError, match="images for 0 of 10"):
        _loader(tmp_path / "data", with_images=True)
    with pytest.raises(ValueError, match="no split 'extra'"):
        stream.load_pose_arrays(tmp_path / "data", "extra")


# ---------------------------------------------------------------- index and shards against each other

def _rewrite_index(path: Path, change) -> None:
    """The npz with `change(columns)` applied, every other column kept."""
    with np.load(path) as index:
        columns = {name: index[name] for name in index.files}
    change(columns)
    np.savez(path, **columns)


def _index_as_if_converted(data_dir: Path, split: str) -> None:
    """The manifest's size and sha256 of a changed poses index updated, as if the conversion had
    written it: only comparing it with the shards can then tell."""
    manifest = shards.load_manifest(data_dir)
    entry = manifest["splits"][split]
    path = data_dir / entry["poses_index"]
    entry["poses_bytes"], entry["poses_sha256"] = path.stat().st_size, shards.file_sha256(path)
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_records_shard_and_index_checksums(dataset):
    for split, entry in shards.load_manifest(dataset)["splits"].items():
        assert entry["shard_sha256"] == [hashlib.sha256((dataset / name).read_bytes()).hexdigest()
                                         for name in entry["shards"]]
        index = dataset / f"{split}-poses.npz"
        assert entry["poses_sha256"] == hashlib.sha256(index.read_bytes()).hexdigest()
        assert entry["poses_bytes"] == index.stat().st_size
    assert stream.verify_shards(dataset)["train"] == {"samples": 23, "skipped": {}}


def test_verify_names_a_shard_overwritten_with_random_bytes(dataset):
    shard = dataset / "test-000000.tar"
    shard.write_bytes(np.random.default_rng(0).bytes(shard.stat().st_size))  # same size: a stat cannot tell
    with pytest.raises(BadSampleError, match=r"test-000000\.tar: unreadable after 0 samples"):
        stream.verify_shards(dataset)
    stream.check_shard_sizes(dataset, "test")  # the cheap run-start check passes it: only verify hashes


def test_verify_names_a_shard_that_reads_well_but_was_replaced(dataset):
    """Same samples, other bytes (another mtime): the checksum alone tells."""
    shard = dataset / "train-000001.tar"
    with wds.TarWriter(str(shard), encoder=False, mtime=1) as writer:
        for sample in make_samples(23, "S1", seed=1)[5:10]:
            writer.write(shards.encode_sample(sample, "test"))
    assert shard.stat().st_size == shards.load_manifest(dataset)["splits"]["train"]["shard_bytes"][1]
    with pytest.raises(BadSampleError, match=r"train-000001\.tar: sha256 differs from the manifest's"):
        stream.verify_shards(dataset)
    report = stream.verify_shards(dataset, ["train"], on_error="skip")["train"]
    assert report["samples"] == 23 and report["skipped"] == {}
    assert len(report["mismatches"]) == 1 and "train-000001.tar: sha256 differs" in report["mismatches"][0]
    assert stream.verify_shards(dataset, ["train"], checksums=False)["train"] == {"samples": 23, "skipped": {}}


def test_nan_in_a_poses_index_is_named_by_verify_and_every_reader(dataset):
    def nan(columns):
        columns["pose_3d_cam_mm"][1, 4, 2] = np.nan

    _rewrite_index(dataset / "test-poses.npz", nan)
    pattern = r"test-poses\.npz: poses index holds non-finite values \(first at row 1, sample '.*S9"
    with pytest.raises(BadSampleError, match=pattern):
        stream.verify_shards(dataset)
    with pytest.raises(BadSampleError, match=pattern):
        stream.load_pose_arrays(dataset, "test")
    report = stream.verify_shards(dataset, ["test"], on_error="skip")["test"]
    assert report["samples"] == 3 and len(report["mismatches"]) == 1


def test_nan_in_intrinsics_of_an_index_is_named(dataset):
    _rewrite_index(dataset / "val-poses.npz", lambda columns: columns["intrinsics"].__setitem__((2, 0), np.inf))
    with pytest.raises(BadSampleError, match=r"val-poses\.npz: poses index holds non-finite values \(first at row 2"):
        stream.load_pose_arrays(dataset, "val")


def test_a_changed_index_is_named_by_its_checksum(dataset):
    """Finite, right count, other values: the manifest's size and sha256 tell, at every read."""
    _rewrite_index(dataset / "train-poses.npz", lambda columns: columns["pose_3d_cam_mm"].__imul__(1.01))
    with pytest.raises(BadSampleError, match=r"train-poses\.npz: sha256 differs from the manifest's"):
        stream.load_pose_arrays(dataset, "train")


def test_verify_names_an_index_whose_order_differs_from_the_shards(dataset):
    def swap(columns):
        for name in columns:
            columns[name][[3, 7]] = columns[name][[7, 3]]

    _rewrite_index(dataset / "train-poses.npz", swap)
    with pytest.raises(BadSampleError, match=r"train-poses\.npz: sha256 differs"):
        stream.load_pose_arrays(dataset, "train")
    _index_as_if_converted(dataset, "train")
    assert len(stream.load_pose_arrays(dataset, "train")) == 23  # sound by itself
    with pytest.raises(BadSampleError, match=r"train-poses\.npz: poses index does not match the shards: row 3 holds "
                                             r"'.*000007', the shards' sample there is '.*000003'"):
        stream.verify_shards(dataset)


def test_verify_names_an_index_whose_values_differ_from_the_shards(dataset):
    _rewrite_index(dataset / "val-poses.npz", lambda columns: columns["keypoints_2d_px"][2].__iadd__(0.5))
    _index_as_if_converted(dataset, "val")
    with pytest.raises(BadSampleError, match=r"val-poses\.npz: poses index does not match the shards: "
                                             r"keypoints_2d_px of sample '.*000002' \(row 2\) differs"):
        stream.verify_shards(dataset)


def test_a_manifest_without_checksums_is_read_with_one_warning(dataset, caplog):
    """Datasets converted before the checksums were recorded keep working."""
    manifest = shards.load_manifest(dataset)
    for entry in manifest["splits"].values():
        del entry["shard_sha256"], entry["poses_sha256"], entry["poses_bytes"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    shards._warned_without_checksums.clear()
    assert stream.verify_shards(dataset)["train"] == {"samples": 23, "skipped": {}}
    assert len(stream.load_pose_arrays(dataset, "val")) == 4
    warnings = [r.message for r in caplog.records if "records no checksums" in r.message]
    assert len(warnings) == 1


def test_shard_sizes_are_checked_by_a_stat(dataset, caplog):
    shard = dataset / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(BadSampleError, match=r"val-000000\.tar: \d+ bytes, the manifest says \d+"):
        stream.check_shard_sizes(dataset, "val")
    stream.check_shard_sizes(dataset, "val", on_error="skip")
    assert "val-000000.tar" in caplog.text
    (dataset / "val-000000.tar").unlink()
    with pytest.raises(BadSampleError, match=r"val-000000\.tar: missing"):
        stream.check_shard_sizes(dataset, "val")


# ---------------------------------------------------------------- skipped samples, counted

def _cut_mid_sample(shard: Path, sample: int) -> None:
    """Cut the shard in the middle of the pose member of its `sample`-th sample (0-based)."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".pose3d.npy")][sample]
    shard.write_bytes(shard.read_bytes()[:member.offset_data + member.size // 2])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_mode_counts_the_samples_a_truncated_shard_lost(dataset, num_workers):
    _cut_mid_sample(dataset / "train-000001.tar", 2)  # 2 of its 5 samples read, 3 lost
    report = stream.verify_shards(dataset, ["train"], on_error="skip")["train"]
    assert report["samples"] == 20 and list(report["skipped"].values()) == [3]
    for world_size in (1, 3):  # every rank reads every shard and counts the lost samples of its share
        batches = [batch for rank in range(world_size) for batch in _eval_loader(
            dataset, on_error="skip", num_workers=num_workers, rank=rank, world_size=world_size)]
        assert sum(len(b["key"]) for b in batches) == 20
        assert sum(b["skipped_samples"] for b in batches) == 3  # from the worker processes too


def test_skip_mode_reports_skipped_samples_per_epoch(tmp_path, caplog):
    """One 10-sample train shard cut after 4 samples: every draw of it loses 6, each counted
    in the epoch's metrics and its log line."""
    from hpe_ray.config import Config
    from hpe_ray.training.loop import fit

    write_dataset(tmp_path / "data", make_splits(train=10, image_px=None), max_samples_per_shard=10)
    _cut_mid_sample(tmp_path / "data" / "train-000000.tar", 4)
    cfg = Config().with_overrides({
        "data.dir": str(tmp_path / "data"), "data.in_memory": "never", "data.on_error": "skip",
        "data.shuffle_buffer": 0, "data.loader_workers": 0, "loss.pairs": {"pose2d_to_pose3d": 1.0},
        "model.latent_dim": 4, "model.hidden": 16, "model.blocks": 1, "train.epochs": 1, "train.batch_size": 4,
        "train.steps_per_epoch": 2, "train.eval_hypotheses": 2, "train.tensorboard_images_every": 0})
    caplog.set_level("INFO")
    (metrics,) = fit(cfg, tmp_path / "run")
    draws = sum("skipped 6 samples: " in r.message and "train-000000.tar: unreadable after 4 samples" in r.message
                for r in caplog.records)
    assert draws >= 2 and metrics["skipped_samples"] == 6 * draws and metrics["val_skipped_samples"] == 0
    (line,) = [r.message for r in caplog.records if r.message.startswith("epoch 1/1")]
    assert line.endswith(f"; skipped {6 * draws} bad samples (train {6 * draws}, val 0)")


# ---------------------------------------------------------------- the offset index beside each shard

def _tar_read(shard: Path, exts: frozenset[str]) -> list:
    return list(stream._read_tar(shard, exts))


def test_reading_by_offsets_gives_what_tarfile_gives(dataset):
    for shard in sorted(dataset.glob("*.tar")):
        members = json.loads(index_path(shard).read_text())["members"]
        assert members == tar_members(shard)
        for exts in (stream._POSES_ONLY, stream._WITH_IMAGES):
            assert list(read_indexed(shard, members, exts)) == _tar_read(shard, exts)


def test_a_shard_rewritten_in_another_order_is_refused_by_its_index_never_misread(dataset):
    """Same samples, same size, other order: every offset now points at another member."""
    shard = dataset / "train-000001.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    size = shard.stat().st_size
    with tarfile.open(shard, "w") as tar:
        for member, payload in reversed(members):
            tar.addfile(member, io.BytesIO(payload))
    assert shard.stat().st_size == size  # a stat cannot tell
    pattern = r"train-000001\.tar: .*member .* is not where .*train-000001\.tar\.idx says: the index disagrees"
    with pytest.raises(BadSampleError, match=pattern):
        list(_eval_loader(dataset, verify=False))
    report = stream.verify_shards(dataset, ["train"], on_error="skip", checksums=False)["train"]
    assert any("train-000001.tar.idx: member offsets disagree with" in m for m in report["mismatches"])


def test_an_edited_index_is_refused(dataset):
    shard = dataset / "train-000002.tar"
    index = json.loads(index_path(shard).read_text())
    index["members"][3][1] += 512  # one member's data offset moved by a block
    index_path(shard).write_text(json.dumps(index))
    with pytest.raises(BadSampleError, match=r"train-000002\.tar: .*is not where .* says"):
        list(_eval_loader(dataset, verify=False))
    with pytest.raises(BadSampleError, match=r"member offsets disagree"):
        stream.verify_shards(dataset, ["train"], checksums=False)


def test_an_index_that_does_not_fit_its_shard_is_passed_over_with_a_warning(dataset, caplog):
    """Truncated after conversion: the index is for another size, so tarfile reads the shard and
    reports where it breaks off, as without an index."""
    shard = dataset / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    report = stream.verify_shards(dataset, ["train"], on_error="skip", checksums=False)
    assert report["train"]["samples"] < 23
    list(_eval_loader(dataset, verify=False, on_error="skip"))
    assert "train-000002.tar.idx is for a" in caplog.text and "reading the tar without it" in caplog.text


def _jpeg(height: int, width: int, **save) -> bytes:
    gradient = np.linspace(0, 255, height * width * 3).reshape(height, width, 3).astype(np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(gradient).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def test_jpeg_size_reads_the_frame_header():
    assert stream.jpeg_size(_jpeg(24, 40)) == (24, 40)
    assert stream.jpeg_size(_jpeg(256, 96, progressive=True)) == (256, 96)
    assert stream.jpeg_size(b"\xff\xd8\xff") is None  # cut inside the first segment
    assert stream.jpeg_size(b"not a jpeg at all") is None


def test_a_jpeg_stored_larger_is_decoded_once_by_pils_draft_not_by_torchvision(monkeypatch):
    import torchvision.io

    data = _jpeg(256, 256)
    with PIL.Image.open(io.BytesIO(data)) as full:
        expected = np.asarray(full.convert("RGB").resize((64, 64), PIL.Image.Resampling.BILINEAR), dtype=float)

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision decoded a JPEG stored at another size")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse)
    image = stream.decode_jpeg(data, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.abs(image - expected).mean() < 4  # draft (1/4 scale) vs full decode + resize: a few levels
    with pytest.raises(ValueError, match="JPEG undecodable"):
        stream.decode_jpeg(data[: len(data) // 3], 64)


def test_a_jpeg_stored_at_the_size_goes_through_torchvision(monkeypatch):
    import torchvision.io

    calls = []
    original = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert stream.decode_jpeg(_jpeg(64, 64), 64).shape == (64, 64, 3)
    assert calls == [1]
