"""Users' data to shards: Human3.6M files and BVH folders become `{split: samples}` for write_shards.

The readers (h36m, bvh) know nothing of shards and the shard writer nothing of formats; this
joins them and records how the data was made. (The synthetic default has its own
`synthetic.write_synthetic_dataset`, which renders in parallel processes.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from hpe_ray.data.sample import BadSampleError
from hpe_ray.data.shards import write_shards


def write_h36m_dataset(kind: str, inputs: Sequence[str | Path], out_dir: str | Path, *,
                       extrinsics: str | Path | None = None, cameras: str | Path | None = None,
                       image_size: int | None = None, frame_step: int = 1,
                       val_subjects: Sequence[str] | None = None, max_samples_per_shard: int = 2000,
                       overwrite: bool = False, on_error: str = "raise") -> dict:
    """Human3.6M as shards. kind and inputs:

    videopose3d: [data_3d_h36m.npz, (data_2d_h36m_*.npz)]  (extrinsics: JSON for world-frame 3D)
    mmpose:      annotation npz files (h36m_train.npz, h36m_test.npz)  (cameras: cameras.pkl)
    original:    [release root holding S1/, S5/, ...]  (image_size: crop frames from the videos)
    """
    from hpe_ray.data import h36m

    split_kw = {} if val_subjects is None else {"val_subjects": tuple(val_subjects)}
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    if kind == "videopose3d":
        if len(inputs) not in (1, 2):
            raise BadSampleError(f"videopose3d takes the 3D npz and optionally the 2D npz, got {len(inputs)} paths")
        splits = h36m.load_videopose3d(inputs[0], inputs[1] if len(inputs) == 2 else None, extrinsics,
                                       frame_step=frame_step, **split_kw)
    elif kind == "mmpose":
        splits = h36m.load_mmpose(inputs, cameras, frame_step=frame_step, **split_kw)
    elif kind == "original":
        if len(inputs) != 1:
            raise BadSampleError(f"original takes one release root folder, got {len(inputs)} paths")
        splits = h36m.load_original_release(inputs[0], image_size=image_size or None, frame_step=frame_step,
                                            extrinsics_path=extrinsics, **split_kw)
    else:
        raise ValueError(f"unknown Human3.6M format {kind!r}: videopose3d, mmpose or original")
    settings = {"format": kind, "inputs": [str(p) for p in inputs], "frame_step": frame_step,
                "image_size": image_size, "extrinsics": str(extrinsics) if extrinsics else None, **split_kw}
    return write_shards(splits, out_dir, source=f"h36m-{kind}", settings=settings,
                        max_samples_per_shard=max_samples_per_shard, overwrite=overwrite, on_error=on_error)


def write_bvh_dataset(inputs: Sequence[str | Path], out_dir: str | Path, *, skeleton: str = "auto",
                      settings=None, val_styles: Sequence[str] | None = None,
                      test_styles: Sequence[str] | None = None, split: str = "test",
                      max_samples_per_shard: int = 2000, overwrite: bool = False,
                      on_error: str = "raise") -> dict:
    """BVH motion capture as shards, projected through `settings.cameras` (`bvh.BvhSettings`).

    A folder of Bandai-Namco clips (dataset-1_MOTION_STYLE_ID.bvh) is split by style (subject =
    style, action = motion; val_styles/test_styles default to bvh.BANDAI_*_STYLES). Any other set
    of files (e.g. a CMU clip, another skeleton) goes whole into `split`, subject and action
    named by the file: for evaluating a model on unseen bodies and motions.
    skeleton: a bvh.JOINT_MAPS name, or "auto" (Bandai-Namco names -> bandai-namco, else cmu).
    """
    from hpe_ray.data import bvh

    settings = settings or bvh.BvhSettings()
    paths = _bvh_paths(inputs)
    bandai = all(p.name.startswith("dataset-1_") for p in paths)
    map_name = ("bandai-namco" if bandai else "cmu") if skeleton == "auto" else skeleton
    if map_name not in bvh.JOINT_MAPS:
        raise ValueError(f"unknown BVH skeleton {skeleton!r}: auto or one of {sorted(bvh.JOINT_MAPS)}")
    if bandai and map_name == "bandai-namco" and len(inputs) == 1 and Path(inputs[0]).is_dir():
        style_kw = {k: tuple(v) for k, v in (("val_styles", val_styles), ("test_styles", test_styles))
                    if v is not None}
        splits = bvh.bandai_namco_splits(inputs[0], settings=settings, **style_kw)
        split_note = {"split_by": "style", **style_kw}
    else:
        clips = [(p, p.stem, p.stem) for p in paths]
        splits = {split: bvh.clips_samples(clips, bvh.JOINT_MAPS[map_name], settings)}
        split_note = {"split_by": "file", "split": split}
    return write_shards(splits, out_dir, source=f"bvh-{map_name}",
                        settings={"inputs": [str(p) for p in inputs], "skeleton": map_name,
                                  **_settings(settings), **split_note},
                        max_samples_per_shard=max_samples_per_shard, overwrite=overwrite, on_error=on_error)


def _bvh_paths(inputs: Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(item.glob("*.bvh"))
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not paths:
        raise BadSampleError(f"{', '.join(map(str, inputs))}: no .bvh files")
    return paths


def _settings(spec) -> dict:
    """A dataclass's fields as JSON-able values for the manifest."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}
