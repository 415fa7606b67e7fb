"""Faults of a training run (`hpe-ray train` on a local Ray cluster, one worker)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from faults.kit import complete_epochs, hpe, start_hpe, train_config, wait_for

pytestmark = pytest.mark.slow
RUN = "fault"


def _interrupt_and_resume(tmp_path, fault_data, signum: int) -> tuple[str, str, float]:
    """Signal a 4-epoch run once two epochs are checkpointed, then run the same command again.
    Returns (the interrupted run's output, the resumed run's output, seconds the resumed run took)."""
    config = train_config(tmp_path, fault_data)
    run_dir = tmp_path / "runs" / RUN
    run = start_hpe("train", "--config", str(config), cwd=tmp_path)
    try:
        wait_for(lambda: len(complete_epochs(run_dir)) >= 2, run, "two checkpoints")
        run.send_signal(signum)
        interrupted = run.communicate(timeout=120)[0]
    finally:
        run.kill()
    assert run.returncode == 128 + signum, interrupted[-4000:]
    stopped = re.search(rf"hpe-ray: run {re.escape(str(run_dir))} interrupted after epoch (\d) of 4 "
                        r"\(last checkpoint (\S+)\); run the same command to continue from it", interrupted)
    assert stopped, interrupted[-4000:]
    epoch = int(stopped.group(1))
    assert epoch < 4 and max(complete_epochs(run_dir)) == epoch

    started = time.monotonic()
    resumed = hpe("train", "--config", str(config), cwd=tmp_path)
    seconds = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resuming from {stopped.group(2)} (epoch {epoch})" in log
    # the resumed run trains exactly the missing epochs
    assert sorted(set(map(int, re.findall(r"epoch (\d)/4 ", log)))) == list(range(epoch + 1, 5))
    epochs = complete_epochs(run_dir)
    assert max(epochs) == 4 and len(epochs) <= 2 + 1, epochs  # checkpoints_to_keep best + the latest
    return interrupted, log, seconds


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_train_exits_named_and_resumes_where_it_stopped(tmp_path, fault_data, fault, signum):
    name = signal.Signals(signum).name
    row = fault(f"`train` interrupted ({name})", f"{name} to the driver once 2 of 4 epochs are checkpointed",
                f"exit {128 + signum} with one line naming the run and its last epoch; the same command "
                "resumes from that epoch, trains only the missing ones, keeps at most checkpoints_to_keep + 1")
    _, _, seconds = _interrupt_and_resume(tmp_path, fault_data, signum)
    row.recovered("survived: resumed at the last checkpointed epoch, 4 epochs in all", seconds)


def test_a_killed_train_driver_resumes_from_its_newest_checkpoint(tmp_path, fault_data, fault):
    row = fault("`train` driver killed (SIGKILL)", "SIGKILL to the driver once 2 of 4 epochs are checkpointed",
                "the same command resumes from the newest complete checkpoint and ends at epoch 4")
    config = train_config(tmp_path, fault_data)
    run_dir = tmp_path / "runs" / RUN
    run = start_hpe("train", "--config", str(config), cwd=tmp_path)
    try:
        wait_for(lambda: len(complete_epochs(run_dir)) >= 2, run, "two checkpoints")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        run.kill()
    time.sleep(3)  # the worker may still finish an epoch before Ray notices its driver is gone
    newest = max(complete_epochs(run_dir))
    started = time.monotonic()
    resumed = hpe("train", "--config", str(config), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert re.search(rf"resuming from \S+ \(epoch {newest}\)", log), log[-3000:]
    assert max(complete_epochs(run_dir)) == 4
    row.recovered(f"survived: resumed at epoch {newest}", time.monotonic() - started)


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, fault_data, fault, damage):
    row = fault(f"newest checkpoint {damage}", f"checkpoint.pt of the newest of 3 epochs {damage}, then `train` "
                "with epochs raised to 4", "the run says which checkpoint it skipped, resumes from the previous "
                "good one and ends at epoch 4")
    from hpe_ray.training.checkpoint import run_checkpoints

    config = train_config(tmp_path, fault_data, epochs=3)
    first = hpe("train", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / RUN
    (_, previous), (_, newest) = run_checkpoints(run_dir)[-2:]
    file = newest / "checkpoint.pt"
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[: size // 2] if damage == "truncated" else os.urandom(size))
    started = time.monotonic()
    resumed = hpe("train", "--config", str(config), "--epochs", "4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"{file}: not a readable hpe-ray checkpoint" in log and "skipped, resuming from an earlier checkpoint" in log
    assert f"resuming from {previous} (epoch 2)" in log
    assert sorted(set(map(int, re.findall(r"epoch (\d)/4 ", log)))) == [3, 4]
    row.recovered("survived: skipped the damaged one (named), resumed at epoch 2", time.monotonic() - started)


def test_a_full_disk_while_checkpointing_fails_clearly_and_loses_nothing(tmp_path, fault_data, fault):
    """The training core writing checkpoints onto a 1 MiB tmpfs: the run stops naming the file,
    the earlier checkpoints still load, and once space is freed the run continues from them."""
    row = fault("storage full while checkpointing", "the run's folder on a small tmpfs (mount -t tmpfs -o size=...)",
                "the run stops with an OSError naming the file; earlier checkpoints stay complete and load; "
                "with space again the same run continues to the last epoch")
    import subprocess

    import torch

    from hpe_ray.config import load_config
    from hpe_ray.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, run_checkpoints
    from hpe_ray.training.loop import fit

    mount = tmp_path / "small"
    mount.mkdir()
    cfg = load_config(train_config(tmp_path, fault_data, epochs=6), {"run.checkpoints_to_keep": 6})
    size_kib = 0
    probe = tmp_path / "probe"
    fit(cfg.with_overrides({"train.epochs": 1}), probe)
    one = sum(p.stat().st_size for p in next(probe.glob("checkpoint_*")).iterdir()) // 1024 + 1
    size_kib = 2 * one + one // 2  # room for two checkpoints and half of a third
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(OSError) as failure:
            fit(cfg.with_overrides({"train.tensorboard_images_every": 0}), mount / "run")
        assert failure.value.errno == 28  # ENOSPC
        done = run_checkpoints(mount / "run")
        assert [int(m["epoch"]) for m, _ in done] == [1, 2]
        for _, directory in done:
            assert load_checkpoint(directory / CHECKPOINT_FILE).epoch in (1, 2)
        subprocess.run(["mount", "-o", f"remount,size={20 * size_kib}k", str(mount)], check=True)
        started = time.monotonic()
        fit(cfg, mount / "run")
        assert max(int(m["epoch"]) for m, _ in run_checkpoints(mount / "run")) == 6
        assert torch.isfinite(torch.tensor(run_checkpoints(mount / "run")[-1][0]["val_mpjpe"]))
        row.recovered(f"failed clearly (errno 28 at epoch 3), then resumed at epoch 2", time.monotonic() - started)
    finally:
        subprocess.run(["umount", "-l", str(mount)])
