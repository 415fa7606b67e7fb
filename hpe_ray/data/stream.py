"""Reading shards: streaming loaders per rank and worker, and in-memory arrays for lifting.

- `make_loader`: training. Every rank draws shards at random with replacement (seeded per
  seed, rank and worker) and stops after `batches_per_epoch` batches, so all ranks step
  together even when shards hold different numbers of samples.
- `make_eval_loader`: evaluation. Every sample exactly once across ranks: rank r keeps the
  samples whose index in the split is r modulo world_size.
- `load_pose_arrays`: the whole 2D/3D set of a split as arrays; JPEGs are never read.

Bad data (truncated or corrupt tar, missing field, NaN, wrong joint count, member past the end
of the file, fewer samples than the manifest says):
- on_error="raise": BadSampleError naming the shard file and the key. The loaders check each
  shard's size against the manifest and, unless verify=False, call `verify_shards` (reads every
  tar header and the pose arrays, skips JPEG payloads), so bad shards fail at start-up, not
  deep into an epoch. A JPEG that is corrupt inside a well-formed tar is found when decoded.
- on_error="skip": each bad sample (or the unreadable rest of a shard) is logged and counted by
  reason in a `SkipLog`; a split with no usable sample left still raises.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import tarfile
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from hpe_ray.camera import Intrinsics
from hpe_ray.data.batch import images_to_model_range, pose_batch
from hpe_ray.data.sample import BadSampleError, PoseArrays, PoseSample
from hpe_ray.data.shards import IMAGE_FIELD, POSE_FIELDS, STATS_FILE, SkipLog, load_manifest, read_json
from hpe_ray.normalization import NormStats, without_2d_scores
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS

_POSES_ONLY = frozenset(POSE_FIELDS)
_WITH_IMAGES = frozenset(POSE_FIELDS + (IMAGE_FIELD,))
_BLOCK = 4096


def load_stats(data_dir: str | os.PathLike, mode_2d: str = "camera") -> NormStats:
    """The training split's NormStats for `mode_2d` (see `hpe_ray.normalization`) from stats.json.
    "scaled" needs only the 3D stats, so datasets written before it existed serve it too."""
    path = Path(data_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; datasets without a training split have no stats, "
                                "take them from the checkpoint of the trained model")
    record = read_json(path)
    if tuple(record.get("joint_names", ())) != JOINT_NAMES:
        raise BadSampleError(f"{path}: joint names {record['joint_names']} differ from "
                             "hpe_ray.skeleton.JOINT_NAMES")
    if mode_2d == "scaled" and mode_2d not in record:
        return without_2d_scores(NormStats.from_dict(record["camera"]))
    if mode_2d not in record:
        raise ValueError(f"{path}: no stats for mode_2d={mode_2d!r}")
    return NormStats.from_dict(record[mode_2d])


# ---------------------------------------------------------------- one record

def decode_record(key: str, files: dict[str, bytes | None], where: str, *,
                  required: tuple[str, ...] = POSE_FIELDS, image_size: int | None = None) -> PoseSample:
    """One shard record -> validated PoseSample; BadSampleError naming `where` and the key.

    files: {extension: bytes}, None for a member present but not read. The image is decoded
    (and resized to image_size x image_size when given) only when its bytes are there.
    """
    missing = [ext for ext in required if ext not in files]
    if missing:
        raise BadSampleError(f"{where}: sample {key!r}: missing {', '.join(missing)}")
    try:
        metadata = json.loads(files["json"])
        jpeg = files.get(IMAGE_FIELD)
        sample = PoseSample(
            key=key, keypoints_2d_px=_load_npy(files["kp2d.npy"], (NUM_JOINTS, 2)),
            pose_3d_cam_mm=_load_npy(files["pose3d.npy"], (NUM_JOINTS, 3)),
            intrinsics=Intrinsics.from_vector(_load_npy(files["intr.npy"], (9,)), tuple(metadata["image_size"])),
            subject=metadata["subject"], action=metadata["action"], camera_id=metadata["camera_id"],
            frame=int(metadata["frame"]), image=None if jpeg is None else decode_jpeg(jpeg, image_size),
            crop_box_px=np.asarray(metadata["crop_box_px"], dtype=np.float32))
    except (ValueError, KeyError, TypeError, OSError) as err:  # bad JSON, .npy, intrinsics or JPEG
        raise BadSampleError(f"{where}: sample {key!r}: undecodable ({type(err).__name__}: {err})") from err
    sample.validate(where)
    return sample


def _load_npy(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of `shape` as written by shards.py; anything else through np.load, so that
    validation names the actual dtype or shape."""
    header = _npy_header(shape)
    if data.startswith(header) and len(data) == len(header) + 4 * math.prod(shape):
        # np.load parses the header with ast.literal_eval: most of the read time of a pose.
        return np.frombuffer(data, np.float32, offset=len(header)).reshape(shape).copy()
    return np.load(io.BytesIO(data), allow_pickle=False)


