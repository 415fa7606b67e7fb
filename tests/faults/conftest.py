"""The fault-injection suite: each test injects one fault into a real run (a local Ray cluster,
real shards, real checkpoints) and asserts the promise. Every test records a row of the table
in docs/reliability.md; with HPE_RAY_FAULT_REPORT=FILE the rows of this run are written there:

    HPE_RAY_FAULT_REPORT=faults.md pytest tests/faults -m slow
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_ROWS: list[dict] = []


@dataclass
class Fault:
    """One row: fault | how injected | promise | result | time to recover."""

    fault: str
    injected: str
    promise: str
    result: str = ""
    recover_s: float | None = None
    started: float = field(default_factory=time.monotonic)

    def recovered(self, result: str, seconds: float | None = None) -> None:
        self.result, self.recover_s = result, seconds


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.fault_passed = report.passed


@pytest.fixture
def fault(request):
    """`row = fault(name, injected, promise)`, then `row.recovered(result, seconds)`. A test that
    injects several faults into one run (to pay Ray's start-up once) describes one row each; a
    row whose fault was not reached before a failure reads FAILED with the rest."""
    rows: list[Fault] = []

    def describe(name: str, injected: str, promise: str) -> Fault:
        rows.append(Fault(name, injected, promise))
        return rows[-1]

    yield describe
    passed = getattr(request.node, "fault_passed", False)
    for row in rows:
        _ROWS.append({"test": request.node.name, "fault": row.fault, "injected": row.injected, "promise": row.promise,
                      "result": row.result if passed else "FAILED (see the test output)",
                      "recover_s": row.recover_s, "survived": passed})


def pytest_sessionfinish(session):
    target = os.environ.get("HPE_RAY_FAULT_REPORT")
    if not target or not _ROWS:
        return
    lines = ["| fault | how injected | promise | result | time to recover |", "|---|---|---|---|---|"]
    for row in _ROWS:
        seconds = "" if row["recover_s"] is None else f"{row['recover_s']:.1f} s"
        lines.append(f"| {row['fault']} | {row['injected']} | {row['promise']} | {row['result']} | {seconds} |")
    Path(target).write_text("\n".join(lines) + "\n")
    Path(target).with_suffix(".json").write_text(json.dumps(_ROWS, indent=1))


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> Path:
    """About 2400 train / 960 val / 960 test pose-only synthetic samples."""
    from test_tune import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("fault-data") / "data")
