"""Latency of lifting 2D keypoints to 3D: PyTorch, TorchScript and ONNX Runtime, batch 1 and 1024.

    python benchmarks/predict_latency.py                      # the default-config model (weights random)
    python benchmarks/predict_latency.py --checkpoint RUN_DIR # a trained checkpoint
    python benchmarks/predict_latency.py --threads 1          # torch and ONNX Runtime on one thread

Timed per call and divided by the batch: `Lifter.lift` (the Python API: input checks, numpy in
and out), the exported module in PyTorch, its TorchScript file and its ONNX file in ONNX Runtime
(CPU). Latency does not depend on the weights, so without a checkpoint the model of the default
configuration is saved with random weights and unit normalisation. Numbers are for this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from hpe_ray.config import Config
from hpe_ray.inference import Lifter
from hpe_ray.inference.export import ExportableLifter, example_inputs, export_lifter
from hpe_ray.models import build_model
from hpe_ray.normalization import NormStats
from hpe_ray.training.checkpoint import load_checkpoint, save_checkpoint


def default_checkpoint(directory: Path) -> Path:
    """The default configuration's model, random weights, unit NormStats, saved as a checkpoint."""
    cfg = Config()
    model = build_model(cfg).eval()
    stats = NormStats(np.zeros((16, 2)), np.ones((16, 2)), np.zeros((16, 3)), np.full((16, 3), 200.0), "camera")
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler, stats=stats,
                           cfg=cfg, epoch=0, metrics={})


def median_seconds(call: Callable[[], object], repeats: int, min_seconds: float = 1.0) -> float:
    """Median wall time of one call, after warm-up; at least `repeats` calls and `min_seconds`."""
    for _ in range(3):
        call()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def runners(checkpoint: Path, export_dir: Path, inputs: tuple[torch.Tensor, ...],
            threads: int) -> dict[str, Callable[[], object]]:
    """{name: zero-argument call lifting `inputs` once}."""
    loaded = load_checkpoint(checkpoint)
    module = ExportableLifter(loaded.model, loaded.stats).eval()
    lifter = Lifter(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; measured all the same
        scripted = torch.jit.load(str(export_dir / "lifter.pt")).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(export_dir / "lifter.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    keypoints, focal, center = (x.numpy() for x in inputs)

    def no_grad(call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return call()
        return run

    return {
        "PyTorch, Lifter.lift (numpy in/out)": lambda: lifter.lift(keypoints, focal, center, batch_size=len(keypoints)),
        "PyTorch, exported module": no_grad(lambda: module(*inputs)),
        "TorchScript": no_grad(lambda: scripted(*inputs)),
        "ONNX Runtime (CPU)": lambda: session.run(None, feed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file or directory (default: random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 1024])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads of torch and ONNX Runtime (default: torch's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="hpe-ray-latency-") as tmp:
        checkpoint = args.checkpoint or default_checkpoint(Path(tmp) / "checkpoint")
        export_dir = Path(tmp) / "export"
        export_lifter(checkpoint, export_dir)
        loaded = load_checkpoint(checkpoint)
        m = loaded.cfg.model
        print(f"model: {m.blocks} blocks x {m.hidden} hidden, latent {m.latent_dim}, mode_2d {loaded.stats.mode_2d}; "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__} "
              f"and onnxruntime {onnxruntime.__version__}, {args.threads} threads each; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"| runtime | {' | '.join(f'batch {b}: ms per call | us per pose' for b in args.batches)} |")
        print(f"|---|{'---|---|' * len(args.batches)}")
        results: dict[str, list[str]] = {}
        for batch in args.batches:
            inputs = example_inputs(loaded.stats, batch)
            for name, call in runners(checkpoint, export_dir, inputs, args.threads).items():
                seconds = median_seconds(call, args.repeats)
                results.setdefault(name, []).extend([f"{seconds * 1e3:.3f}", f"{seconds * 1e6 / batch:.2f}"])
        for name, cells in results.items():
            print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
