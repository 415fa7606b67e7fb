"""Read throughput of the shard reader, with and without images, in one process.

    python benchmarks/data_throughput.py                    # generates a synthetic dataset first
    python benchmarks/data_throughput.py --data DIR         # an existing shard directory

Prints shard sizes, then samples/s of verify_shards, load_pose_arrays and the training loader
(num_workers=0) poses-only and with images. Numbers are for this machine and dataset only.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from hpe_ray.data import shards, stream
from hpe_ray.data.synthetic import SyntheticSpec, synthetic_splits


def generate(out_dir: Path, image_size: int, frames: int, shard_size: int) -> None:
    spec = SyntheticSpec(sequences_per_action=1, frames_per_sequence=frames, image_size=image_size)
    start = time.perf_counter()
    manifest = shards.write_shards(synthetic_splits(spec), out_dir, source="synthetic",
                                   settings={"seed": spec.seed}, max_samples_per_shard=shard_size,
                                   totals={split: spec.count(split) for split in ("train", "val", "test")})
    total = sum(entry["count"] for entry in manifest["splits"].values())
    print(f"generated and wrote {total} samples in {time.perf_counter() - start:.1f} s (rendering dominates)")


def timed(label: str, count_samples) -> None:
    """Run `count_samples()` (returns how many samples it read) and print its throughput."""
    start = time.perf_counter()
    num_samples = count_samples()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {num_samples:>7} samples {seconds:7.2f} s {num_samples / seconds:>9.0f} samples/s")


def epoch_samples(loader) -> int:
    return sum(len(batch["key"]) for batch in loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="existing shard directory (default: generate one)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="crop size of the generated data (0: poses only) and of the loader")
    parser.add_argument("--frames", type=int, default=20, help="frames per generated sequence")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(scratch) / "data"
            generate(data_dir, args.image_size, args.frames, args.shard_size)
        print(shards.summary(data_dir))
        manifest = stream.load_manifest(data_dir)
        train = manifest["splits"]["train"]
        print(f"train: {train['bytes'] / max(train['count'], 1) / 1e3:.1f} kB per sample\n")

        stats = stream.load_stats(data_dir)
        timed("verify_shards (train)", lambda: stream.verify_shards(data_dir, ["train"])["train"]["samples"])
        timed("load_pose_arrays (train)", lambda: len(stream.load_pose_arrays(data_dir, "train")))
        for with_images in (False, True) if train["with_images"] == train["count"] else (False,):
            loader = stream.make_loader(data_dir, "train", args.batch_size, with_images=with_images,
                                        image_size=args.image_size, stats=stats, shuffle_buffer=2000,
                                        num_workers=0, verify=False)
            timed(f"make_loader, {'with images' if with_images else 'poses only'}, 1 epoch",
                  functools.partial(epoch_samples, loader))


if __name__ == "__main__":
    main()
