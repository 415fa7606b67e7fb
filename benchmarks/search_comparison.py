"""Does a search earn its trials? Search settings against random search run to the end, over seeds.

    python benchmarks/search_comparison.py --data data/synthetic [--space tune_spaces/quick.yaml]
        [--variants random-full tpe-asha ...] [--seeds 0 1 2] [--trials N] [--storage runs/benchmarks]
        [--out benchmarks/results/search_comparison]

Every variant samples the same space (the given file's `base` and `search`, the same first
points, the seed of the row); only the search settings of VARIANTS differ. `tpe-asha` is the
space file's own settings, `random-full` is random sampling with every trial run to the end:
its best validation MPJPE is the reference of its seed. Per search: the best validation MPJPE
(mm), the trial-epochs spent (the compute), and the trial-epochs spent until the search first
reached the reference: every trial's reported epochs walked in the order they were reported
(their Tune timestamps; epochs reported within the same second count the one that reaches the
reference last), the count at which the best-so-far val_mpjpe is <= the reference, or "never".
Its mean over the seeds against half of random-full's mean trial-epochs is the goal of issue 12.

A search of a given variant, seed and settings is an experiment named after all three in
--storage; running the script again reuses the finished ones (and resumes an unfinished one);
--report-only tabulates what is there without starting any. Means are over finished searches.
All searches share one local Ray instance (or RAY_ADDRESS's cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import yaml

from hpe_ray.search.results import load_trials, summarize_search
from hpe_ray.search.space import ASHA_METRIC, SEARCH_INFO
from hpe_ray.search.tune import run_search

REFERENCE = "random-full"
AGGRESSIVE_ASHA = {"sampler": "tpe", "scheduler": "asha", "num_samples": 16, "startup_trials": 4,
                   "grace_period": 1, "reduction_factor": 3}
VARIANTS: dict[str, dict] = {
    "tpe-asha": {},  # the space file's own search_settings
    "random-full": {"sampler": "random", "scheduler": "none"},
    # 16 trials, ASHA stopping at epoch 1 and 3 keeping the best third: about as many trial-epochs as 8 full trials
    "tpe16-g1r3": AGGRESSIVE_ASHA,
    "mtpe16-g1r3": {**AGGRESSIVE_ASHA, "multivariate": True},
    # ASHA's one cut at epoch 2 (epoch-2 errors rank trials as epoch 6 does, epoch 1's do not), keeping the best third
    "tpe16-g2r3": {**AGGRESSIVE_ASHA, "grace_period": 2},
    # the demo's 8 trials with that cut: every trial 2 epochs, the best third on to 6 (about 27 trial-epochs)
    "tpe8-g2r3": {"sampler": "tpe", "scheduler": "asha", "grace_period": 2, "reduction_factor": 3},
}


def variant_settings(space_path: Path, variant: str, seed: int, trials: int | None) -> dict:
    """The search_settings a variant runs with: the space file's, the variant's changes, the seed."""
    tree = yaml.safe_load(space_path.read_text())
    settings = {**tree.get("search_settings", {}), **VARIANTS[variant], "seed": seed}
    if trials is not None:
        settings["num_samples"] = trials
    return settings


def experiment_name(space_path: Path, variant: str, seed: int, settings: dict) -> str:
    """Variant and seed, plus a digest of the settings: a variant whose settings changed (e.g.
    tpe-asha after the space's defaults moved) is a new search, never a reuse of the old one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
    return f"compare-{space_path.stem}-{variant}-seed{seed}-{digest}"


def variant_space(space_path: Path, settings: dict, out_path: Path) -> Path:
    """A copy of the space file with the given search settings."""
    tree = yaml.safe_load(space_path.read_text())
    tree["search_settings"] = settings
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return out_path


def epoch_reports(experiment_dir: Path) -> list[dict]:
    """Every epoch every trial reported: trial, epoch, val_mpjpe, timestamp (s), time since its trial started."""
    rows = []
    for trial in load_trials(experiment_dir):
        h = trial.history
        if ASHA_METRIC not in h:
            continue
        for _, r in h.dropna(subset=["epoch"]).iterrows():  # a non-finite val_mpjpe still spent its epoch
            rows.append({"trial": trial.trial_id, "epoch": int(r["epoch"]), ASHA_METRIC: float(r[ASHA_METRIC]),
                         "timestamp": float(r["timestamp"]), "time_total_s": float(r.get("time_total_s", 0.0)),
                         "status": trial.status})
    return rows


def epochs_to_reach(reports: list[dict], reference: float) -> int | None:
    """Trial-epochs reported until the best-so-far val_mpjpe is <= reference; None: never.

    Reports in time order; within one timestamp (Tune's are whole seconds) the worse ones first,
    so a tie never counts in the search's favour."""
    ordered = sorted(reports, key=lambda r: (r["timestamp"], -r[ASHA_METRIC]))
    best = math.inf
    for count, r in enumerate(ordered, start=1):
        best = min(best, r[ASHA_METRIC])
        if best <= reference + 1e-9:
            return count
    return None


def search_row(variant: str, seed: int, experiment_dir: Path, settings: dict, finished: bool) -> dict:
    reports = epoch_reports(experiment_dir)
    trials = load_trials(experiment_dir)
    starts = [r["timestamp"] - r["time_total_s"] for r in reports]
    return {"variant": variant, "seed": seed, "experiment": experiment_dir.name, "settings": settings,
            "finished": finished,
            "best_val_mpjpe": min((r[ASHA_METRIC] for r in reports if not math.isnan(r[ASHA_METRIC])),
                                  default=math.nan), "trial_epochs": len(reports),
            "trials": len(trials), "stopped_early": sum(t.status == "stopped early" for t in trials),
            "span_s": max(r["timestamp"] for r in reports) - min(starts) if reports else 0.0, "reports": reports}


def fmt(value, spec: str = ".1f") -> str:
    return "never" if value is None else format(value, spec)


def summarize(rows: list[dict], variants: list[str], seeds: list[int]) -> tuple[list[dict], dict]:
    """Adds epochs_to_reach to every row; one mean row per variant."""
    reference = {r["seed"]: r["best_val_mpjpe"] for r in rows if r["variant"] == REFERENCE}
    for r in rows:
        r["reference_mm"] = reference.get(r["seed"])
        r["epochs_to_reach"] = (epochs_to_reach(r["reports"], reference[r["seed"]]) if r["seed"] in reference
                                else None)
    ref_rows = [r for r in rows if r["variant"] == REFERENCE]
    goal = 0.5 * statistics.mean(r["trial_epochs"] for r in ref_rows) if ref_rows else None
    means = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v and r["finished"]]  # an interrupted search is listed, not averaged
        if not mine:
            continue
        reached = [r["epochs_to_reach"] for r in mine if r["epochs_to_reach"] is not None]
        mean_reach = statistics.mean(reached) if reached else None
        means[v] = {"seeds": len(mine), "best_val_mpjpe": statistics.mean(r["best_val_mpjpe"] for r in mine),
                    "trial_epochs": statistics.mean(r["trial_epochs"] for r in mine),
                    "epochs_to_reach": mean_reach, "reached": len(reached),
                    "span_s": statistics.mean(r["span_s"] for r in mine),
                    "meets_goal": bool(goal is not None and len(reached) == len(mine) == len(seeds)
                                       and mean_reach <= goal)}
    return rows, {"goal_epochs_to_reach": goal, "means": means}


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    head = ("| variant | seed | best val MPJPE (mm) | total trial-epochs | trial-epochs to reach random's best "
            "| trials (stopped early) | search span (s) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["variant"] + ("" if r["finished"] else " (unfinished)")
        lines.append(f"| {name} | {r['seed']} | {r['best_val_mpjpe']:.1f} | {r['trial_epochs']} "
                     f"| {fmt(r['epochs_to_reach'], 'd')} | {r['trials']} ({r['stopped_early']}) | {r['span_s']:.0f} |")
    for v, m in summary["means"].items():
        reach = "never" if m["epochs_to_reach"] is None else f"{m['epochs_to_reach']:.1f}"
        lines.append(f"| **{v}** | mean of {m['seeds']} finished | {m['best_val_mpjpe']:.1f} | {m['trial_epochs']:.1f} "
                     f"| {reach} (reached {m['reached']}/{m['seeds']}) | | {m['span_s']:.0f} |")
    goal = summary["goal_epochs_to_reach"]
    shown = dict.fromkeys(r["variant"] for r in rows)
    settings = {v: VARIANTS[v] or "the space file's own search_settings" for v in shown}
    lines += ["", f"Goal: reach random-full's best of the same seed on every seed, in at most half of random-full's "
                  f"mean total trial-epochs on average ({fmt(goal)}). Met by: "
                  + (", ".join(v for v, m in summary["means"].items() if m["meets_goal"] and v != REFERENCE)
                     or "none") + ".",
              "", "Variants (changes to the space's search_settings): "
              + "; ".join(f"`{v}` {s}" for v, s in settings.items()) + ".",
              "", "Trial-epochs to reach: every trial's epochs in the order reported, until the best-so-far val MPJPE "
                  "is <= random-full's best of that seed. Search span: first trial start to last report (excludes "
                  "Ray start-up).", "", f"Command: `{command}`"
              + (" (tabulates the searches this command without --report-only ran)" if "--report-only" in command
                 else "")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "tune_spaces" / "quick.yaml"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["random-full", "tpe-asha"],
                        help=f"searches to run, in this order, each for every seed; {REFERENCE}, the reference, "
                             "always runs first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trials", type=int, help="trials of every variant (default: each variant's num_samples)")
    parser.add_argument("--storage", default="runs/benchmarks")
    parser.add_argument("--out", help="write OUT.md and OUT.json (e.g. benchmarks/results/search_comparison)")
    parser.add_argument("--report-only", action="store_true",
                        help="start no search: tabulate those already in --storage (finished or not), skip the others")
    args = parser.parse_args()
    variants = [REFERENCE, *[v for v in args.variants if v != REFERENCE]]  # the reference first
    command = "python benchmarks/search_comparison.py " + " ".join(sys.argv[1:])

    import ray

    from hpe_ray.search.tune import _connect

    # one Ray for all searches, not one start-up per search
    started_here = False if args.report_only else _connect(None, "127.0.0.1")
    space_path, storage = Path(args.space), Path(args.storage).resolve()
    rows, started = [], time.perf_counter()
    try:
        for variant in variants:
            for seed in args.seeds:
                settings = variant_settings(space_path, variant, seed, args.trials)
                name = experiment_name(space_path, variant, seed, settings)
                if args.report_only:
                    if (storage / name / SEARCH_INFO).is_file():
                        rows.append(search_row(variant, seed, storage / name, settings,
                                               summarize_search(storage / name).finished))
                    continue
                space = variant_space(space_path, settings, storage / f"{name}.yaml")
                t0 = time.perf_counter()
                result = run_search(space, args.data, resume=True, storage=storage, name=name)
                rows.append(search_row(variant, seed, storage / name, settings, result.finished))
                print(f"[{variant} seed {seed}: {time.perf_counter() - t0:.0f} s, "
                      f"{time.perf_counter() - started:.0f} s in all]", flush=True)
    finally:
        if started_here:
            ray.shutdown()

    rows, summary = summarize(rows, variants, args.seeds)
    table = markdown(rows, summary, command)
    print("\n" + table)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s (a rerun that reuses finished searches: seconds)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table)
        data = {"command": command, "data": str(Path(args.data).resolve()), "space": str(space_path),
                "variants": {v: VARIANTS[v] for v in variants}, **summary,
                "searches": rows}
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
