"""`hpe-ray` command line: argument parsing only; every command calls one library function.

Heavy imports (torch, ray) happen inside the handlers so `hpe-ray --help` and config errors
are instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

from hpe_ray.camera import DEFAULT_FOV_DEG
from hpe_ray.inference.formats import DEFAULT_MIN_SCORE


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


def _print_summary(data_dir: str, full: bool = False) -> None:
    from hpe_ray.data.shards import summary

    print(summary(data_dir, full=full))


def _cmd_data_summary(args: argparse.Namespace) -> None:
    _print_summary(args.dir, full=args.full)


def _cmd_data_verify(args: argparse.Namespace) -> None:
    from hpe_ray.data.stream import verify_shards

    print(verify_shards(args.dir, on_error=args.on_error))


# ---------------------------------------------------------------- train / evaluate

def _load_config(args: argparse.Namespace):
    from hpe_ray.config import load_config

    overrides = _parse_overrides(args.set)
    if getattr(args, "data", None):
        overrides["data.dir"] = args.data
    if getattr(args, "workers", None) is not None:
        overrides["scaling.workers"] = args.workers
    if getattr(args, "gpus_per_worker", None) is not None:
        overrides["scaling.gpus_per_worker"] = args.gpus_per_worker
    if getattr(args, "epochs", None) is not None:
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
                                 hypotheses=args.hypotheses, modality=args.modality, fit_2d=args.fit_2d)
    print(format_table(result))
    out = args.out or str(Path(args.checkpoint).resolve().parent / "evaluation")
    for path in write_tables(result, out):
        print(f"wrote {path}")


# ---------------------------------------------------------------- tune / report

EXIT_UNFINISHED = 3
"""`tune`'s exit code when the search stopped before every trial finished (Ctrl-C, SIGTERM, SLURM's
USR1): its state is saved, and the same command with --resume continues it."""


def _cmd_tune(args: argparse.Namespace) -> int:
    from hpe_ray.search.space import load_space
    from hpe_ray.search.tune import run_search

    load_space(args.space)  # a bad space fails here, before Ray starts
    result = run_search(args.space, args.data, trials=args.trials, resume=args.resume,
                        address=args.address, storage=args.storage, name=args.name)
    return 0 if result.finished else EXIT_UNFINISHED


def _cmd_report(args: argparse.Namespace) -> None:
    from hpe_ray.report import make_report

    for path in make_report(args.experiment_dir):
        print(f"wrote {path}")


def _cmd_dashboard(args: argparse.Namespace) -> None:
    from hpe_ray.search.dashboard import describe_dashboard, make_dashboard_server

    server = make_dashboard_server(args.experiment_dir, host=args.host, port=args.port, storage=args.storage)
    print(describe_dashboard(server, args.experiment_dir), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------- results

def _cmd_viz(args: argparse.Namespace) -> None:
    from hpe_ray import figures

    if args.figure == "animate":
        paths = [figures.animate_predictions(args.predictions, args.out, track=args.track, fps=args.fps,
                                             max_frames=args.max_frames)]
    elif args.figure == "predictions":
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

    if args.focal is not None and len(args.focal) > 2:
        raise ValueError(f"--focal takes fx or fx fy (pixels), got {len(args.focal)} values")
    focal = None if args.focal is None else (args.focal * 2)[:2]
    print(predict_file(args.checkpoint, args.input, args.out, hypotheses=args.hypotheses,
                       images_dir=args.images, keypoint_format=args.format, focal_px=focal, center_px=args.center,
                       image_size_px=args.image_size, fov_deg=args.fov, min_score=args.min_score,
                       smooth_frames=args.smooth, fps=args.fps, formats=("npz", *args.also), fit_2d=args.fit_2d))


def _cmd_export(args: argparse.Namespace) -> None:
    from hpe_ray.inference import export_lifter

    for path in export_lifter(args.checkpoint, args.out, formats=tuple(args.formats), fit_2d=args.fit_2d):
        print(f"wrote {path}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from hpe_ray.demo import run_demo

    run_demo(data_dir=args.data, out_dir=args.out, space=args.space, trials=args.trials,
             crossmodal_config=None if args.no_crossmodal else args.crossmodal_config)


def _cmd_requirements(args: argparse.Namespace) -> None:
    import json

    from hpe_ray.dependencies import CLUSTER_PROVIDED, cluster_requirements

    requirements = cluster_requirements(tuple(args.extra), exclude=() if args.all else CLUSTER_PROVIDED)
    print(json.dumps({"pip": requirements}) if args.runtime_env else "\n".join(requirements))


# ---------------------------------------------------------------- parser

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or False (no value, an off switch; a None flag's
    help says what applies): "(default 4) (default: None)" told users two things."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:  # identity: a default of 0 is shown
            return action.help
        return super()._get_help_string(action)


def _add(sub, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
    p.set_defaults(func=func)
    return p


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_fit_2d(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fit-2d", type=_fraction, metavar="STRENGTH",
                   help="how far each pose lifted from 2D moves onto its keypoints' rays, 0-1; 1 follows exact 2D, "
                        "lower suits noisy detector 2D: README (default: the model's model.fit_2d)")


def build_parser() -> argparse.ArgumentParser:
    from hpe_ray import __version__

    parser = argparse.ArgumentParser(prog="hpe-ray", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpe-ray {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="debug logging, and a traceback with errors (or HPE_RAY_LOG_LEVEL=DEBUG)")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="warnings and results only; Ray Tune's per-trial tables off (or HPE_RAY_LOG_LEVEL=WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or convert datasets into WebDataset shards",
                          formatter_class=_HelpFormatter)
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = _add(dsub, "synth", _cmd_data_synth, "generate the embedded synthetic default dataset")
    p.add_argument("--out", required=True, help="dataset folder to write (shards, *-poses.npz, manifest.json, stats.json)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--sequences", type=int, help="sequences per action and subject (default 4)")
    p.add_argument("--frames", type=int, help="frames per sequence (default 20)")
    p.add_argument("--frame-step", type=int, help="frames at 50 fps between samples (default 10)")
    p.add_argument("--image-size", type=int, help="crop size in px (default 256); 0 = poses only")
    p.add_argument("--cameras", choices=["h36m", "virtual"], default=None,
                   help="h36m: the 4 Human3.6M-like cameras (default); virtual: random unseen views")
    p.add_argument("--virtual-cameras", type=int, help="views per sequence with --cameras virtual (default 4)")
    p.add_argument("--shard-size", type=int, default=2000, help="samples per shard")
    p.add_argument("--workers", type=int, default=2, help="processes for rendering")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    p = _add(dsub, "h36m", _cmd_data_h36m, "convert Human3.6M (VideoPose3D npz, MMPose npz, original release)")
    p.add_argument("--format", required=True, choices=["videopose3d", "mmpose", "original"],
                   help="which release of Human3.6M the input is")
    p.add_argument("--input", required=True, nargs="+",
                   help="videopose3d: data_3d.npz [data_2d.npz]; mmpose: annotation npz files; original: release root")
    p.add_argument("--out", required=True, help="dataset folder to write (shards, *-poses.npz, manifest.json, stats.json)")
    p.add_argument("--extrinsics", help="camera extrinsics JSON (world-frame 3D; see hpe_ray.data.h36m.read_extrinsics)")
    p.add_argument("--cameras", help="MMPose cameras.pkl (default: the public Human3.6M intrinsics)")
    p.add_argument("--image-size", type=int, default=0, help="original release: crop size in px; 0 = poses only")
    p.add_argument("--frame-step", type=int, default=5, help="keep every n-th frame (50 fps source)")
    p.add_argument("--val-subjects", nargs="*", help="default S8 (taken from the training subjects)")
    p.add_argument("--shard-size", type=int, default=2000, help="samples per shard")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="raise: stop at the first bad sample, naming it; skip: leave it out and count it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    p = _add(dsub, "bvh", _cmd_data_bvh, "convert BVH motion capture, projected through virtual cameras")
    p.add_argument("--input", required=True, nargs="+", help="folders of .bvh files or single files")
    p.add_argument("--out", required=True, help="dataset folder to write (shards, *-poses.npz, manifest.json, stats.json)")
    p.add_argument("--skeleton", default="auto", help="joint map: auto, bandai-namco, cmu")
    p.add_argument("--fps", type=float, default=30.0, help="resample to this frame rate")
    p.add_argument("--cameras", choices=["h36m", "virtual"], default="h36m",
                   help="h36m: the 4 Human3.6M-like cameras; virtual: random views per clip")
    p.add_argument("--virtual-cameras", type=int, default=4, help="views per clip with --cameras virtual")
    p.add_argument("--image-size", type=int, default=0, help="crop size in px; 0 = poses only")
    p.add_argument("--val-styles", nargs="*", help="Bandai-Namco: styles held out for validation (default tired)")
    p.add_argument("--test-styles", nargs="*", help="Bandai-Namco: styles held out for test (default angry old)")
    p.add_argument("--split", default="test", help="other BVH sets: the split all clips go to")
    p.add_argument("--seed", type=int, default=0, help="seed of the virtual cameras")
    p.add_argument("--shard-size", type=int, default=2000, help="samples per shard")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="raise: stop at the first bad sample, naming it; skip: leave it out and count it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    p = _add(dsub, "summary", _cmd_data_summary, "print a dataset's counts, subjects, actions and shard sizes")
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--full", action="store_true", help="list every subject, action and camera (default: the first 12)")
    p = _add(dsub, "verify", _cmd_data_verify, "read every shard and report bad samples")
    p.add_argument("dir", help="dataset folder")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="raise: stop at the first bad sample, naming it; skip: leave it out and count it")

    p = _add(sub, "train", _cmd_train, "train with Ray Train (resumes a run of the same name)")
    p.add_argument("--config", required=True, help="config YAML, or a packaged one by name (lifting, crossmodal, ...)")
    p.add_argument("--data", help="shard directory (overrides data.dir)")
    p.add_argument("--workers", type=int, help="Ray Train workers (overrides scaling.workers)")
    p.add_argument("--gpus-per-worker", type=float, help="overrides scaling.gpus_per_worker")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--name", help="run name (overrides run.name)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.latent_dim=32 (repeatable)")
    p.add_argument("--restart", action="store_true", help="ignore an existing run of this name")

    p = _add(sub, "evaluate", _cmd_evaluate, "Protocol 1 and 2 tables per action for a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, checkpoint folder or run folder (its best checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument("--hypotheses", type=int, default=1, help="K for best-of-K sampling")
    p.add_argument("--modality", choices=["pose2d", "rgb"], default="pose2d", help="input: 2D keypoints or image crops")
    p.add_argument("--out", help="folder for CSV and Markdown tables (default: evaluation/ beside the checkpoint)")
    _add_fit_2d(p)

    p = _add(sub, "tune", _cmd_tune, "hyperparameter search with Ray Tune + Optuna + ASHA")
    p.add_argument("--space", required=True, help="search space YAML, or a packaged one by name (quick, lifting, crossmodal)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--trials", type=int, help="number of trials (default: the space's num_samples)")
    p.add_argument("--resume", action="store_true", help="continue the experiment of this name")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--storage", help="experiment storage (shared filesystem on a cluster)")
    p.add_argument("--name", help="experiment name")

    p = _add(sub, "report", _cmd_report, "leaderboard and plots of a search")
    p.add_argument("experiment_dir", help="a search's experiment folder")

    p = _add(sub, "dashboard", _cmd_dashboard, "live optuna-dashboard of a search (running or finished)")
    p.add_argument("experiment_dir", help="a search's experiment folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; other than loopback exposes it unauthenticated")
    p.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (printed)")
    p.add_argument("--storage", help="the study's database URL, when search.json masks its password")

    viz = _add(sub, "viz", _cmd_viz, "figures: predictions, latent (UMAP), errors; animate a predict .npz")
    vsub = viz.add_subparsers(dest="figure", required=True)

    def checkpoint_figure(name: str, help: str) -> argparse.ArgumentParser:
        p = _add(vsub, name, _cmd_viz, help)
        p.add_argument("--checkpoint", required=True, help="checkpoint file, checkpoint folder or run folder (its best checkpoint)")
        p.add_argument("--data", required=True, help="dataset folder")
        p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to draw from")
        p.add_argument("--out", required=True, help="output file stem (PNG and PDF written)")
        return p

    p = checkpoint_figure("predictions", "predicted vs ground-truth 3D skeletons of samples of a split")
    p.add_argument("--n", type=int, default=25, help="samples shown")
    p.add_argument("--hypotheses", type=int, default=1, help="hypotheses drawn per sample")
    p.add_argument("--seed", type=int, default=0, help="sample selection seed")
    p = checkpoint_figure("latent", "UMAP of the latent means of every encoder on a split")
    p.add_argument("--n-neighbors", type=int, nargs="+", default=[5, 15, 50, 200], help="UMAP n_neighbors, one panel each")
    p.add_argument("--max-points", type=int, default=3000, help="samples embedded")
    p.add_argument("--seed", type=int, default=0, help="sample selection and UMAP seed")
    checkpoint_figure("errors", "MPJPE per joint, MPJPE and PA-MPJPE per action on a split")
    p = _add(vsub, "animate", _cmd_viz, "MP4 or GIF of one track of a `hpe-ray predict` .npz: 2D input left, "
                                        "3D mean pose and hypotheses right")
    p.add_argument("predictions", help="the .npz written by `hpe-ray predict` from 2D keypoints")
    p.add_argument("--out", required=True, help="output .mp4 or .gif (the format follows the suffix)")
    p.add_argument("--track", help="track to animate (default: the longest)")
    p.add_argument("--fps", type=float, help="frame rate (default: the file's `predict --fps`, else 25)")
    p.add_argument("--max-frames", type=int, help="animate only the track's first N samples (default: all)")

    p = _add(sub, "predict", _cmd_predict, "lift 2D keypoints (images or sequences) or person crops to 3D")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, checkpoint folder or run folder")
    p.add_argument("--input", help="2D keypoints: COCO results or MMPose .json, OpenPose folder, VideoPose3D "
                                    "custom .npz, .npz (keypoints_2d, ...) or .csv")
    p.add_argument("--images", help="folder of person crops for the RGB encoder")
    p.add_argument("--out", "--output", dest="out", required=True, help="output .npz; other formats go beside it")
    p.add_argument("--also", nargs="+", default=[], choices=["json", "bvh"],
                   help="also write a viewer JSON and/or a BVH per track (Blender: import with scale 0.01)")
    p.add_argument("--hypotheses", type=int, default=1, help="K samples of the posterior per input besides the mean")
    p.add_argument("--format", default="auto", choices=["auto", "h36m", "coco"],
                   help="joint order of 17-joint files (auto: COCO for detector outputs, Human3.6M for .npz)")
    p.add_argument("--focal", type=float, nargs="+", metavar="F", help="focal length in px (fx [fy])")
    p.add_argument("--center", type=float, nargs=2, metavar=("CX", "CY"), help="principal point in px")
    p.add_argument("--image-size", type=float, nargs=2, metavar=("W", "H"),
                   help="frame size in px, for a camera derived with --fov when none is known")
    p.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG,
                   help="field of view in degrees across the longer image side")
    p.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                   help="detector confidence below which a joint is filled from neighbouring frames")
    p.add_argument("--smooth", type=int, default=1, metavar="FRAMES",
                   help="odd moving-average window over each track's 3D poses (1: off)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate written into JSON and BVH")
    _add_fit_2d(p)

    p = _add(sub, "export", _cmd_export, "export the 2D->3D lifter to TorchScript and ONNX")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, checkpoint folder or run folder (its best checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"],
                   help="files to write")
    _add_fit_2d(p)

    p = _add(sub, "demo", _cmd_demo, "the main job: default dataset + quick search + leaderboard + cross-modal stage")
    p.add_argument("--data", default="data/synthetic", help="dataset folder (generated when missing)")
    p.add_argument("--out", default="runs", help="folder for the search and the cross-modal run")
    p.add_argument("--space", default="quick", help="search space YAML, or a packaged one by name")
    p.add_argument("--trials", type=int, help="number of trials (default: the space's num_samples)")
    p.add_argument("--crossmodal-config",
                   default="crossmodal-demo",
                   help="config of the cross-modal stage (RGB -> 3D beside 2D -> 3D); its image size is the dataset's")
    p.add_argument("--no-crossmodal", action="store_true", help="skip the cross-modal stage")

    p = _add(sub, "requirements", _cmd_requirements,
             "the installed hpe-ray's dependencies for a Ray job's runtime environment (without torch, "
             "torchvision and ray, which the cluster provides)")
    p.add_argument("--extra", action="append", default=[], choices=["export", "h36m", "video", "dashboard", "test"],
                   help="also an optional extra's packages (repeatable)")
    p.add_argument("--all", action="store_true", help="keep torch, torchvision and ray")
    p.add_argument("--runtime-env", action="store_true",
                   help='print {"pip": [...]} for `ray job submit --runtime-env-json`, not one requirement a line')
    return parser


def log_level(args: argparse.Namespace) -> int:
    """-v / -q, else HPE_RAY_LOG_LEVEL (a logging level name), else INFO."""
    if args.verbose:
        return logging.DEBUG
    if args.quiet:
        return logging.WARNING
    name = os.environ.get("HPE_RAY_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise SystemExit(f"hpe-ray: error: HPE_RAY_LOG_LEVEL={name!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    return level


def main(argv: list[str] | None = None) -> int:
    from hpe_ray.config import ConfigError
    from hpe_ray.data.sample import BadSampleError
    from hpe_ray.dependencies import MissingExtraError

    args = build_parser().parse_args(argv)
    level = log_level(args)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # Tune's progress tables follow it too
    try:
        code = args.func(args)
    except (ConfigError, BadSampleError, OSError, ValueError, MissingExtraError) as err:
        if level <= logging.DEBUG:
            traceback.print_exc()
        print(f"hpe-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpe-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from hpe_ray.distributed import RunStopped  # loads Ray; only reached when something failed

        if not isinstance(err, RunStopped):
            raise
        if level <= logging.DEBUG:
            traceback.print_exc()
        print(f"hpe-ray: {err}", file=sys.stderr)
        return err.exit_code
    return code or 0
