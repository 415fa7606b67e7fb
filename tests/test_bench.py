"""benchmarks/run.py: the one benchmark runs its quick sizes and writes rows with usable ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.slow
def test_quick_benchmark_writes_rows_with_positive_figures_and_finite_ratios(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--rows", "lifting,streaming", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    written = list(out.glob("bench-*.json"))
    assert len(written) == 1, written
    report = json.loads(written[0].read_text())
    assert report["mode"] == "quick" and report["machine"]["cpus"] >= 1 and report["machine"]["torch"]
    rows = report["rows"]
    # lifting: configured and best batch; streaming: 64 px and 256 px, each against both bare reads.
    assert [r["row"] for r in rows] == ["lifting", "lifting"] + ["streaming"] * 4, [r["label"] for r in rows]
    for row in rows:
        for side in ("project", "bare"):
            figures = row[side]
            assert figures["samples"] > 0 and figures["wall_s"] > 0 and figures["cpu_s"] > 0, (row["label"], side)
            assert figures["per_cpu_s"] > 0 and figures["per_s"] > 0, (row["label"], side)
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert math.isfinite(row["ratio_wall"]) and row["ratio_wall"] > 0, row
        assert row["ratio"] == pytest.approx(row["project"]["per_cpu_s"] / row["bare"]["per_cpu_s"])
    # Both sides of a streaming row read the same number of samples.
    for row in rows[2:]:
        assert row["project"]["samples"] == row["bare"]["samples"], row
    table = written[0].with_suffix(".md").read_text()
    assert table.count("\n| lifting epoch") == 2 and table.count("\n| image streaming") == 4, table


@pytest.mark.slow
def test_unknown_row_is_refused_by_name(tmp_path):
    done = subprocess.run([sys.executable, str(RUN), "--rows", "lifting,nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "nope" in done.stderr, done.stderr[-2000:]
    assert not list(tmp_path.iterdir())
