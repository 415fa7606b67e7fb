"""Figures of a checkpoint on a dataset split: predictions against ground truth, the latent
UMAP, errors per joint and action. The drawing is `hpe_ray.plotting`'s; this module feeds it
through the one prediction path (`hpe_ray.inference.Lifter`). And the animation (GIF or MP4)
of a sequence that `hpe-ray predict` lifted, from its .npz."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hpe_ray.data.batch import images_to_model_range
from hpe_ray.data.stream import iter_samples, load_pose_arrays
from hpe_ray.dependencies import import_extra
from hpe_ray.inference import Lifter, resize_crop
from hpe_ray.inference.formats import track_order
from hpe_ray.metrics import base_action
from hpe_ray.normalization import normalize_2d, root_relative
from hpe_ray.plotting import (ANIMATION_SIZE_PX, error_tables, plot_errors, plot_latent_umap, plot_predictions,
                              sequence_frames)
from hpe_ray.training.checkpoint import load_checkpoint



def pick_samples(actions, count: int, seed: int = 0) -> np.ndarray:
    """Indices of `count` samples spread over the actions: one random frame per action in turn
    (sorted by action), so a grid shows every action before repeating one."""
    actions = np.asarray(actions)
    rng = np.random.default_rng(seed)
    pools = {a: list(rng.permutation(np.flatnonzero(actions == a))) for a in sorted(set(actions.tolist()))}
    chosen: list[int] = []
    while len(chosen) < min(count, len(actions)):
        for pool in pools.values():
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop()))
    return np.asarray(sorted(chosen, key=lambda i: (actions[i], i)), dtype=int)


def predictions_figure(checkpoint, data_dir: str | Path, *, split: str = "test", n: int = 25,
                       hypotheses: int = 1, seed: int = 0, out: str | Path) -> list[Path]:
    """`plot_predictions` of n samples of a split (spread over actions) lifted from their 2D keypoints
    (from the crops for an RGB-only model), with K = hypotheses samples drawn behind the mean."""

    lifter = Lifter.from_checkpoint(checkpoint)
    arrays = load_pose_arrays(data_dir, split)
    chosen = pick_samples(arrays.action, n, seed)
    if "pose2d" in lifter.encoders:
        intrinsics = arrays.intrinsics[chosen]
        result = lifter.lift(arrays.keypoints_2d_px[chosen], intrinsics[:, 0:2], intrinsics[:, 2:4],
                             hypotheses=hypotheses, seed=seed)
    else:
        result = lifter.lift_images(_split_images(data_dir, split, chosen), hypotheses=hypotheses, seed=seed)
    titles = [f"{arrays.subject[i]} {arrays.action[i]} cam {arrays.camera_id[i]}" for i in chosen]
    return plot_predictions(result.poses_3d, root_relative(arrays.pose_3d_cam_mm[chosen]), out,
                            hypotheses_mm=result.hypotheses, titles=titles)


def latent_figure(checkpoint, data_dir: str | Path, *, split: str = "test",
                  n_neighbors: Sequence[int] = (5, 15, 50, 200), max_points: int = 3000, seed: int = 0,
                  out: str | Path) -> list[Path]:
    """`plot_latent_umap` of the latent means of every encoder of a checkpoint (2D pose, and RGB
    when it has one) on up to max_points frames of a split, coloured by action."""

    loaded = load_checkpoint(checkpoint)
    arrays = load_pose_arrays(data_dir, split)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(arrays), min(max_points, len(arrays)), replace=False))
    inputs = {}
    if "pose2d" in loaded.model.encoders:
        intrinsics = arrays.intrinsics[chosen]
        inputs["pose2d"] = torch.as_tensor(normalize_2d(arrays.keypoints_2d_px[chosen], intrinsics[:, 0:2],
                                                        intrinsics[:, 2:4], loaded.stats), dtype=torch.float32)
    if "rgb" in loaded.model.encoders:
        size = loaded.cfg.data.image_size
        crops = np.stack([resize_crop(image, size) for image in _split_images(data_dir, split, chosen)])
        inputs["rgb"] = images_to_model_range(torch.as_tensor(crops))
    with torch.no_grad():
        latents = {modality: torch.cat([loaded.model.encode(modality, batch)[0] for batch in x.split(256)]).numpy()
                   for modality, x in inputs.items()}
    actions = [base_action(str(a)) for a in arrays.action[chosen]]
    return plot_latent_umap(latents, actions, out, n_neighbors=n_neighbors, max_points=None, seed=seed)


def errors_figure(checkpoint, data_dir: str | Path, *, split: str = "test", out: str | Path) -> list[Path]:
    """`plot_errors` of a checkpoint on a whole split: MPJPE per joint, MPJPE and PA-MPJPE per
    action (the numbers of `hpe-ray evaluate`, from the same prediction function)."""

    lifter = Lifter.from_checkpoint(checkpoint)
    if "pose2d" not in lifter.encoders:
        raise ValueError(f"{lifter.checkpoint.path}: errors_figure lifts from 2D keypoints; this model has "
                         f"encoders {sorted(lifter.encoders)}")
    arrays = load_pose_arrays(data_dir, split)
    result = lifter.lift(arrays.keypoints_2d_px, arrays.intrinsics[:, 0:2], arrays.intrinsics[:, 2:4],
                         progress=len(arrays) > 100_000)
    per_joint_mm, tables = error_tables(result.poses_3d, root_relative(arrays.pose_3d_cam_mm),
                                        [base_action(str(a)) for a in arrays.action])
    title = (f"{Path(lifter.checkpoint.path).parent.name} (epoch {lifter.checkpoint.epoch}) on {Path(data_dir).name} "
             f"split {split!r}, {len(arrays)} frames, from 2D keypoints")
    return plot_errors(per_joint_mm, tables, out, title=title)


def _split_images(data_dir: str | Path, split: str, indices: np.ndarray) -> list[np.ndarray]:
    """The stored crops (H, W, 3) uint8 of the samples at `indices` (shard order) of a split."""
    wanted = set(indices.tolist())
    images = {i: sample.image for i, sample in enumerate(iter_samples(data_dir, split)) if i in wanted}
    missing = wanted - {i for i, image in images.items() if image is not None}
    if missing:
        raise ValueError(f"{data_dir}: split {split!r} has no image for {len(missing)} of the chosen samples")
    return [images[i] for i in indices.tolist()]


# ---------------------------------------------------------------- animation of a predict .npz

ANIMATION_SUFFIXES = (".gif", ".mp4")
DEFAULT_ANIMATION_FPS = 25.0
PROGRESS_MIN_FRAMES = 100  # longer animations get a progress bar
_PREDICT_KEYS = ("poses_3d", "valid", "tracks", "frames", "keypoints_2d", "low_confidence")
_PREDICT_OPTIONAL_KEYS = ("hypotheses", "fps", "image_size")


def animate_predictions(predictions: str | Path, out: str | Path, *, track: str | None = None,
                        fps: float | None = None, max_frames: int | None = None,
                        size_px: tuple[int, int] = ANIMATION_SIZE_PX) -> Path:
    """Animate one track of a `hpe-ray predict` .npz: an MP4 or GIF (by out's suffix) with the 2D
    keypoints that were lifted on the left and the 3D mean pose, with the hypotheses when the file
    has them, on the right (`plotting.sequence_frames`); one video frame per sample of the track,
    in frame order. Returns out.

    track: default the longest (the first of equally long ones). fps: default the file's
    (`predict --fps`), else 25. max_frames: only the track's first max_frames samples.
    """
    predictions, out = Path(predictions), Path(out)
    if out.suffix.lower() not in ANIMATION_SUFFIXES:
        raise ValueError(f"{out}: the animation is written as .mp4 or .gif, chosen by the suffix")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arrays = _read_predictions(predictions)
    tracks = track_order(arrays["tracks"].astype(str), arrays["frames"])
    if track is None:
        track = max(tracks, key=lambda name: len(tracks[name]))
    elif str(track) not in tracks:
        names = list(tracks)
        raise ValueError(f"{predictions}: no track {track!r}; its tracks: {', '.join(names[:10])}"
                         + (f" and {len(names) - 10} more" if len(names) > 10 else ""))
    track = str(track)
    rows = tracks[track][:max_frames]
    if fps is None:
        fps = float(arrays["fps"]) if "fps" in arrays else DEFAULT_ANIMATION_FPS
    image_size = None
    if "image_size" in arrays:
        known = arrays["image_size"][rows]
        known = known[np.all(np.isfinite(known), axis=1)]
        image_size = known[0] if len(known) else None
    frames = sequence_frames(arrays["keypoints_2d"][rows], arrays["poses_3d"][rows],
                             low_confidence=arrays["low_confidence"][rows],
                             hypotheses_mm=arrays["hypotheses"][rows] if "hypotheses" in arrays else None,
                             frames=arrays["frames"][rows], image_size_px=image_size,
                             title=f"{predictions.name}, track {track}: ", size_px=size_px)
    frames = tqdm(frames, total=len(rows), desc=f"rendering {out.name}", unit=" frames",
                  disable=len(rows) < PROGRESS_MIN_FRAMES)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(frames, out, fps)
    return out


def _read_predictions(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a predict .npz that the animation uses; one-line errors naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz file (expected the output of `hpe-ray predict`)")
    try:
        with np.load(path) as data:
            missing = [key for key in _PREDICT_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"no {missing[0]!r}: not an `hpe-ray predict` output of 2D keypoints")
            return {key: data[key] for key in _PREDICT_KEYS + _PREDICT_OPTIONAL_KEYS if key in data.files}
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def write_video(frames: Iterable[np.ndarray], out: str | Path, fps: float) -> int:
    """Write (H, W, 3) uint8 RGB frames to out: a looping GIF (Pillow) or an H.264 MP4 (PyAV,
    libx264, else MPEG-4 Part 2 where PyAV's build lacks it), by the suffix; returns the number
    of frames. An MP4 needs even sizes: an odd last row or column is cut."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".gif":
        return _write_gif(frames, out, fps)
    if suffix == ".mp4":
        return _write_mp4(frames, out, fps)
    raise ValueError(f"{out}: videos are written as .mp4 or .gif, chosen by the suffix")


def _write_gif(frames: Iterable[np.ndarray], out: Path, fps: float) -> int:
    from PIL import Image

    # Palette images as they come: a third of the memory of RGB until the file is written. Median
    # cut (the default) keeps the light greys that the faster octree turns white.
    images = [Image.fromarray(frame).quantize() for frame in frames]
    if not images:
        raise ValueError(f"{out}: no frames to write")
    images[0].save(out, save_all=True, append_images=images[1:], duration=max(round(1000 / fps), 20), loop=0)
    return len(images)


def _write_mp4(frames: Iterable[np.ndarray], out: Path, fps: float) -> int:
    av = import_extra("av", "video", f"{out}: writing .mp4 (or write a .gif, which needs nothing more)")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    count = 0
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames:
            frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        if count == 0:
            raise ValueError(f"{out}: no frames to write")
        container.mux(stream.encode())
    return count
