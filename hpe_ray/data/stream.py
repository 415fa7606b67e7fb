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
  reason, in samples, in a `SkipLog`; a split with no usable sample left still raises. Streaming
  batches carry "skipped_samples": those lost since the previous batch of the same process.

The poses index is read whole, so its problems (size, sha256, count, non-finite values) always
raise. `verify_shards` also hashes every shard and checks the index against the shards' samples;
runs check only what is cheap (`check_shard_sizes`, and the index when it is read).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import tarfile
import warnings
import zipfile
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
from hpe_ray.data.shards import (IMAGE_FIELD, POSE_FIELDS, STATS_FILE, SkipLog, file_sha256, load_manifest,
                                 missing_checksums, read_json)
from hpe_ray.data.tar_index import index_path, read_indexed, read_member_index, tar_members
from hpe_ray.normalization import NormStats, without_2d_scores
from hpe_ray.skeleton import JOINT_NAMES, NUM_JOINTS

logger = logging.getLogger(__name__)
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


# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns at every call;
# they still ship and work. Filtered once here, by message, rather than per decoded image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


# Start-of-frame markers (baseline, progressive, ...): the segment that holds the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG from its start-of-frame header, without decoding; None when
    the bytes hold no readable frame header (the decoder then says what is wrong)."""
    at = 2 if data[:2] == b"\xff\xd8" else len(data)
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _JPEG_SOF:
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        at += 2 + length
    return None


def decode_jpeg(data: bytes, image_size: int | None = None) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8, resized to (image_size, image_size) when it differs.

    The fastest decoder per size, chosen from the header: a JPEG stored at image_size goes
    through torchvision's decoder (about 3x less CPU than PIL at 64 px); one stored larger
    through PIL, whose draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale, then a resize.
    """
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as torch_decode_jpeg

    if image_size is None or jpeg_size(data) in (None, (image_size, image_size)):
        try:
            image = torch_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as err:  # a corrupt JPEG: the caller names the sample
            raise ValueError(f"JPEG undecodable: {_first_line(err)}") from None
        if image_size is None or image.shape[1:] == (image_size, image_size):
            return image.permute(1, 2, 0).numpy()
    try:
        with Image.open(io.BytesIO(data)) as pil_image:
            pil_image.draft("RGB", (image_size, image_size))
            pil_image = pil_image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"JPEG undecodable: {_first_line(err)}") from None
    if pil_image.size != (image_size, image_size):
        pil_image = pil_image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(pil_image)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def _read_shard(shard: Path, read_exts: frozenset[str], indexed: bool
                ) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """`_read_tar`, or by the shard's offset index when it has one and `indexed`. An index that
    does not fit the shard (another size: the shard changed after conversion) is passed over with
    a warning: tarfile reads what the shard now holds."""
    members = None
    if indexed:
        try:
            members = read_member_index(shard)
        except tarfile.ReadError as err:
            logger.warning("%s; reading the tar without it", err)
    return _read_tar(shard, read_exts) if members is None else read_indexed(shard, members, read_exts)


def _shard_records(shard: Path, expected_count: int, skips: SkipLog, read_exts: frozenset[str],
                   lost_share=None, indexed: bool = True) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """`_read_shard` of one shard; a tar that breaks off, disagrees with its offset index or holds
    fewer samples than the manifest says goes to `skips` once, as the samples it lacks (the one
    read when it broke off included), or lost_share(read, expected_count) of them: those that
    are this reader's to count."""
    count = 0

    def lost() -> int:
        return lost_share(count, expected_count) if lost_share else max(expected_count - count, 0)

    try:
        for key, files in _read_shard(shard, read_exts, indexed):
            count += 1
            yield key, files
    except (tarfile.TarError, OSError) as err:
        skips(BadSampleError(f"{shard}: unreadable after {count} samples: truncated or corrupt tar ({err})"),
              samples=lost())
        return
    if count != expected_count:
        skips(BadSampleError(f"{shard}: holds {count} samples, the manifest says {expected_count}: "
                             "truncated or replaced"), samples=lost())


def _shard_samples(shard: Path, expected_count: int, skips: SkipLog, *, read_exts: frozenset[str],
                   required: tuple[str, ...], indexed: bool = True) -> Iterator[PoseSample]:
    for key, files in _shard_records(shard, expected_count, skips, read_exts, indexed=indexed):
        try:
            sample = decode_record(key, files, str(shard), required=required)
        except BadSampleError as err:
            skips(err)
            continue
        yield sample


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
    _check_sizes(data_dir, entry, skips)
    return entry


