"""The CLI parses, validates and calls the library; these run it in-process (and once as a module)."""

import subprocess
import sys

from hpe_ray.cli import main


def test_bad_config_fails_before_any_cluster_work(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  latent_dim: 32\ntrain:\n  epocs: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.epocs: unknown key" in err and "bad.yaml" in err


def test_bad_override_value_is_named(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("{}\n")
    assert main(["train", "--config", str(config), "--set", "loss.beta.kind=exponential"]) == 2
    assert "loss.beta.kind" in capsys.readouterr().err


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
