"""The main job on the embedded default: dataset -> quick Optuna search -> leaderboard -> report."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(data_dir: str | Path = "data/synthetic", out_dir: str | Path = "runs",
             space: str | Path = "tune_spaces/quick.yaml", trials: int | None = None,
             name: str = "demo") -> None:
    """Generate the default synthetic dataset (once), run the search, print where to look.

    Re-running resumes an interrupted search and reuses the dataset.
    """
    from hpe_ray.data.shards import summary
    from hpe_ray.data.synthetic import SyntheticSpec, write_synthetic_dataset
    from hpe_ray.report import make_report
    from hpe_ray.search.space import load_space
    from hpe_ray.search.tune import run_search

    started = time.perf_counter()
    load_space(space)  # a bad space fails before minutes of data generation
    data_dir = Path(data_dir)
    if (data_dir / "manifest.json").is_file():
        print(f"using the existing dataset in {data_dir}")
    else:
        print(f"generating the embedded default dataset in {data_dir} ...")
        write_synthetic_dataset(SyntheticSpec(), data_dir, workers=2)
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
    print(f"demo finished in {time.perf_counter() - started:.0f} s")


def result_figures(checkpoint: str | Path, data_dir: str | Path, out_dir: Path) -> list[Path]:
    """The thesis's two figures for the best model on the test split: 25 predictions against
    ground truth (with 5 sampled hypotheses) and the latent space in UMAP coloured by action."""
    from hpe_ray import figures

    return (figures.predictions_figure(checkpoint, data_dir, split="test", n=25, hypotheses=5,
                                       out=out_dir / "predictions")
            + figures.latent_figure(checkpoint, data_dir, split="test", max_points=2000, out=out_dir / "latent")
            + figures.errors_figure(checkpoint, data_dir, split="test", out=out_dir / "errors"))
