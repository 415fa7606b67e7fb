"""The CLI parses, validates and calls the library; these run it in-process (and once as a module)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpe_ray.cli import main

from conftest import write_tiny_dataset


def test_bad_config_fails_before_any_cluster_work(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  latent_dim: 32\ntrain:\n  epocs: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.epocs: unknown key" in err and "bad.yaml" in err


@pytest.mark.parametrize("flags, key", [(["--set", "loss.beta.kind=exponential"], "loss.beta.kind"),
                                        (["--epochs", "0"], "train.epochs")])  # 0 is applied, not ignored
def test_bad_override_value_is_named(tmp_path, capsys, flags, key):
    config = tmp_path / "ok.yaml"
    config.write_text("{}\n")
    assert main(["train", "--config", str(config), *flags]) == 2
    assert key in capsys.readouterr().err


def test_synth_writes_a_dataset_and_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--sequences", "1", "--frames", "2",
                 "--image-size", "0", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "train: 400 samples (0 with images)" in text and "subjects (2): S11, S9" in text
    assert (out / "manifest.json").is_file()
    # A second run refuses to overwrite a complete dataset, with a clear message.
    assert main(["data", "synth", "--out", str(out), "--sequences", "1", "--frames", "2",
                 "--image-size", "0", "--workers", "1"]) == 2
    assert "already holds a complete dataset" in capsys.readouterr().err


def test_missing_bvh_input_is_named(tmp_path, capsys):
    assert main(["data", "bvh", "--input", str(tmp_path / "nope.bvh"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.bvh: no such file or folder" in capsys.readouterr().err


def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "hpe_ray", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("data", "train", "evaluate", "tune", "report", "viz", "predict", "export", "demo"):
        assert command in done.stdout


def test_version_and_every_flag_has_help_with_its_default():
    from hpe_ray import __version__
    from hpe_ray.cli import build_parser

    done = subprocess.run([sys.executable, "-m", "hpe_ray", "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"hpe-ray {__version__}"
    undocumented, said_twice = [], []

    def walk(parser, path):
        # a default shown once, and none for flags without one ("(default 4) (default: None)" was shown)
        text = " ".join(parser.format_help().split())
        said_twice.extend(f"{path}: {shown}" for shown in ("(default: None)", "(default: False)") if shown in text)
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict) and action.nargs == "A...":
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                undocumented.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "hpe-ray")
    assert undocumented == []
    assert said_twice == []
    dashboard = subprocess.run([sys.executable, "-m", "hpe_ray", "dashboard", "--help"], capture_output=True, text=True)
    assert "(default: 0)" in " ".join(dashboard.stdout.split())  # a default of 0 is a value, not "no default"


@pytest.mark.parametrize("contents", [b"not a checkpoint at all", b"garbage\n", b"PK\x03\x04 truncated zip"])
def test_corrupt_checkpoint_is_one_line_and_a_traceback_only_with_verbose(tmp_path, capsys, contents):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(contents)
    keypoints = tmp_path / "k.npz"
    np.savez(keypoints, keypoints_2d=np.zeros((1, 17, 2)))
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(keypoints), "--out", str(tmp_path / "o.npz")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hpe-ray: error: {checkpoint}: not a readable hpe-ray checkpoint")
    # torch's advice to load with weights_only=False (which runs code from the file) is not passed on
    assert len(err.splitlines()) == 1 and "weights_only" not in err and "False" not in err
    assert main(["-v", *args]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_evaluate_rejects_a_misspelt_split_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--checkpoint", "x", "--data", "y", "--split", "tset"])
    assert exit_.value.code == 2 and "invalid choice: 'tset'" in capsys.readouterr().err


def test_evaluate_takes_the_fit_strength_for_one_run(tiny_checkpoint, tiny_dataset, tmp_path, capsys):
    """`--fit-2d 0` lifts the same checkpoint unfitted (another table); a strength outside 0-1 is
    one line from argparse, before anything loads."""
    tables = []
    for flags in ([], ["--fit-2d", "0"]):
        assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_dataset),
                     "--out", str(tmp_path / "evaluation"), *flags]) == 0
        tables.append(capsys.readouterr().out.split("wrote")[0])
    assert tables[0] != tables[1]
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--checkpoint", "x", "--input", "y", "--out", "z.npz", "--fit-2d", "1.5"])
    assert exit_.value.code == 2 and "argument --fit-2d: must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_data_errors_no_retry_can_fix_fail_before_ray_starts(tmp_path, capsys):
    """A missing folder, a truncated manifest, a corrupt stats.json, a NaN in a poses index:
    named in one line with exit code 2, before Ray starts (no retries, no traceback)."""
    config = tmp_path / "ok.yaml"
    config.write_text("{}\n")
    data = write_tiny_dataset(tmp_path / "data")

    def broken(name: str, damage) -> str:
        copy = tmp_path / name
        shutil.copytree(data, copy)
        damage(copy)
        return str(copy)

    def nan_in_val_index(folder):
        path = next(folder.glob("val*poses.npz"))
        with np.load(path) as index:
            arrays = {key: index[key] for key in index.files}
        arrays["pose_3d_cam_mm"][3, 2, 1] = np.nan
        np.savez(path, **arrays)

    cases = {
        str(tmp_path / "nowhere"): "nowhere: data folder not found",
        broken("manifest", lambda d: (d / "manifest.json").write_text('{"format_version": 2, "spl')): "manifest.json: unreadable",
        broken("stats", lambda d: (d / "stats.json").write_text("[]")): "stats.json: expected a JSON object",
        broken("nan", nan_in_val_index): "holds non-finite values",
    }
    for data_dir, message in cases.items():
        started = time.monotonic()
        assert main(["train", "--config", str(config), "--data", data_dir]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert time.monotonic() - started < 10, "Ray was started"


def test_verify_and_evaluate_name_a_damaged_shard_or_poses_index(tmp_path, capsys):
    """Issue 14: `data verify` read only the shards and `evaluate` only the poses index, so a
    test shard of random bytes left evaluate's table unchanged and a NaN in test-poses.npz
    passed verify. Now each is named in one line with exit code 2."""
    from conftest import train_tiny_checkpoint

    data = write_tiny_dataset(tmp_path / "data")
    checkpoint = train_tiny_checkpoint(data, tmp_path / "run", steps=2)
    capsys.readouterr()

    def broken(name: str, damage) -> str:
        copy = tmp_path / name
        shutil.copytree(data, copy)
        damage(copy)
        return str(copy)

    def random_bytes(size_share: float):
        def damage(folder):
            shard = folder / "test-000000.tar"
            shard.write_bytes(np.random.default_rng(0).bytes(int(shard.stat().st_size * size_share)))
        return damage

    def nan_in_test_index(folder):
        path = folder / "test-poses.npz"
        with np.load(path) as index:
            arrays = {key: index[key] for key in index.files}
        arrays["pose_3d_cam_mm"][5, 3, 0] = np.nan
        np.savez(path, **arrays)

    def fails(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    same_size, half_size, nan = (broken("same", random_bytes(1.0)), broken("half", random_bytes(0.5)),
                                 broken("nan", nan_in_test_index))
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "evaluation"), "--data"]
    fails(["data", "verify", same_size], "test-000000.tar: ")
    fails(["data", "verify", nan], "test-poses.npz: poses index holds non-finite values")
    fails([*evaluate, nan], "test-poses.npz: poses index holds non-finite values")
    fails([*evaluate, half_size], "test-000000.tar: ")  # a stat tells; same-size bytes only verify's hash
    assert main([*evaluate, str(data)]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc (Linux)")
def test_killed_synth_leaves_no_worker_and_the_next_conversion_removes_its_folder(tmp_path, caplog):
    """Issue 14: SIGKILL of `data synth --workers 2` left its pool processes running and its
    .partial-PID folder behind. The workers now die with it; the next conversion into the same
    folder removes the partial one of a PID that no longer runs, saying so."""
    def children(pid: int) -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
        return found

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False

    out = tmp_path / "synth"
    synth = subprocess.Popen([sys.executable, "-m", "hpe_ray", "data", "synth", "--out", str(out), "--workers", "2",
                              "--sequences", "2", "--frames", "40", "--image-size", "64"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Killed once the workers have delivered samples (the first shard is being written) and
        # are at work on more; its children: two pool workers and multiprocessing's resource tracker.
        deadline, workers, shards = time.monotonic() + 120, set(), []
        while not (shards and len(workers) >= 2):
            assert synth.poll() is None and time.monotonic() < deadline, "synth ended before it could be killed"
            time.sleep(0.1)
            workers, shards = children(synth.pid), list(tmp_path.glob(".synth.partial-*/train-000000.tar"))
        os.kill(synth.pid, signal.SIGKILL)
        synth.wait(timeout=10)
    finally:
        if synth.poll() is None:
            synth.kill()
            synth.wait()
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if running(pid)]
    for pid in survivors:  # not left behind by a failing test
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "processes of the killed synth survive"

    def mentions_out(cmdline: Path) -> bool:
        try:
            return str(out) in cmdline.read_bytes().decode(errors="replace") and running(int(cmdline.parent.name))
        except OSError:
            return False

    assert [p.parent.name for p in Path("/proc").glob("[0-9]*/cmdline") if mentions_out(p)] == []
    partial = shards[0].parent
    assert partial.is_dir() and not out.exists()

    caplog.set_level("WARNING")
    assert main(["data", "synth", "--out", str(out), "--sequences", "1", "--frames", "2",
                 "--image-size", "0", "--workers", "1"]) == 0
    assert not partial.exists() and (out / "manifest.json").is_file()
    assert f"removing {partial}: left by a conversion (PID {synth.pid}) that no longer runs" in caplog.text