def _check_sizes(data_dir: str | os.PathLike, entry: dict, skips: SkipLog) -> None:
    """A stat per shard: a missing shard or one whose size differs from the manifest is raised
    or (skip) logged; the samples it loses are counted when it is read."""
    for name, expected_bytes in zip(entry["shards"], entry["shard_bytes"]):
        path = Path(data_dir) / name
        size = path.stat().st_size if path.is_file() else None
        if size != expected_bytes:
            found = "missing" if size is None else f"{size} bytes"
            skips.warn(BadSampleError(f"{path}: {found}, the manifest says {expected_bytes}: truncated or replaced"))


def check_shard_sizes(data_dir: str | os.PathLike, split: str, on_error: str = "raise") -> None:
    """Every shard of a split is there with the size the manifest says (a stat each, no reading):
    the cheap check of a run that reads only the poses index. BadSampleError naming the shard,
    or (on_error="skip") a logged warning."""
    _check_sizes(data_dir, _split_entry(load_manifest(data_dir), data_dir, split), SkipLog(on_error))


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
        return _read_poses_index(data_dir, entry)
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


def _read_poses_index(data_dir: str | os.PathLike, entry: dict, *, checksum: bool = True) -> PoseArrays:
    """A split's poses index, checked against its manifest entry: sample count, finite values,
    then (checksum, when the manifest records them) size and sha256 of the file. Any problem
    raises BadSampleError naming the file: an index is used whole or not at all."""
    path = Path(data_dir) / entry["poses_index"]
    try:
        with np.load(path, allow_pickle=False) as index:
            arrays = PoseArrays(**{f.name: index[f.name] for f in fields(PoseArrays)})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise BadSampleError(f"{path}: unreadable poses index ({err}); convert the data again") from None
    if len(arrays) != entry["count"]:
        raise BadSampleError(f"{path}: poses index does not match the manifest ({len(arrays)} samples, "
                             f"manifest says {entry['count']}); convert the data again")
    finite = [np.isfinite(a.reshape(len(a), -1)).all(axis=1)
              for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics)]
    if not all(f.all() for f in finite):
        first = int(np.flatnonzero(~np.logical_and.reduce(finite))[0])
        raise BadSampleError(f"{path}: poses index holds non-finite values (first at row {first}, sample "
                             f"{str(arrays.key[first])!r}); convert the data again")
    if checksum and not missing_checksums(data_dir, entry, "poses_sha256"):
        size = path.stat().st_size
        if size != entry["poses_bytes"]:
            raise BadSampleError(f"{path}: {size} bytes, the manifest says {entry['poses_bytes']}: poses index "
                                 "replaced after conversion; convert the data again")
        if file_sha256(path) != entry["poses_sha256"]:
            raise BadSampleError(f"{path}: sha256 differs from the manifest's: poses index changed after "
                                 "conversion; convert the data again")
    return arrays


def verify_shards(data_dir: str | os.PathLike, splits: list[str] | None = None, *,
                  on_error: str = "raise", checksums: bool = True) -> dict[str, dict]:
    """Read every tar header and pose array of the given splits (all by default), fast.

    Checks the tar structure, sample counts against the manifest, required fields (`jpg` too
    when the manifest says every sample of the split has one; JPEG payloads are not decoded),
    shapes and finite values; with `checksums`, every shard's sha256 against the manifest (this
    reads the JPEG bytes too: leave it to `hpe-ray data verify`, not every run). The poses index
    is checked against the manifest (`_read_poses_index`) and the shards: the same keys in the
    same order and the same 2D, 3D and intrinsics values; each shard's offset index (`tar_index`)
    against its tar headers.

    Returns {split: {"samples": usable, "skipped": {reason: samples lost}}}, plus "mismatches":
    [one line per file] when a shard or index differs from the manifest or the shards without
    a sample being unusable (skip mode). Raises BadSampleError at the first problem with
    on_error="raise", and in any mode when a split with samples has none usable.
    """
    manifest = load_manifest(data_dir)
    report = {}
    for split in splits or manifest["splits"]:
        entry = _split_entry(manifest, data_dir, split)
        skips = SkipLog(on_error)
        mismatches: list[str] = []

        def mismatch(message: str) -> None:
            skips.warn(BadSampleError(message))
            mismatches.append(message)

        required = POSE_FIELDS + ((IMAGE_FIELD,) if entry["with_images"] == entry["count"] else ())
        index = _IndexComparison.of(data_dir, entry, mismatch)
        hashes = (entry["shard_sha256"] if checksums and not missing_checksums(data_dir, entry, "shard_sha256")
                  else [None] * len(entry["shards"]))
        usable = 0
        for name, count, expected_sha256 in zip(entry["shards"], entry["shard_counts"], hashes):
            shard = Path(data_dir) / name
            sha256 = file_sha256(shard) if expected_sha256 and shard.is_file() else expected_sha256
            problems_before = skips.problems
            # Every tar header, read by tarfile; the offset index is then checked against them.
            for sample in _shard_samples(shard, count, skips, read_exts=_POSES_ONLY, required=required,
                                         indexed=False):
                usable += 1
                if index:
                    index.add(sample, rows_lost=bool(skips.problems))
            if skips.problems == problems_before and index_path(shard).is_file():
                try:
                    agrees = read_member_index(shard) == tar_members(shard)
                except tarfile.ReadError as err:
                    mismatch(str(err))
                else:
                    if not agrees:
                        mismatch(f"{index_path(shard)}: member offsets disagree with {shard}: shard changed "
                                 "after conversion; convert the data again")
            # A shard that reads well but differs from the conversion's (a problem while reading
            # names itself better; in skip mode its samples are counted then).
            if sha256 != expected_sha256 and skips.problems == problems_before:
                mismatch(f"{shard}: sha256 differs from the manifest's: shard replaced or changed after "
                         "conversion; convert the data again")
        if index:
            index.finish()
        if usable == 0 and entry["count"] > 0:
            raise BadSampleError(f"{data_dir}: split {split!r} has no usable samples: {dict(skips.counts)}")
        report[split] = {"samples": usable, "skipped": dict(skips.counts)}
        if mismatches:
            report[split]["mismatches"] = mismatches
    return report


