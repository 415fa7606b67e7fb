"""Same trial budget, two searches: Optuna TPE + ASHA against random search run to the end.

    python benchmarks/search_comparison.py --data data/synthetic [--space tune_spaces/quick.yaml]
        [--trials 8] [--seed 0] [--storage runs/benchmarks]

Both searches sample the same space (the given file's `search`, same seed, same first points);
only the sampler and the scheduler differ. Printed per search: the best validation MPJPE
reached (mm), the trial-epochs spent (the compute), the trials ASHA stopped, and the wall time.
Running it again with the same arguments reuses finished searches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from hpe_ray.search.tune import run_search

VARIANTS = {"tpe-asha": {"sampler": "tpe", "scheduler": "asha"},
            "random-full": {"sampler": "random", "scheduler": "none"}}


def variant_space(space_path: Path, settings: dict, seed: int, out_path: Path) -> Path:
    """A copy of the space file with the given search settings."""
    tree = yaml.safe_load(space_path.read_text())
    tree["search_settings"] = {**tree.get("search_settings", {}), **settings, "seed": seed}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "tune_spaces" / "quick.yaml"))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="runs/benchmarks")
    args = parser.parse_args()

    storage = Path(args.storage).resolve()
    rows = []
    for name, settings in VARIANTS.items():
        experiment = f"compare-{Path(args.space).stem}-{name}-seed{args.seed}"
        space = variant_space(Path(args.space), settings, args.seed, storage / f"{experiment}.yaml")
        started = time.perf_counter()
        result = run_search(space, args.data, trials=args.trials, resume=True, storage=storage, name=experiment)
        board = result.leaderboard
        rows.append((name, board["val_mpjpe"].min(), int(board["epochs"].sum()),
                     int((board["status"] == "stopped early").sum()), len(board), time.perf_counter() - started))

    print(f"\n{'search':<12} {'best val MPJPE (mm)':>20} {'trial-epochs':>13} {'stopped early':>14} "
          f"{'trials':>7} {'wall (s)':>9}")
    for name, best, epochs, stopped, trials, wall in rows:
        print(f"{name:<12} {best:>20.1f} {epochs:>13d} {stopped:>14d} {trials:>7d} {wall:>9.0f}")
    print("(wall time includes Ray start-up; a rerun that reuses finished searches takes seconds)")


if __name__ == "__main__":
    main()