@functools.cache
def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def decode_jpeg(data: bytes, image_size: int | None = None) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8, resized to (image_size, image_size) when it differs."""
    with Image.open(io.BytesIO(data)) as image:
        if image_size is not None:
            image.draft("RGB", (image_size, image_size))  # libjpeg decodes at 1/2, 1/4, 1/8 scale when enough
        image = image.convert("RGB")
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(image)


# ---------------------------------------------------------------- whole shards with tarfile

def _read_tar(shard: Path, read_exts: frozenset[str]) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {extension: bytes}) per sample of one shard, in order. Members with other
    extensions map to None and are never read (tarfile seeks past them)."""
    file_size = shard.stat().st_size
    with tarfile.open(shard, "r:") as tar:
        key, files = None, {}
        for member in tar:
            # tarfile takes a missing header for the end of the archive: check the data is all there.
            if member.offset_data + member.size > file_size:
                raise tarfile.ReadError(f"member {member.name} runs past the end of the file")
            member_key, _, ext = member.name.partition(".")
            if member_key != key:
                if key is not None:
                    yield key, files
                key, files = member_key, {}
            files[ext] = tar.extractfile(member).read() if ext in read_exts else None
        if key is not None:
            yield key, files


def _shard_samples(shard: Path, expected_count: int, skips: SkipLog, *, read_exts: frozenset[str],
                   required: tuple[str, ...]) -> Iterator[PoseSample]:
    count = 0
    try:
        for key, files in _read_tar(shard, read_exts):
            count += 1
            try:
                sample = decode_record(key, files, str(shard), required=required)
            except BadSampleError as err:
                skips(err)
                continue
            yield sample
    except (tarfile.TarError, OSError) as err:
        skips(BadSampleError(f"{shard}: unreadable after {count} samples: truncated or corrupt tar ({err})"))
        return
    if count != expected_count:
        skips(BadSampleError(f"{shard}: holds {count} samples, the manifest says {expected_count}: "
                             "truncated or replaced"))


def _split_samples(data_dir: str | os.PathLike, split: str, skips: SkipLog, *, read_exts: frozenset[str],
                   required: tuple[str, ...] = POSE_FIELDS) -> Iterator[PoseSample]:
    entry = _split_entry(load_manifest(data_dir), data_dir, split)
    for name, count in zip(entry["shards"], entry["shard_counts"]):
        yield from _shard_samples(Path(data_dir) / name, count, skips, read_exts=read_exts, required=required)


def _split_entry(manifest: dict, data_dir: str | os.PathLike, split: str) -> dict:
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}: no split {split!r}; it has {sorted(manifest['splits'])}")
    return manifest["splits"][split]


def _loader_entry(manifest: dict, data_dir: str | os.PathLike, split: str, with_images: bool,
                  skips: SkipLog) -> dict:
    """The manifest entry of a split that has samples, and images when asked for; shards that
    are missing or differ in size from the manifest go to `skips` (a stat per shard, no reading)."""
    entry = _split_entry(manifest, data_dir, split)
    if entry["count"] == 0:
        raise BadSampleError(f"{data_dir}: split {split!r} has no samples")
    if with_images and entry["with_images"] < entry["count"]:
        raise BadSampleError(f"{data_dir}: split {split!r} has images for {entry['with_images']} of "
                             f"{entry['count']} samples; train without images or convert with images")
    for name, expected_bytes in zip(entry["shards"], entry["shard_bytes"]):
        path = Path(data_dir) / name
        size = path.stat().st_size if path.is_file() else None
        if size != expected_bytes:
            found = "missing" if size is None else f"{size} bytes"
            skips(BadSampleError(f"{path}: {found}, the manifest says {expected_bytes}: truncated or replaced"))
    return entry


def iter_samples(data_dir: str | os.PathLike, split: str, *, with_images: bool = True,
                 on_error: str = "raise") -> Iterator[PoseSample]:
    """Every sample of a split as a PoseSample, in shard order (images as stored)."""
    return _split_samples(data_dir, split, SkipLog(on_error),
                          read_exts=_WITH_IMAGES if with_images else _POSES_ONLY)


