"""Writing datasets as WebDataset shards, atomically, with a manifest and normalisation stats.

Layout of a dataset directory DIR (docs/design.md, "Shard layout"):

    manifest.json             written last: source, settings, created, hpe_ray version,
                              splits {name: {count, shards, shard_counts, shard_bytes,
                              shard_sha256, bytes, with_images, subjects, actions, camera_ids,
                              poses_index, poses_bytes, poses_sha256}}, skipped
    stats.json                NormStats of the training split for both 2D modes, joint names
    train-000000.tar ...      WebDataset shards per split
    train-000000.tar.idx ...  each shard's member offsets (`tar_index`): streaming seeks instead
                              of parsing tar headers

One sample: `__key__`, `jpg` (when the sample has an image), `kp2d.npy` (17, 2) f32 px,
`pose3d.npy` (17, 3) f32 camera mm, `intr.npy` (9,) f32, `json` metadata. Arrays are .npy
without pickle.

Everything is written into a sibling `.DIR.partial-<host>-<pid>/` that becomes DIR by one rename
once manifest.json is in it, so DIR either does not exist or is complete. A failed conversion
removes its partial directory; a killed one leaves it behind under that name, and the next
conversion into the same parent folder on the same host removes it once that PID is gone.

The checksums (sha256 of every shard and poses index) let `stream.verify_shards` tell a shard
or an index that was replaced or damaged after conversion; a run checks the index's (cheap)
and the shards' sizes only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from hpe_ray import __version__
from hpe_ray.data.sample import BadSampleError, PoseSample
from hpe_ray.data.tar_index import write_member_index
from hpe_ray.normalization import MODES_2D, compute_stats
from hpe_ray.skeleton import JOINT_NAMES

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
# Still 1 with the checksums (shard_sha256, poses_bytes, poses_sha256) added: they are extra keys
# that older readers ignore, and a manifest without them (written before) is read as before with a
# one-line warning that they are not checked (`missing_checksums`), rather than forcing every
# existing dataset to be converted again for a check.
FORMAT_VERSION = 1
POSES_INDEX = "{split}-poses.npz"
"""Per split, every pose, camera and label in one uncompressed npz (no pickles), in shard
order: lifting runs load a whole split from it in about a second instead of parsing tars."""
POSE_FIELDS = ("kp2d.npy", "pose3d.npy", "intr.npy", "json")
IMAGE_FIELD = "jpg"
ON_ERROR = ("raise", "skip")
# What bad bytes raise: our checks, tarfile, file access; ValueError also covers .npy, JSON and
# WebDataset's duplicate-file check.
DATA_ERRORS = (ValueError, tarfile.TarError, OSError)
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")


class SkipLog:
    """What happens to bad data: raised as BadSampleError (on_error="raise") or logged, counted
    by reason and passed over ("skip"). Other exceptions are bugs and propagate unchanged.

    `counts` are samples lost per reason: one per bad sample, the missing rest of a truncated
    shard as the samples the manifest says it holds beyond those read. Also a WebDataset
    exception handler: returns True ("continue") when skipping.
    """

    def __init__(self, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.counts: Counter[str] = Counter()
        self.problems = 0  # calls, whatever they lost
        self._reported = 0

    def __call__(self, exn: Exception, samples: int = 1) -> bool:
        """Raise or skip `exn`, which lost `samples` samples (0: a problem that loses none)."""
        if not isinstance(exn, DATA_ERRORS):
            raise exn
        message = _describe(exn)
        if self.on_error == "raise":
            if isinstance(exn, BadSampleError):
                exn.args = (message,)
                raise exn
            raise BadSampleError(message) from exn
        self.counts[_reason(message)] += samples
        self.problems += 1
        logger.warning("skipped%s: %s", "" if samples == 1 else f" {samples} samples", message)
        return True

    @property
    def samples(self) -> int:
        """Samples skipped so far (in this process)."""
        return sum(self.counts.values())

    def take_unreported(self) -> int:
        """Samples skipped since the last call: what a batch carries out of a DataLoader worker
        process, whose SkipLog is its own copy."""
        new, self._reported = self.samples - self._reported, self.samples
        return new

    def warn(self, exn: BadSampleError) -> None:
        """A problem that loses no sample by itself (its samples are counted when read):
        raised with on_error="raise", else logged without counting."""
        if self.on_error == "raise":
            raise exn
        logger.warning("%s", exn)


def _describe(exn: Exception) -> str:
    """The error in one line, naming the shard. WebDataset appends the stream and url to
    exn.args, or " @ <stream repr>" to the message."""
    if not exn.args:
        return type(exn).__name__
    message, _, stream_repr = str(exn.args[0]).partition(" @ ")
    if isinstance(exn, tarfile.TarError):
        message = f"truncated or corrupt tar ({message})"
    urls = re.findall(r"name='([^']*)'", stream_repr) + [arg for arg in exn.args[1:] if isinstance(arg, str)]
    if urls and urls[-1] not in message:
        message = f"{urls[-1]}: {message}"
    return message


def _reason(message: str) -> str:
    """The part of a message that is the same for every sample with the same problem."""
    match = re.search(r"sample '[^']*': (.*)$", message)
    return match.group(1) if match else message.split(": ", 1)[-1]


def encode_sample(sample: PoseSample, source: str, jpeg_quality: int = 90) -> dict[str, bytes | str]:
    """PoseSample -> WebDataset record: `__key__` and the encoded files of one sample."""
    metadata = {
        "subject": sample.subject, "action": sample.action, "camera_id": sample.camera_id,
        "frame": int(sample.frame), "image_size": list(sample.intrinsics.image_size),
        "crop_box_px": [float(v) for v in sample.crop_box_px], "source": source,
    }
    record: dict[str, bytes | str] = {
        "__key__": sample.key,
        "kp2d.npy": _npy_bytes(sample.keypoints_2d_px),
        "pose3d.npy": _npy_bytes(sample.pose_3d_cam_mm),
        "intr.npy": _npy_bytes(sample.intrinsics.as_vector()),
        "json": json.dumps(metadata).encode(),
    }
    if sample.image is not None:
        record[IMAGE_FIELD] = _jpeg_bytes(sample.image, jpeg_quality)
    return record


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_shards(splits: dict[str, Iterable[PoseSample]], out_dir: str | os.PathLike, *, source: str,
                 settings: dict, max_samples_per_shard: int = 2000, jpeg_quality: int = 90,
                 on_error: str = "raise", totals: dict[str, int] | None = None,
                 overwrite: bool = False) -> dict:
    """Write each split's samples as shards of `out_dir`, plus stats.json and manifest.json.

    splits: {"train": samples, "val": ..., "test": ...}; stats come from "train" only (no
    stats.json without training samples). settings: how the data was made, kept in the manifest.
    on_error: "raise" stops at the first invalid sample (BadSampleError naming the split and
    key); "skip" logs it and counts it per reason in manifest["skipped"]. Keys must be unique
    across all splits. totals: expected samples per split, for the progress bar.
    An existing complete dataset is replaced only with overwrite=True; any other non-empty
    directory is never touched. Returns the manifest.
    """
    out_dir = Path(out_dir)
    if max_samples_per_shard < 1:
        raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
    for split in splits:
        if not _SPLIT_NAME.fullmatch(split):
            raise ValueError(f"split names must be letters, digits or '_' (they name files), got {split!r}")
    _check_destination(out_dir, overwrite)
    _remove_stale_partials(out_dir.parent)
    partial_dir = out_dir.parent / f".{out_dir.name}.partial-{_host()}-{os.getpid()}"
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    try:
        seen_keys: set[str] = set()
        split_entries, skipped, split_poses = {}, {}, {}
        for split, samples in splits.items():
            skips = SkipLog(on_error)
            valid = _valid_samples(samples, f"{source} {split} split", seen_keys, skips)
            split_poses[split] = _PoseRows()
            split_entries[split] = _write_split(
                valid, partial_dir, split, source=source, max_samples_per_shard=max_samples_per_shard,
                jpeg_quality=jpeg_quality, total=(totals or {}).get(split), poses=split_poses[split])
            skipped[split] = dict(skips.counts)
            if skips.counts:
                logger.warning("%s split: skipped %d invalid samples: %s", split, sum(skips.counts.values()),
                               dict(skips.counts))
        train_poses = split_poses.get("train")
        if train_poses is not None and len(train_poses):
            _write_json(partial_dir / STATS_FILE, _stats_record(train_poses))
        else:
            logger.warning("no training samples: %s gets no %s", out_dir, STATS_FILE)
        manifest = {
            "format_version": FORMAT_VERSION, "source": source, "settings": settings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hpe_ray_version": __version__, "splits": split_entries, "skipped": skipped,
        }
        _write_json(partial_dir / MANIFEST_FILE, manifest)
        _move_into_place(partial_dir, out_dir)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return manifest


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (about 1.2 GB/s from the page cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_warned_without_checksums: set[str] = set()


def missing_checksums(data_dir: str | os.PathLike, entry: dict, key: str) -> bool:
    """Whether a split's manifest entry lacks `key` (written before checksums were recorded);
    says so in one warning line per dataset and process."""
    if key in entry:
        return False
    if str(data_dir) not in _warned_without_checksums:
        _warned_without_checksums.add(str(data_dir))
        logger.warning("%s: %s records no checksums (written by an older hpe_ray): shard and poses index "
                       "contents are not checked against it; convert again to have them", data_dir, MANIFEST_FILE)
    return True


_PARTIAL_DIR = re.compile(r"\..+\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _remove_stale_partials(parent: Path) -> None:
    """Remove the partial directories of conversions that were killed: those in `parent` named
    for this host (or with no host: older hpe_ray) whose PID no longer runs. Other hosts' are
    left alone: on a shared file system their PIDs mean nothing here."""
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        match = _PARTIAL_DIR.fullmatch(path.name)
        if (match and match["host"] in (None, _host()) and path.is_dir() and not path.is_symlink()
                and not _pid_alive(int(match["pid"]))):
            logger.warning("removing %s: left by a conversion (PID %s) that no longer runs", path, match["pid"])
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    try:  # /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{out_dir} is not empty and holds no {MANIFEST_FILE}, so it is not a dataset: "
                              "remove it yourself or choose another directory")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a complete dataset; pass overwrite=True "
                              "(--overwrite) to replace it")


def _move_into_place(partial_dir: Path, out_dir: Path) -> None:
    """One rename makes the dataset appear; an existing one is moved aside first, then deleted."""
    if out_dir.exists():
        old_dir = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old_dir)
        partial_dir.rename(out_dir)
        shutil.rmtree(old_dir)
    else:
        partial_dir.rename(out_dir)


def _valid_samples(samples: Iterable[PoseSample], origin: str, seen_keys: set[str],
                   skips: SkipLog) -> Iterator[PoseSample]:
    for sample in samples:
        try:
            sample.validate(origin)
            if sample.key in seen_keys:
                raise BadSampleError(f"{origin}: sample {sample.key!r}: duplicate key")
        except BadSampleError as err:
            skips(err)
            continue
        seen_keys.add(sample.key)
        yield sample


def _write_split(samples: Iterable[PoseSample], directory: Path, split: str, *, source: str,
                 max_samples_per_shard: int, jpeg_quality: int, total: int | None,
                 poses: _PoseRows) -> dict:
    """Write one split as `<split>-000000.tar ...` plus its poses index; returns its manifest entry."""
    shard_names: list[str] = []
    shard_counts: list[int] = []
    subjects, actions, camera_ids = set(), set(), set()
    num_with_images = 0
    writer = None
    try:
        for sample in tqdm(samples, total=total, desc=f"writing {split}", unit=" samples", disable=None):
            if writer is None or shard_counts[-1] == max_samples_per_shard:
                if writer is not None:
                    writer.close()
                shard_names.append(f"{split}-{len(shard_names):06d}.tar")
                shard_counts.append(0)
                # A whole-second mtime: a float one makes tarfile add a PAX header to every
                # member, doubling the headers to read.
                writer = wds.TarWriter(str(directory / shard_names[-1]), encoder=False, mtime=int(time.time()))
            writer.write(encode_sample(sample, source, jpeg_quality))
            shard_counts[-1] += 1
            subjects.add(sample.subject)
            actions.add(sample.action)
            camera_ids.add(sample.camera_id)
            num_with_images += sample.image is not None
            poses.add(sample)
    finally:
        if writer is not None:
            writer.close()
    for name in shard_names:
        write_member_index(directory / name)
    poses_index = POSES_INDEX.format(split=split) if len(poses) else None
    if poses_index:
        np.savez(directory / poses_index, **poses.columns())
    shard_bytes = [(directory / name).stat().st_size for name in shard_names]
    return {
        "count": sum(shard_counts), "shards": shard_names, "shard_counts": shard_counts,
        "shard_bytes": shard_bytes, "shard_sha256": [file_sha256(directory / name) for name in shard_names],
        "bytes": sum(shard_bytes),
        "with_images": num_with_images, "subjects": sorted(subjects), "actions": sorted(actions),
        "camera_ids": sorted(camera_ids), "poses_index": poses_index,
        "poses_bytes": (directory / poses_index).stat().st_size if poses_index else None,
        "poses_sha256": file_sha256(directory / poses_index) if poses_index else None,
    }


class _PoseRows:
    """A split's 2D, 3D and intrinsics, one packed row per sample, stacked in blocks (a list of
    millions of small arrays would take several times the memory of the data), and its labels."""

    _BLOCK = 4096

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._blocks: list[np.ndarray] = []
        self._labels: dict[str, list] = {name: [] for name in ("key", "subject", "action", "camera_id", "frame")}

    def __len__(self) -> int:
        return len(self._rows) + sum(len(block) for block in self._blocks)

    def add(self, sample: PoseSample) -> None:
        # float32 first: the stats must describe exactly the values the reader gets back.
        self._rows.append(np.concatenate([
            np.asarray(sample.keypoints_2d_px, np.float32).ravel(),
            np.asarray(sample.pose_3d_cam_mm, np.float32).ravel(),
            sample.intrinsics.as_vector()]))
        for name, values in self._labels.items():
            values.append(getattr(sample, name))
        if len(self._rows) == self._BLOCK:
            self._blocks.append(np.stack(self._rows))
            self._rows = []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """keypoints_2d_px (N, 17, 2), pose_3d_cam_mm (N, 17, 3), intrinsics (N, 9)."""
        table = np.concatenate(self._blocks + ([np.stack(self._rows)] if self._rows else []))
        num_joints = len(JOINT_NAMES)
        return (table[:, :2 * num_joints].reshape(-1, num_joints, 2),
                table[:, 2 * num_joints:5 * num_joints].reshape(-1, num_joints, 3),
                table[:, 5 * num_joints:])


    def columns(self) -> dict[str, np.ndarray]:
        """The fields of `sample.PoseArrays`, as plain (unicode, never object) arrays."""
        keypoints_2d_px, pose_3d_cam_mm, intrinsics = self.arrays()
        labels = {name: np.array(values, dtype=np.int64 if name == "frame" else str)
                  for name, values in self._labels.items()}
        return {"keypoints_2d_px": keypoints_2d_px, "pose_3d_cam_mm": pose_3d_cam_mm,
                "intrinsics": intrinsics, **labels}


def _stats_record(train_poses: _PoseRows) -> dict:
    """stats.json: {"joint_names", "num_samples", "camera": NormStats dict, "pixel": ...}."""
    keypoints_2d_px, pose_3d_cam_mm, intrinsics = train_poses.arrays()
    record: dict = {"joint_names": list(JOINT_NAMES), "num_samples": len(keypoints_2d_px)}
    for mode_2d in MODES_2D:
        record[mode_2d] = compute_stats(keypoints_2d_px, pose_3d_cam_mm, intrinsics[:, 0:2],
                                        intrinsics[:, 2:4], mode_2d).to_dict()
    return record


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object file of a dataset; BadSampleError naming it when it is corrupt or truncated."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadSampleError(f"{path}: unreadable ({err}); convert the data again") from None
    if not isinstance(content, dict):
        raise BadSampleError(f"{path}: expected a JSON object, got {type(content).__name__}; convert the data again")
    return content


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """manifest.json of a dataset directory; FileNotFoundError when it is not a complete dataset."""
    manifest_path = Path(data_dir) / MANIFEST_FILE
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{data_dir}: no {MANIFEST_FILE}: not a dataset, or its conversion did not finish")
    manifest = read_json(manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BadSampleError(f"{manifest_path}: shard format version {manifest.get('format_version')}, this "
                             f"hpe_ray reads version {FORMAT_VERSION}: convert the data again")
    return manifest


SUMMARY_NAMES = 12
"""Names listed per subjects/actions/cameras line unless the full listing is asked for."""


def _names(kind: str, names: list[str], full: bool) -> str:
    shown = names if full or len(names) <= SUMMARY_NAMES else names[:SUMMARY_NAMES]
    more = f", ... {len(names) - len(shown)} more (--full lists them)" if len(shown) < len(names) else ""
    return f"  {kind} ({len(names)}): {', '.join(shown)}{more}"


def summary(data_dir: str | os.PathLike, full: bool = False) -> str:
    """Counts per split, subjects, actions, cameras and shard sizes, from the manifest; each list
    of names shows its first SUMMARY_NAMES unless `full`."""
    manifest = load_manifest(data_dir)
    lines = [f"{data_dir}: source {manifest['source']}, created {manifest['created']} "
             f"(hpe_ray {manifest['hpe_ray_version']})"]
    for split, entry in manifest["splits"].items():
        counts = entry["shard_counts"] or [0]
        lines += [
            f"{split}: {entry['count']} samples ({entry['with_images']} with images) in {len(entry['shards'])} "
            f"shards, {entry['bytes'] / 1e6:.1f} MB, {min(counts)}-{max(counts)} samples per shard",
            _names("subjects", entry["subjects"], full),
            _names("actions", entry["actions"], full),
            _names("cameras", entry["camera_ids"], full),
        ]
        skipped = manifest["skipped"].get(split)
        if skipped:
            lines.append(f"  skipped {sum(skipped.values())}: "
                         + "; ".join(f"{reason}: {n}" for reason, n in skipped.items()))
    return "\n".join(lines)
