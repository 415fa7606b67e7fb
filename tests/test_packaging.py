"""What an install holds: packaged configs and spaces found by name, optional extras named when
missing, the cluster requirements generated from pyproject.toml, and (slow) a built wheel that
runs a search from outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hpe_ray.cli import main
from hpe_ray.config import ConfigError, find_resource, load_config, resource_names
from hpe_ray.dependencies import (CLUSTER_PROVIDED, MissingExtraError, cluster_requirements, import_extra,
                                  requirement_name)
from hpe_ray.search.space import load_space

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------- packaged configs and spaces

def test_packaged_files_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: no relative configs/ or tune_spaces/
    assert find_resource("tune_spaces", "quick") == find_resource("tune_spaces", "quick.yaml")
    assert find_resource("tune_spaces", "quick").read_text() == (REPO / "tune_spaces" / "quick.yaml").read_text()
    assert load_space("quick").settings.num_samples >= 1
    assert load_config("lifting") == load_config(REPO / "configs" / "lifting.yaml")
    assert {"quick", "lifting", "crossmodal"} <= set(resource_names("tune_spaces"))
    assert {"lifting", "crossmodal", "crossmodal-demo"} <= set(resource_names("configs"))


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick.yaml").write_text("train: {epochs: 1}\n")
    assert find_resource("tune_spaces", "quick.yaml") == Path("quick.yaml")
    assert find_resource("tune_spaces", "quick") != Path("quick.yaml")  # no suffix: the packaged one


def test_an_unknown_name_lists_the_packaged_ones(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"quik: search space file not found \(packaged ones, by name: .*quick"):
        find_resource("tune_spaces", "quik")
    assert main(["train", "--config", "lifitng"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lifitng: config file not found" in err and "lifting" in err


def test_every_subpackage_is_in_the_wheel():
    """pyproject lists its packages (configs/ and tune_spaces/ are mapped into hpe_ray); a new
    subpackage missing from the list would be left out of wheels."""
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hpe_ray").rglob("__init__.py")}
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == found | {"hpe_ray.configs", "hpe_ray.tune_spaces"}
    assert setuptools["package-dir"] == {"hpe_ray.configs": "configs", "hpe_ray.tune_spaces": "tune_spaces"}


# ---------------------------------------------------------------- dependencies and extras

def _same(requirements) -> list[str]:
    return [str(Requirement(r)) for r in requirements]


def test_cluster_requirements_are_pyprojects_dependencies():
    """Read from the installed metadata: a mismatch means pyproject.toml changed since the last
    `pip install -e .` (rerun it) or the generator is wrong."""
    declared = PYPROJECT["project"]["dependencies"]
    assert _same(cluster_requirements(exclude=())) == _same(declared)
    assert _same(cluster_requirements()) == _same(d for d in declared if requirement_name(d) not in CLUSTER_PROVIDED)
    assert {requirement_name(d) for d in declared} >= set(CLUSTER_PROVIDED)  # the cluster's share is declared too
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _same(cluster_requirements(("export", "h36m"))) == _same(
        [*cluster_requirements(), *extras["export"], *extras["h36m"]])


def test_environment_yml_matches_pyproject():
    """The conda route installs what `make install` does: the dependencies and every extra."""
    import yaml

    conda = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    assert {requirement_name(r) for r in pip if r != "-e ."} == {requirement_name(r) for r in wanted}


def test_requirements_command_prints_a_runtime_env(capsys):
    assert main(["requirements", "--runtime-env"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env == {"pip": cluster_requirements()}
    assert main(["requirements", "--extra", "dashboard"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == cluster_requirements(("dashboard",)) and "pandas>=2.0" in lines
    assert not any(requirement_name(line) in CLUSTER_PROVIDED for line in lines)


def test_every_imported_package_is_declared():
    """Third-party imports of hpe_ray/ (import name -> distribution) are in the dependencies or an extra."""
    import ast

    imports = set()
    for path in (REPO / "hpe_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imports.add(node.module.split(".")[0])
    imports -= set(sys.stdlib_module_names) | {"hpe_ray"}
    distribution = {"PIL": "pillow", "yaml": "pyyaml", "umap": "umap-learn", "tensorboardX": "tensorboardx",
                    "mpl_toolkits": "matplotlib", "optuna_dashboard": "optuna-dashboard"}
    project = PYPROJECT["project"]
    declared = {requirement_name(r) for r in project["dependencies"]}
    declared |= {requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    missing = {distribution.get(m, m).lower().replace("_", "-") for m in imports} - declared
    assert not missing, f"imported by hpe_ray but not declared in pyproject.toml: {sorted(missing)}"


def test_a_missing_extra_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cdflib", None)  # import cdflib -> ImportError
    from hpe_ray.data.h36m import read_cdf_poses

    with pytest.raises(MissingExtraError, match=r"reading the original Human3.6M release needs "
                                                r"`pip install 'hpe-ray\[h36m\]'`"):
        read_cdf_poses(tmp_path / "Walking.54138969.cdf")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    # checked before the checkpoint is read or a file is written
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                 "--formats", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'hpe-ray[export]'" in err
    assert not (tmp_path / "out").exists()
    assert import_extra("json", "test", "anything") is json


# ---------------------------------------------------------------- the wheel, installed elsewhere

@pytest.mark.slow
def test_wheel_runs_a_packaged_search_outside_the_repository(tmp_path):
    """Build the wheel from a copy of the sources, install it alone into a new venv that sees
    this environment's dependencies, and from a folder outside the repository run `demo --help`
    and a one-trial search of the packaged `quick` space on a tiny dataset."""
    started = time.perf_counter()
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("hpe_ray", "configs", "tune_spaces"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], timeout=300, **run)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("hpe_ray-*.whl")

    # --without-pip: this environment's pip installs into it. `--system-site-packages` would give
    # the base interpreter's packages, not this venv's, so a .pth adds this venv's site-packages
    # instead: a path from a .pth runs none of the .pth files there, so the editable hpe_ray of
    # this environment (an import hook in a .pth) stays out, and the wheel's copy comes first.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, **run).stdout.strip())
    (site / "outer_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], timeout=300, **run)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    where = subprocess.run([python, "-c", "import hpe_ray, hpe_ray.config as c; "
                            "print(hpe_ray.__file__); print(c.find_resource('tune_spaces', 'quick')); "
                            "print(c.load_config('crossmodal-demo').data.image_size)"],
                           check=True, **run).stdout.split()
    assert all(Path(p).is_relative_to(site / "hpe_ray") for p in where[:2]), where
    hpe_ray = str(venv / "bin" / "hpe-ray")
    demo = subprocess.run([hpe_ray, "demo", "--help"], timeout=120, **run)
    assert demo.returncode == 0 and "--space" in demo.stdout, demo.stderr[-3000:]

    data = tmp_path / "data"
    synth = subprocess.run([hpe_ray, "data", "synth", "--out", str(data), "--sequences", "1", "--frames", "2",
                            "--image-size", "0", "--workers", "1"], timeout=300, **run)
    assert synth.returncode == 0, synth.stderr[-3000:]
    tune = subprocess.run([hpe_ray, "tune", "--space", "quick", "--trials", "1", "--data", str(data),
                           "--storage", str(tmp_path / "runs"), "--name", "packaged"], timeout=600, **run)
    assert tune.returncode == 0, tune.stdout[-4000:] + tune.stderr[-4000:]
    board = (tmp_path / "runs" / "packaged" / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 2, board  # header + the one trial
    search = json.loads((tmp_path / "runs" / "packaged" / "search.json").read_text())
    assert Path(search["space"]).is_relative_to(site / "hpe_ray" / "tune_spaces")
    print(f"wheel built, installed and searched in {time.perf_counter() - started:.0f} s")