def load_pose_arrays(data_dir: str | os.PathLike, split: str, on_error: str = "raise", *,
                     use_index: bool = True) -> PoseArrays:
    """All poses of a split in memory, in shard order, without reading a single JPEG.

    Reads the split's poses index (written beside the shards) when there is one and use_index,
    else parses the tars (on_error applies to those).
    """
    manifest = load_manifest(data_dir)
    entry = _split_entry(manifest, data_dir, split)
    if use_index and entry.get("poses_index"):
        return _read_poses_index(Path(data_dir) / entry["poses_index"], entry["count"])
    blocks, rows = [], []
    for sample in _split_samples(data_dir, split, SkipLog(on_error), read_exts=_POSES_ONLY):
        rows.append(sample)
        if len(rows) == _BLOCK:
            blocks.append(PoseArrays.from_samples(rows))
            rows = []
    if rows:
        blocks.append(PoseArrays.from_samples(rows))
    if not blocks:
        raise BadSampleError(f"{data_dir}: split {split!r} has no usable samples")
    return PoseArrays.concatenate(blocks)


def _read_poses_index(path: Path, expected_count: int) -> PoseArrays:
    try:
        with np.load(path, allow_pickle=False) as index:
            arrays = PoseArrays(**{f.name: index[f.name] for f in fields(PoseArrays)})
    except (OSError, ValueError, KeyError) as err:
        raise BadSampleError(f"{path}: unreadable poses index ({err}); convert the data again") from None
    if len(arrays) != expected_count or not (
            np.isfinite(arrays.keypoints_2d_px).all() and np.isfinite(arrays.pose_3d_cam_mm).all()):
        raise BadSampleError(f"{path}: poses index does not match the manifest ({len(arrays)} samples, "
                             f"manifest says {expected_count}) or holds non-finite values")
    return arrays


def verify_shards(data_dir: str | os.PathLike, splits: list[str] | None = None, *,
                  on_error: str = "raise") -> dict[str, dict]:
    """Read every tar header and pose array of the given splits (all by default), fast.

    Checks the tar structure, sample counts against the manifest, required fields (`jpg` too
    when the manifest says every sample of the split has one; JPEG payloads are not decoded),
    shapes and finite values. Returns {split: {"samples": usable, "skipped": {reason: n}}};
    raises BadSampleError at the first problem with on_error="raise", and in any mode when a
    split with samples has none usable.
    """
    manifest = load_manifest(data_dir)
    report = {}
    for split in splits or manifest["splits"]:
        entry = _split_entry(manifest, data_dir, split)
        skips = SkipLog(on_error)
        required = POSE_FIELDS + ((IMAGE_FIELD,) if entry["with_images"] == entry["count"] else ())
        usable = sum(1 for _ in _split_samples(data_dir, split, skips, read_exts=_POSES_ONLY, required=required))
        if usable == 0 and entry["count"] > 0:
            raise BadSampleError(f"{data_dir}: split {split!r} has no usable samples: {dict(skips.counts)}")
        report[split] = {"samples": usable, "skipped": dict(skips.counts)}
    return report


# ---------------------------------------------------------------- streaming loaders

