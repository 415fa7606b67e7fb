"""How much of a finished search's trial time is fixed cost (start-up), not epochs.

    python benchmarks/search_overhead.py runs/demo      # the experiment folder `hpe-ray demo` / `tune` wrote

Per trial, from Tune's saved state and the trial's reports: its wall time (Tune's start of the
trial, actor start included, to its last result), the time to its first report, and its median
epoch (`time_this_iter_s` of the later epochs). Fixed cost = time to the first report less one
epoch. The share is the sum of fixed costs over the sum of trial wall times. Tune's report
timestamps are whole seconds, so each trial's figure is good to about a second.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from hpe_ray.search.results import load_trials


def trial_starts(experiment: Path) -> dict[str, tuple[float, float]]:
    """{trial_id: (start_time, last_result_time)} from the newest experiment_state-*.json."""
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    starts = {}
    for config, runtime in state["trial_data"]:
        config, runtime = (json.loads(x) if isinstance(x, str) else x for x in (config, runtime))
        starts[config["trial_id"]] = (runtime["start_time"], runtime["last_result_time"])
    return starts


def overhead_rows(experiment: Path) -> list[dict]:
    starts, rows = trial_starts(experiment), []
    for trial in load_trials(experiment):
        history = trial.history.dropna(subset=["epoch"]) if "epoch" in trial.history else trial.history
        if history.empty or trial.trial_id not in starts:
            continue
        start, last = starts[trial.trial_id]
        per_epoch = history["time_this_iter_s"].tolist()
        epoch_s = statistics.median(per_epoch[1:] or per_epoch)
        first_s = float(history["timestamp"].iloc[0]) - start
        rows.append({"trial": trial.trial_id, "status": trial.status, "epochs": len(history), "wall_s": last - start,
                     "first_report_s": first_s, "epoch_s": epoch_s, "fixed_s": max(first_s - epoch_s, 0.0)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="a search's experiment folder (holds experiment_state-*.json)")
    rows = overhead_rows(parser.parse_args().experiment)
    if not rows:
        raise SystemExit("no trial with reports in that folder")
    print("| trial | status | epochs | wall (s) | to first report (s) | epoch (s) | fixed (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['trial']} | {r['status']} | {r['epochs']} | {r['wall_s']:.1f} | {r['first_report_s']:.1f} | "
              f"{r['epoch_s']:.1f} | {r['fixed_s']:.1f} |")
    fixed, wall = sum(r["fixed_s"] for r in rows), sum(r["wall_s"] for r in rows)
    print(f"\nfixed cost: {fixed:.0f} s of {wall:.0f} s of trial time ({fixed / wall:.0%})")


if __name__ == "__main__":
    main()