class _IndexComparison:
    """Checks a split's poses index against the samples read from its shards, in blocks: every
    sample read is the next row of the index with its key (rows of samples that could not be
    read are passed over) and has the same 2D, 3D and intrinsics values."""

    def __init__(self, path: Path, arrays: PoseArrays, mismatch) -> None:
        self.path, self.arrays, self.mismatch = path, arrays, mismatch
        self.keys = arrays.key
        self.next_row = 0
        self.rows: list[int] = []
        self.samples: list[PoseSample] = []
        self.failed = False

    @classmethod
    def of(cls, data_dir: str | os.PathLike, entry: dict, mismatch) -> "_IndexComparison | None":
        """None when the split has no index, or it is unusable (reported through `mismatch`)."""
        if not entry.get("poses_index"):
            return None
        try:
            return cls(Path(data_dir) / entry["poses_index"], _read_poses_index(data_dir, entry), mismatch)
        except BadSampleError as err:
            mismatch(str(err))
            return None

    def add(self, sample: PoseSample, rows_lost: bool) -> None:
        """The next sample read; rows_lost: whether samples before it could not be read, so
        that its row may lie further on."""
        if self.failed:
            return
        row = self.next_row
        if not rows_lost:
            if row == len(self.keys) or self.keys[row] != sample.key:
                held = repr(str(self.keys[row])) if row < len(self.keys) else "nothing"
                self._fail(f"row {row} holds {held}, the shards' sample there is {sample.key!r}: keys or their "
                           "order differ")
                return
        while row < len(self.keys) and self.keys[row] != sample.key:
            row += 1
        if row == len(self.keys):
            expected = repr(str(self.keys[self.next_row])) if self.next_row < len(self.keys) else "the end"
            self._fail(f"the shards' sample {sample.key!r} is not in the index at or after row {self.next_row} "
                       f"(which holds {expected}): keys or their order differ")
            return
        self.next_row = row + 1
        self.rows.append(row)
        self.samples.append(sample)
        if len(self.rows) == _BLOCK:
            self._compare()

    def finish(self) -> None:
        if not self.failed:
            self._compare()

    def _compare(self) -> None:
        if not self.rows:
            return
        read, rows = PoseArrays.from_samples(self.samples), np.asarray(self.rows)
        for name in ("keypoints_2d_px", "pose_3d_cam_mm", "intrinsics"):
            indexed, decoded = getattr(self.arrays, name)[rows], getattr(read, name)
            differ = ~(indexed == decoded).reshape(len(rows), -1).all(axis=1)
            if differ.any():
                first = int(np.flatnonzero(differ)[0])
                self._fail(f"{name} of sample {self.samples[first].key!r} (row {rows[first]}) differs from its shard")
                return
        self.rows, self.samples = [], []

    def _fail(self, problem: str) -> None:
        self.failed = True
        self.mismatch(f"{self.path}: poses index does not match the shards: {problem}; convert the data again")


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
    stay in those processes, their log lines do not) and each batch's "skipped_samples", which
    comes out of worker processes too: sum those for a total.
    """
    rank, world_size = _check_rank(rank, world_size)
    skips = SkipLog(on_error)
    entry = _loader_entry(load_manifest(data_dir), data_dir, split, with_images, skips)
    if verify:
        verify_shards(data_dir, [split], on_error=on_error, checksums=False)
    if batches_per_epoch is None:
        batches_per_epoch = math.ceil(entry["count"] / (world_size * batch_size))
    shuffle = (functools.partial(_shuffled, buffer_size=shuffle_buffer, seed=seed, rank=rank)
               if shuffle_buffer > 0 else None)
    shard_counts = _shard_urls(data_dir, entry)
    pipeline = wds.DataPipeline(
        # deterministic=True: the shard sequence follows (seed, rank, worker, epoch) only.
        wds.ResampledShards(list(shard_counts), seed=seed, deterministic=True,
                            worker_seed=functools.partial(_worker_seed, rank)),
        # Each rank draws its own shards: what a draw lost is this rank's to count.
        functools.partial(_tar_records, skips=skips, shard_counts=shard_counts, with_images=with_images),
        *_decoded_batches(skips, batch_size, stats, with_images, image_size, partial=False, after_read=shuffle))
    # One stream per process for the whole run, cut into epochs: the shuffle buffer is filled
    # once, not at every epoch (a fresh iterator would read shuffle_buffer records again before
    # its first batch). Persistent workers keep their stream between epochs.
    loader = wds.WebLoader(_OneStream(pipeline), batch_size=None, num_workers=num_workers,
                           persistent_workers=num_workers > 0).with_epoch(batches_per_epoch)
    loader.skips = skips
    return loader


class _OneStream(torch.utils.data.IterableDataset):
    """An endless pipeline whose iterator is made once per process and continued by every later
    `iter()`: each epoch takes the next batches of one stream."""

    def __init__(self, pipeline: wds.DataPipeline) -> None:
        self.pipeline = pipeline
        self._stream: Iterator[dict] | None = None

    def __iter__(self) -> Iterator[dict]:
        if self._stream is None:
            self._stream = iter(self.pipeline)
        return self._stream


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
        verify_shards(data_dir, [split], on_error=on_error, checksums=False)
    shard_counts = _shard_urls(data_dir, entry)
    urls = list(shard_counts)
    first_index = dict(zip(urls, np.cumsum([0] + entry["shard_counts"][:-1]).tolist()))
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.split_by_worker,
        # Every rank reads every shard: each counts the lost samples of its share.
        functools.partial(_tar_records, skips=skips, shard_counts=shard_counts, with_images=with_images,
                          lost_share=functools.partial(_rank_lost, first_index=first_index, rank=rank,
                                                       world_size=world_size)),
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


def _shard_urls(data_dir: str | os.PathLike, entry: dict) -> dict[str, int]:
    """{shard path: samples the manifest says it holds}, in shard order."""
    return {str(Path(data_dir).resolve() / name): count for name, count in zip(entry["shards"], entry["shard_counts"])}


def _decoded_batches(skips: SkipLog, batch_size: int, stats: NormStats, with_images: bool,
                     image_size: int, *, partial: bool, after_read) -> list:
    """Pipeline stages from raw records (`_tar_records`) to batches; `after_read` (shuffle or
    rank share) sees raw records."""
    required = tuple(sorted(_WITH_IMAGES if with_images else _POSES_ONLY))
    return [
        after_read,
        wds.map(functools.partial(_decode_raw, required=required, image_size=image_size), handler=skips),
        wds.batched(batch_size, collation_fn=functools.partial(collate_batch, stats=stats), partial=partial),
        functools.partial(_with_skip_counts, skips=skips),
    ]


def _tar_records(shards: Iterator[dict], skips: SkipLog, shard_counts: dict[str, int], with_images: bool,
                 lost_share=None) -> Iterator[dict]:
    """Raw records {"__key__", "__url__", extension: bytes} of each shard url, read like
    `verify_shards` reads them (`_shard_records`), so that a shard that breaks off counts the
    samples it lacks (lost_share(url, read, expected): this reader's part of them); members with
    other extensions (poses only: the JPEGs) are never read."""
    wanted = _WITH_IMAGES if with_images else _POSES_ONLY
    for shard in shards:
        url = shard["url"]
        share = functools.partial(lost_share, url) if lost_share else None
        for key, files in _shard_records(Path(url), shard_counts[url], skips, wanted, share):
            yield {"__key__": key, "__url__": url, **{ext: data for ext, data in files.items() if data is not None}}


def _rank_lost(url: str, read: int, expected: int, first_index: dict[str, int], rank: int, world_size: int) -> int:
    """Of a shard's samples read..expected-1 (lost), how many are `rank`'s share (`_rank_share`)."""
    def before(n: int) -> int:  # indices in [0, n) that are rank modulo world_size
        return max(0, (n - rank + world_size - 1) // world_size)

    start = first_index[url]
    return max(0, before(start + expected) - before(start + read))


def _with_skip_counts(batches: Iterator[dict], skips: SkipLog) -> Iterator[dict]:
    """Each batch's "skipped_samples": samples this process skipped since its previous batch.
    A DataLoader worker's SkipLog is its own copy; this is how its counts reach the loop."""
    for batch in batches:
        batch["skipped_samples"] = skips.take_unreported()
        yield batch


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