def distributed_rank_and_world_size() -> tuple[int, int]:
    """From torch.distributed when initialised, else RANK / WORLD_SIZE (Ray Train sets both), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def make_loader(data_dir: str | os.PathLike, split: str, batch_size: int, *, with_images: bool,
                image_size: int, stats: NormStats, shuffle_buffer: int, num_workers: int,
                batches_per_epoch: int | None = None, seed: int = 0, on_error: str = "raise",
                rank: int | None = None, world_size: int | None = None, verify: bool = True) -> wds.WebLoader:
    """Training batches (see `collate_batch`), the same number on every rank.

    Shards are drawn with replacement; batches_per_epoch defaults to
    ceil(count / (world_size * batch_size)), about one pass over the split across ranks.
    image_size: side of the square images, px (other stored crop sizes are resized); unused
    without images. rank / world_size default to `distributed_rank_and_world_size()`. verify: run
    `verify_shards` on the split first: it reads every tar header, so on a large dataset call it
    once before training (driver side) and pass False to the per-rank loaders; shard sizes
    are checked against the manifest either way. Bad samples
    met while streaming go to `loader.skips` (a SkipLog; counts of DataLoader worker processes
    stay in those processes, their log lines do not).
    """
    rank, world_size = _check_rank(rank, world_size)
    skips = SkipLog(on_error)
    entry = _loader_entry(load_manifest(data_dir), data_dir, split, with_images, skips)
    if verify:
        verify_shards(data_dir, [split], on_error=on_error)
    if batches_per_epoch is None:
        batches_per_epoch = math.ceil(entry["count"] / (world_size * batch_size))
    shuffle = (functools.partial(_shuffled, buffer_size=shuffle_buffer, seed=seed, rank=rank)
               if shuffle_buffer > 0 else None)
    pipeline = wds.DataPipeline(
        # deterministic=True: the shard sequence follows (seed, rank, worker, epoch) only.
        wds.ResampledShards(_shard_urls(data_dir, entry), seed=seed, deterministic=True,
                            worker_seed=functools.partial(_worker_seed, rank)),
        *_decoded_batches(skips, batch_size, stats, with_images, image_size, partial=False, after_read=shuffle))
    # Persistent workers keep their shard sampler, so its epoch counter moves on and each epoch
    # draws new shards (fresh workers would repeat the first epoch's sequence).
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                           persistent_workers=num_workers > 0).with_epoch(batches_per_epoch)
    loader.skips = skips
    return loader


def make_eval_loader(data_dir: str | os.PathLike, split: str, batch_size: int, *, with_images: bool,
                     image_size: int, stats: NormStats, num_workers: int = 0, on_error: str = "raise",
                     rank: int | None = None, world_size: int | None = None, verify: bool = True) -> wds.WebLoader:
    """Evaluation batches: each sample of the split exactly once over all ranks, in shard order
    per worker; the last batch may be short and ranks differ by at most one sample.

    Every rank reads every shard (bytes only) and decodes just its share, so any number of
    shards works with any number of ranks. Sum errors and counts over ranks before averaging.
    """
    rank, world_size = _check_rank(rank, world_size)
    skips = SkipLog(on_error)
    entry = _loader_entry(load_manifest(data_dir), data_dir, split, with_images, skips)
    if verify:
        verify_shards(data_dir, [split], on_error=on_error)
    urls = _shard_urls(data_dir, entry)
    first_index = dict(zip(urls, np.cumsum([0] + entry["shard_counts"][:-1]).tolist()))
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.split_by_worker,
        *_decoded_batches(skips, batch_size, stats, with_images, image_size, partial=True,
                          after_read=functools.partial(_rank_share, first_index=first_index, rank=rank,
                                                       world_size=world_size)))
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers)
    loader.skips = skips
    return loader


def _check_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    default_rank, default_world_size = distributed_rank_and_world_size()
    rank = default_rank if rank is None else rank
    world_size = default_world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _shard_urls(data_dir: str | os.PathLike, entry: dict) -> list[str]:
    return [str(Path(data_dir).resolve() / name) for name in entry["shards"]]


def _decoded_batches(skips: SkipLog, batch_size: int, stats: NormStats, with_images: bool,
                     image_size: int, *, partial: bool, after_read) -> list:
    """Pipeline stages from shard urls to batches; `after_read` (shuffle or rank share) sees raw records."""
    wanted = _WITH_IMAGES if with_images else _POSES_ONLY
    required = tuple(sorted(wanted))
    return [
        # Poses only: JPEG members are dropped by name before their bytes are read.
        wds.tarfile_to_samples(handler=skips, select_files=functools.partial(_has_extension, wanted=wanted)),
        after_read,
        wds.map(functools.partial(_decode_raw, required=required, image_size=image_size), handler=skips),
        wds.batched(batch_size, collation_fn=functools.partial(collate_batch, stats=stats), partial=partial),
    ]


def _has_extension(name: str, wanted: frozenset[str]) -> bool:
    return name.partition(".")[2] in wanted


def _decode_raw(raw: dict, required: tuple[str, ...], image_size: int) -> PoseSample:
    files = {ext: data for ext, data in raw.items() if not ext.startswith("__")}
    return decode_record(raw["__key__"], files, raw["__url__"], required=required, image_size=image_size)


def _worker_seed(rank: int) -> int:
    worker = torch.utils.data.get_worker_info()
    return rank * 1000 + (worker.id if worker is not None else 0)


def _shuffled(raw_samples: Iterator[dict], buffer_size: int, seed: int, rank: int) -> Iterator[dict]:
    """Shuffle raw records (JPEG bytes, not pixels, sit in the buffer) with a per-worker seed."""
    worker_seed = wds.utils.make_seed(seed, _worker_seed(rank))
    return wds.shuffle(buffer_size, initial=buffer_size, seed=worker_seed)(raw_samples)


def _rank_share(raw_samples: Iterator[dict], first_index: dict[str, int], rank: int,
                world_size: int) -> Iterator[dict]:
    """Keep the records whose index in the split is `rank` modulo `world_size`."""
    url, position = None, 0
    for raw in raw_samples:
        if raw["__url__"] != url:
            url, position = raw["__url__"], 0
        if (first_index[url] + position) % world_size == rank:
            yield raw
        position += 1


def collate_batch(samples: list[PoseSample], stats: NormStats) -> dict:
    """`pose_batch` of the samples (B = len(samples)) as torch tensors, plus "image" (B, 3, H, W)
    in [-1, 1] when the samples have images and "key", "subject", "action" lists."""
    arrays = PoseArrays.from_samples(samples)
    batch = pose_batch(*(torch.from_numpy(a) for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm,
                                                        arrays.intrinsics)), stats)
    if samples[0].image is not None:
        batch["image"] = images_to_model_range(torch.from_numpy(np.stack([s.image for s in samples])))
    batch.update(key=arrays.key.tolist(), subject=arrays.subject.tolist(), action=arrays.action.tolist())
    return batch
