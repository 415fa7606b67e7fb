"""The main job on the embedded default: dataset -> quick Optuna search -> leaderboard -> report,
then a short cross-modal stage (RGB crops and 2D poses streamed to Ray Train workers, RGB -> 3D
beside 2D -> 3D on the test split)."""

from __future__ import annotations

import time
from pathlib import Path

from hpe_ray.config import Config

EXAMPLE_CROPS = 8  # test crops written for the `hpe-ray predict --images` example
INPUT_LABELS = {"rgb": "RGB crop -> 3D", "pose2d": "2D pose -> 3D"}


def run_demo(data_dir: str | Path = "data/synthetic", out_dir: str | Path = "runs",
             space: str | Path = "quick", trials: int | None = None, name: str = "demo",
             crossmodal_config: str | Path | None = "crossmodal-demo") -> None:
    """Generate the default synthetic dataset (once), run the search, print where to look, then
    train and evaluate the cross-modal model of `crossmodal_config` (None: skip that stage).
    `space` and `crossmodal_config` are files or the names of packaged ones.

    The dataset's crops are rendered at the cross-modal config's image size (poses only when the
    stage is skipped). Re-running resumes an interrupted search and training and reuses the dataset.
    """
    from hpe_ray.config import load_config
    from hpe_ray.data.shards import summary
    from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset
    from hpe_ray.report import make_report
    from hpe_ray.search.space import load_space
    from hpe_ray.search.tune import run_search

    started = time.perf_counter()
    load_space(space)  # a bad space or config fails before minutes of data generation
    crossmodal = load_config(crossmodal_config) if crossmodal_config is not None else None
    data_dir = Path(data_dir)
    if (data_dir / "manifest.json").is_file():
        print(f"using the existing dataset in {data_dir}")
    else:
        print(f"generating the embedded default dataset in {data_dir} ...")
        image_size = crossmodal.data.image_size if crossmodal is not None else 0
        write_synthetic_dataset(SyntheticSpec(image_size=image_size), data_dir, workers=2)
    print(summary(data_dir))
    print(f"dataset ready after {time.perf_counter() - started:.0f} s")

    experiment_dir = Path(out_dir).resolve() / name
    result = run_search(space, data_dir, trials=trials, resume=True, storage=out_dir, name=name)
    print("\nleaderboard (validation MPJPE, mm, synthetic data):")
    for path in make_report(experiment_dir):  # prints the leaderboard and the best trial
        print(f"report: {path}")
    if result.best_checkpoint:
        for path in result_figures(result.best_checkpoint, data_dir, experiment_dir / "figures"):
            print(f"figure: {path}")
    print(f"TensorBoard: tensorboard --logdir {experiment_dir}  (Scalars: ray/tune/val_mpjpe; HParams tab)")
    if crossmodal is not None:
        crossmodal_stage(crossmodal, data_dir, out_dir, name)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")


def result_figures(checkpoint: str | Path, data_dir: str | Path, out_dir: Path) -> list[Path]:
    """The thesis's two figures for the best model on the test split: 25 predictions against
    ground truth (with 5 sampled hypotheses) and the latent space in UMAP coloured by action."""
    from hpe_ray import figures

    return (figures.predictions_figure(checkpoint, data_dir, split="test", n=25, hypotheses=5,
                                       out=out_dir / "predictions")
            + figures.latent_figure(checkpoint, data_dir, split="test", max_points=2000, out=out_dir / "latent")
            + figures.errors_figure(checkpoint, data_dir, split="test", out=out_dir / "errors"))


def crossmodal_stage(cfg: Config, data_dir: str | Path, out_dir: str | Path, name: str,
                     hypotheses: int = 10) -> Path | None:
    """Train `cfg` on data_dir with Ray Train (crops streamed from the shards to its workers) as
    run "<name>-crossmodal" under out_dir, print RGB -> 3D and 2D -> 3D on the test split beside
    the training mean pose, write a few test crops and print the `hpe-ray predict --images`
    command that lifts them. Returns the best checkpoint (lowest validation MPJPE), or None when
    the dataset has no images."""
    from hpe_ray.data.shards import load_manifest
    from hpe_ray.distributed import run_training
    from hpe_ray.evaluate import compare_table, evaluate_checkpoint, mean_pose_tables
    from hpe_ray.training.checkpoint import resolve_checkpoint_file

    started = time.perf_counter()
    train = load_manifest(data_dir)["splits"]["train"]
    if train["with_images"] < train["count"]:
        print(f"\nskipping the cross-modal stage: {data_dir} has no crops "
              f"(generate one with `hpe-ray data synth --out DIR --image-size {cfg.data.image_size}`)")
        return None
    data_dir = Path(data_dir).resolve()
    cfg = cfg.with_overrides({"data.dir": str(data_dir), "run.storage": str(Path(out_dir).resolve()),
                              "run.name": f"{name}-crossmodal"})
    pairs = ", ".join(cfg.loss.pairs)
    print(f"\ncross-modal stage: {pairs}; {cfg.data.image_size} px crops streamed to {cfg.scaling.workers} "
          f"Ray Train workers, {cfg.train.epochs} epochs x {cfg.train.steps_per_epoch} steps")
    result = run_training(cfg)
    if result.error is not None:
        raise result.error
    checkpoint = resolve_checkpoint_file(result.path)
    encoders, _ = cfg.modalities
    rows = {INPUT_LABELS[m]: evaluate_checkpoint(checkpoint, data_dir, hypotheses=hypotheses, modality=m).tables
            for m in INPUT_LABELS if m in encoders}
    rows["training mean pose (no input)"] = mean_pose_tables(data_dir)
    print("\ncross-modal model on the test split (synthetic S9, S11; action-wise average, mm):")
    print(compare_table(rows, "Input"))
    crops_dir = write_example_crops(data_dir, Path(out_dir).resolve() / name / "crops", EXAMPLE_CROPS)
    print(f"best checkpoint: {checkpoint}")
    print(f"lift crops with it: hpe-ray predict --checkpoint {checkpoint} --images {crops_dir} "
          f"--out {crops_dir.parent / 'crops-poses.npz'} --hypotheses {hypotheses}")
    print(f"cross-modal stage finished in {time.perf_counter() - started:.0f} s")
    return checkpoint


def write_example_crops(data_dir: str | Path, out_dir: Path, count: int) -> Path:
    """`count` crops of the test split, evenly spaced over it, as PNG files named after their
    sample keys in out_dir (created); returns out_dir."""
    from itertools import islice

    from PIL import Image

    from hpe_ray.data.shards import load_manifest
    from hpe_ray.data.stream import iter_samples

    step = max(1, load_manifest(data_dir)["splits"]["test"]["count"] // count)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(islice(iter_samples(data_dir, "test"), 0, step * count, step)):
        Image.fromarray(sample.image).save(out_dir / f"{index:02d}_{sample.key}.png")
    return out_dir
