"""`hpe-ray` command line: argument parsing only; every command calls one library function.

Heavy imports (torch, ray) happen inside the handlers so `hpe-ray --help` and config errors
are instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import yaml


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set model.latent_dim=32` -> {"model.latent_dim": 32} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


# ---------------------------------------------------------------- data

def _cmd_data_synth(args: argparse.Namespace) -> None:
    from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset

    chosen = {"seed": args.seed, "sequences_per_action": args.sequences, "frames_per_sequence": args.frames,
              "frame_step": args.frame_step, "image_size": args.image_size, "cameras": args.cameras,
              "virtual_cameras": args.virtual_cameras}
    spec = SyntheticSpec(**{k: v for k, v in chosen.items() if v is not None})
    write_synthetic_dataset(spec, args.out, max_samples_per_shard=args.shard_size,
                            overwrite=args.overwrite, workers=args.workers)
    _print_summary(args.out)


def _cmd_data_h36m(args: argparse.Namespace) -> None:
    from hpe_ray.data.convert import write_h36m_dataset

    write_h36m_dataset(args.format, args.input, args.out, extrinsics=args.extrinsics, cameras=args.cameras,
                       image_size=args.image_size, frame_step=args.frame_step, val_subjects=args.val_subjects,
                       max_samples_per_shard=args.shard_size, overwrite=args.overwrite, on_error=args.on_error)
    _print_summary(args.out)


def _cmd_data_bvh(args: argparse.Namespace) -> None:
    from hpe_ray.data.bvh import BvhSettings
    from hpe_ray.data.convert import write_bvh_dataset

    settings = BvhSettings(target_fps=args.fps, cameras=args.cameras, virtual_cameras=args.virtual_cameras,
                           image_size=args.image_size or None, seed=args.seed)
    write_bvh_dataset(args.input, args.out, skeleton=args.skeleton, settings=settings,
                      val_styles=args.val_styles, test_styles=args.test_styles, split=args.split,
                      max_samples_per_shard=args.shard_size, overwrite=args.overwrite, on_error=args.on_error)
    _print_summary(args.out)


def _print_summary(data_dir: str) -> None:
    from hpe_ray.data.shards import summary

    print(summary(data_dir))


def _cmd_data_summary(args: argparse.Namespace) -> None:
    _print_summary(args.dir)


def _cmd_data_verify(args: argparse.Namespace) -> None:
    from hpe_ray.data.stream import verify_shards

    print(verify_shards(args.dir, on_error=args.on_error))


# ---------------------------------------------------------------- train / evaluate

def _load_config(args: argparse.Namespace):
    from hpe_ray.config import load_config

    overrides = _parse_overrides(args.set)
    if getattr(args, "data", None):
        overrides["data.dir"] = args.data
    if getattr(args, "workers", None):
        overrides["scaling.workers"] = args.workers
    if getattr(args, "gpus_per_worker", None) is not None:
        overrides["scaling.gpus_per_worker"] = args.gpus_per_worker
    if getattr(args, "epochs", None):
        overrides["train.epochs"] = args.epochs
    if getattr(args, "name", None):
        overrides["run.name"] = args.name
    return load_config(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> None:
    cfg = _load_config(args)  # fails on a bad key before any cluster work
    from hpe_ray.distributed import run_training

    result = run_training(cfg, resume=not args.restart)
    print(f"run directory: {result.path}")
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint.path}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from hpe_ray.evaluate import evaluate_checkpoint, format_table, write_tables

    result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split,
                                 hypotheses=args.hypotheses, modality=args.modality)
    print(format_table(result))
    out = args.out or str(Path(args.checkpoint).resolve().parent / "evaluation")
    for path in write_tables(result, out):
        print(f"wrote {path}")


# ---------------------------------------------------------------- tune / report

def _cmd_tune(args: argparse.Namespace) -> None:
    from hpe_ray.search.space import load_space
    from hpe_ray.search.tune import run_search

    load_space(args.space)  # a bad space fails here, before Ray starts
    run_search(args.space, args.data, trials=args.trials, resume=args.resume,
               address=args.address, storage=args.storage, name=args.name)


def _cmd_report(args: argparse.Namespace) -> None:
    from hpe_ray.report import make_report

    for path in make_report(args.experiment_dir):
        print(f"wrote {path}")


# ---------------------------------------------------------------- results

def _cmd_viz(args: argparse.Namespace) -> None:
    from hpe_ray import figures

    if args.figure == "predictions":
        paths = figures.predictions_figure(args.checkpoint, args.data, split=args.split, n=args.n,
                                           hypotheses=args.hypotheses, seed=args.seed, out=args.out)
    elif args.figure == "latent":
        paths = figures.latent_figure(args.checkpoint, args.data, split=args.split,
                                      n_neighbors=tuple(args.n_neighbors), max_points=args.max_points,
                                      seed=args.seed, out=args.out)
    else:
        paths = figures.errors_figure(args.checkpoint, args.data, split=args.split, out=args.out)
    for path in paths:
        print(f"wrote {path}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from hpe_ray.inference import predict_file

    print(predict_file(args.checkpoint, args.input, args.output, hypotheses=args.hypotheses,
                       images_dir=args.images, keypoint_format=args.format))


def _cmd_export(args: argparse.Namespace) -> None:
    from hpe_ray.inference import export_lifter

    for path in export_lifter(args.checkpoint, args.out, formats=tuple(args.formats)):
        print(f"wrote {path}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from hpe_ray.demo import run_demo

    run_demo(data_dir=args.data, out_dir=args.out, space=args.space, trials=args.trials,
             crossmodal_config=None if args.no_crossmodal else args.crossmodal_config)


# ---------------------------------------------------------------- parser

def _add(sub, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpe-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or convert datasets into WebDataset shards")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = _add(dsub, "synth", _cmd_data_synth, "generate the embedded synthetic default dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--sequences", type=int, help="sequences per action and subject (default 4)")
    p.add_argument("--frames", type=int, help="frames per sequence (default 20)")
    p.add_argument("--frame-step", type=int, help="frames at 50 fps between samples (default 10)")
    p.add_argument("--image-size", type=int, help="crop size in px (default 256); 0 = poses only")
    p.add_argument("--cameras", choices=["h36m", "virtual"],
                   help="h36m: the 4 Human3.6M-like cameras (default); virtual: random unseen views")
    p.add_argument("--virtual-cameras", type=int, help="views per sequence with --cameras virtual (default 4)")
    p.add_argument("--shard-size", type=int, default=2000, help="samples per shard")
    p.add_argument("--workers", type=int, default=2, help="processes for rendering")
    p.add_argument("--overwrite", action="store_true")

    p = _add(dsub, "h36m", _cmd_data_h36m, "convert Human3.6M (VideoPose3D npz, MMPose npz, original release)")
    p.add_argument("--format", required=True, choices=["videopose3d", "mmpose", "original"])
    p.add_argument("--input", required=True, nargs="+",
                   help="videopose3d: data_3d.npz [data_2d.npz]; mmpose: annotation npz files; original: release root")
    p.add_argument("--out", required=True)
    p.add_argument("--extrinsics", help="camera extrinsics JSON (world-frame 3D; see hpe_ray.data.h36m.read_extrinsics)")
    p.add_argument("--cameras", help="MMPose cameras.pkl (default: the public Human3.6M intrinsics)")
    p.add_argument("--image-size", type=int, default=0, help="original release: crop size in px; 0 = poses only")
    p.add_argument("--frame-step", type=int, default=5, help="keep every n-th frame (50 fps source)")
    p.add_argument("--val-subjects", nargs="*", help="default S8 (taken from the training subjects)")
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--overwrite", action="store_true")

    p = _add(dsub, "bvh", _cmd_data_bvh, "convert BVH motion capture, projected through virtual cameras")
    p.add_argument("--input", required=True, nargs="+", help="folders of .bvh files or single files")
    p.add_argument("--out", required=True)
    p.add_argument("--skeleton", default="auto", help="joint map: auto, bandai-namco, cmu")
    p.add_argument("--fps", type=float, default=30.0, help="resample to this frame rate")
    p.add_argument("--cameras", choices=["h36m", "virtual"], default="h36m")
    p.add_argument("--virtual-cameras", type=int, default=4, help="views per clip with --cameras virtual")
    p.add_argument("--image-size", type=int, default=0, help="crop size in px; 0 = poses only")
    p.add_argument("--val-styles", nargs="*", help="Bandai-Namco: styles held out for validation (default tired)")
    p.add_argument("--test-styles", nargs="*", help="Bandai-Namco: styles held out for test (default angry old)")
    p.add_argument("--split", default="test", help="other BVH sets: the split all clips go to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--overwrite", action="store_true")

    p = _add(dsub, "summary", _cmd_data_summary, "print a dataset's counts, subjects, actions and shard sizes")
    p.add_argument("dir")
    p = _add(dsub, "verify", _cmd_data_verify, "read every shard and report bad samples")
    p.add_argument("dir")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")

    p = _add(sub, "train", _cmd_train, "train with Ray Train (resumes a run of the same name)")
    p.add_argument("--config", required=True)
    p.add_argument("--data", help="shard directory (overrides data.dir)")
    p.add_argument("--workers", type=int)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--name", help="run name (overrides run.name)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--restart", action="store_true", help="ignore an existing run of this name")

    p = _add(sub, "evaluate", _cmd_evaluate, "Protocol 1 and 2 tables per action for a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--hypotheses", type=int, default=1, help="K for best-of-K sampling")
    p.add_argument("--modality", choices=["pose2d", "rgb"], default="pose2d")
    p.add_argument("--out", help="folder for CSV and Markdown tables")

    p = _add(sub, "tune", _cmd_tune, "hyperparameter search with Ray Tune + Optuna + ASHA")
    p.add_argument("--space", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--trials", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--storage", help="experiment storage (shared filesystem on a cluster)")
    p.add_argument("--name", help="experiment name")

    p = _add(sub, "report", _cmd_report, "leaderboard and plots of a search")
    p.add_argument("experiment_dir")

    p = _add(sub, "viz", _cmd_viz, "figures: predictions, latent (UMAP), errors")
    p.add_argument("figure", choices=["predictions", "latent", "errors"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=25)
    p.add_argument("--hypotheses", type=int, default=1)
    p.add_argument("--n-neighbors", type=int, nargs="+", default=[5, 15, 50, 200])
    p.add_argument("--max-points", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file stem (PNG and PDF written)")

    p = _add(sub, "predict", _cmd_predict, "lift 2D keypoints (or person crops) to 3D")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", help=".npz (keypoints_2d, focal, center) or COCO results .json")
    p.add_argument("--images", help="folder of person crops for the RGB encoder")
    p.add_argument("--output", required=True)
    p.add_argument("--hypotheses", type=int, default=1)
    p.add_argument("--format", default="auto", choices=["auto", "h36m", "coco"])

    p = _add(sub, "export", _cmd_export, "export the 2D->3D lifter to TorchScript and ONNX")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--formats", nargs="+", default=["torchscript", "onnx"])

    p = _add(sub, "demo", _cmd_demo, "the main job: default dataset + quick search + leaderboard + cross-modal stage")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="runs")
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "tune_spaces" / "quick.yaml"))
    p.add_argument("--trials", type=int)
    p.add_argument("--crossmodal-config",
                   default=str(Path(__file__).resolve().parents[1] / "configs" / "crossmodal-demo.yaml"),
                   help="config of the cross-modal stage (RGB -> 3D beside 2D -> 3D); its image size is the dataset's")
    p.add_argument("--no-crossmodal", action="store_true", help="skip the cross-modal stage")
    return parser


def main(argv: list[str] | None = None) -> int:
    from hpe_ray.config import ConfigError
    from hpe_ray.data.sample import BadSampleError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ConfigError, BadSampleError, FileNotFoundError, FileExistsError) as err:
        print(f"hpe-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpe-ray: interrupted", file=sys.stderr)
        return 130
    return 0
