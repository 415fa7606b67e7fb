"""What a local search listens on. Ray 2.60 cannot be held to loopback on one machine: its
`resolve_ip_for_localhost` turns a loopback node address into the machine's address, and its GCS,
raylets, workers and dashboard agent then listen on every interface, behind Ray's token
authentication (on by default in 2.60). Everything of our own, and Ray's dashboard, must be on
127.0.0.1; this test lists the rest, by process, so the reliability notes stay true."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from faults.kit import start_hpe, write_yaml

pytestmark = pytest.mark.slow
RAY_INTERNALS = re.compile(r"^(gcs_server|raylet|ray::.*|python\S*|default_worker.*)$")


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _listeners() -> list[tuple[str, int, str, int]]:
    """(address, port, process name, pid) of every listening TCP socket (ss -ltnpH)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        local, users = line.split()[3], line.split()[-1]
        address, port = local.rsplit(":", 1)
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', users):
            rows.append((address.strip("[]"), int(port), name, int(pid)))
    return rows


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_a_local_search_keeps_its_own_ports_on_loopback(tmp_path, fault_data, fault):
    row = fault("listening sockets of a local `tune`", "`ss -ltnp` over the search's process tree while a trial runs",
                "the Ray dashboard (and optuna-dashboard) on 127.0.0.1; anything else listening on all "
                "interfaces is one of Ray's token-protected internals (GCS, raylet, workers, dashboard agent)")
    from test_tune import TINY_SPACE

    space = write_yaml(tmp_path / "space.yaml", {**TINY_SPACE, "search_settings": {
        **TINY_SPACE["search_settings"], "num_samples": 2, "max_concurrent": 1, "scheduler": "none"}})
    search = start_hpe("tune", "--space", str(space), "--data", str(fault_data), "--storage", str(tmp_path / "runs"),
                       "--name", "sockets", cwd=tmp_path)
    try:
        dashboard_port = None
        deadline = time.monotonic() + 300
        while dashboard_port is None:
            line = search.stdout.readline()
            assert line and time.monotonic() < deadline, "the search never printed its Ray dashboard"
            if found := re.search(r"Ray dashboard: http://127\.0\.0\.1:(\d+)", line):
                dashboard_port = int(found.group(1))
        runs = tmp_path / "runs" / "sockets" / "train_runs"
        while not (runs.is_dir() and any(runs.iterdir())):
            assert search.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.2)
        tree = _descendants(search.pid)
        mine = [row for row in _listeners() if row[3] in tree]
        output = search.communicate(timeout=600)[0]
    finally:
        search.kill()
    assert search.returncode == 0, output[-3000:]
    dashboard = [r for r in mine if r[1] == dashboard_port]
    assert dashboard and all(address == "127.0.0.1" for address, *_ in dashboard), dashboard
    exposed = sorted({(name, address) for address, _, name, _ in mine
                      if address not in ("127.0.0.1", "::1", "localhost")})
    assert all(RAY_INTERNALS.match(name) for name, _ in exposed), exposed
    row.recovered("as promised: dashboard on 127.0.0.1; on all interfaces: "
                  + ", ".join(sorted({name for name, _ in exposed})), None)
