"""One benchmark, ratios in one run: each project path beside its bare limit, in one process.

    python benchmarks/run.py                                # all rows, benchmarks/results/bench-<device>.{md,json}
    python benchmarks/run.py --quick --out /tmp/bench       # tiny sizes, under a minute: a smoke test
    python benchmarks/run.py --rows lifting,streaming       # some rows only

On the device it finds (cuda when available, else cpu) each row runs the project's path and a bare
loop doing the same work back to back, and reports both and their ratio:

- lifting: the training core's epoch (`Trainer`'s in-memory batches, augmented and normalised on
  the device every epoch as a run does, then `train_epoch`) against a bare PyTorch loop (the same
  model and loss, optimiser steps on tensors already resident and normalised, no augmentation);
  at the configured batch (configs/lifting.yaml) and at the best of 256 / 1024 / 4096 per side.
- streaming: the training loader with images (`make_loader`, num_workers=0, the demo's shuffle
  buffer) against reading the JPEG bytes with `tarfile`, and again against reading them at the
  shards' index offsets (`S.tar.idx`, no checks), each plus the faster of PIL and
  torchvision.io.decode_jpeg to a batch
  tensor of the same size, at 64 px and 256 px crops; one torch thread on both sides, as in a
  DataLoader worker (with two, idle OpenMP threads spin after each small op and inflate CPU time).
- crossmodal: a step of the cross-modal VAE (configs/crossmodal-demo.yaml's pairs) fed by its
  loader against the same steps on one pre-decoded batch kept on the device.
- startup: fixed cost (wall seconds of a 1-epoch tiny run less its epoch's training time) of a
  1-worker Ray Train run (Ray start, controller, worker group) and of a search trial trained in
  its process (Ray start, Tune, `run_trial`), against `fit()` in this process.
- workers: lifting samples/s with 1 and 2 Ray Train workers (benchmarks/train_throughput.py).

Throughput is counted in samples per CPU-second (time.process_time of this process plus
getrusage(RUSAGE_CHILDREN) for finished child processes), because the machine may be shared, and in
samples per wall second. ratio = project / bare of samples per second of either kind (1.0: at the
bare limit); for start-up, bare seconds / project seconds (the same sense: below 1 costs more).
Synthetic datasets are generated once into --work and reused.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the report's run time includes the imports

import argparse
import contextlib
import datetime
import io
import json
import logging
import math
import os
import platform
import resource
import shutil
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ holds train_throughput.py
import train_throughput  # noqa: E402  (generate, samples_per_s)

from hpe_ray.config import Config, load_config  # noqa: E402
from hpe_ray.data.batch import images_to_model_range, pose_batch  # noqa: E402
from hpe_ray.data.shards import IMAGE_FIELD, load_manifest  # noqa: E402
from hpe_ray.data.stream import load_pose_arrays, load_stats, make_loader  # noqa: E402
from hpe_ray.data.tar_index import read_member_index  # noqa: E402
from hpe_ray.models import best_of_k_loss, build_model, pair_loss  # noqa: E402
from hpe_ray.training.data import to_device  # noqa: E402
from hpe_ray.training.loop import Trainer, train_epoch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ROWS = ("lifting", "streaming", "crossmodal", "startup", "workers")
LIFTING_BATCHES = (256, 1024, 4096)

# Sizes of each run: full (the default) and --quick (a smoke test).
SIZES = {
    "full": dict(pose_frames=100, image_frames={64: 8, 256: 6}, lifting_samples=12288, stream_batch=32, rounds=2,
                 cross_steps=20, startup_steps=5, worker_steps=100, worker_epochs=2),
    "quick": dict(pose_frames=5, image_frames={64: 1, 256: 1}, lifting_samples=512, stream_batch=32, rounds=1,
                  cross_steps=3, startup_steps=2, worker_steps=5, worker_epochs=2),
}
QUICK_LIFTING_BATCHES = (256, 512)


# ---------------------------------------------------------------- measuring

class Meter:
    """Wall and CPU seconds of a block: this process's CPU time (all threads) plus that of child
    processes which finished inside it (DataLoader workers). On cuda the block ends with a sync."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "Meter":
        self._sync()
        self._wall, self._cpu, self._children = time.perf_counter(), time.process_time(), _children_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu + _children_cpu() - self._children

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def figures(self, samples: int, **extra) -> dict:
        return {"samples": samples, "wall_s": round(self.wall_s, 4), "cpu_s": round(self.cpu_s, 4),
                "per_cpu_s": samples / max(self.cpu_s, 1e-9), "per_s": samples / max(self.wall_s, 1e-9), **extra}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def throughput_row(key: str, label: str, project: dict, bare: dict, note: str = "") -> dict:
    """A row of samples per CPU-second and per second, ratios project / bare."""
    return {"row": key, "label": label, "unit": "samples/CPU-s", "project": project, "bare": bare,
            "ratio": project["per_cpu_s"] / bare["per_cpu_s"], "ratio_wall": project["per_s"] / bare["per_s"],
            "note": note}


def rank_key(device: torch.device) -> str:
    """What "best" means: samples per CPU-second on a CPU, samples per second on a GPU."""
    return "per_s" if device.type == "cuda" else "per_cpu_s"


def alternate(project, bare, rounds: int, device: torch.device) -> tuple[dict, dict]:
    """Best of `rounds` measurements of each side, taken in turns (project, bare, project, ...),
    so that a neighbour's load on a shared machine falls on both sides alike."""
    runs = [(project(), bare()) for _ in range(rounds)]
    key = rank_key(device)
    best = [max((r[side] for r in runs), key=lambda f: f[key]) for side in (0, 1)]
    for side, figures in zip((0, 1), best):
        figures["rounds"] = [round(r[side][key]) for r in runs]
    return best[0], best[1]


# ---------------------------------------------------------------- data

def dataset(work: Path, name: str, image_size: int | None, frames: int) -> Path:
    """A synthetic train + val set in work/name, generated once (train_throughput.generate)."""
    out = work / name
    if not (out / "manifest.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        train_throughput.generate(out, image_size, frames=frames)
    return out


def train_count(data_dir: Path) -> int:
    return load_manifest(data_dir)["splits"]["train"]["count"]


# ---------------------------------------------------------------- 1. lifting epoch

def lifting_config(data_dir: Path, batch_size: int, samples: int) -> Config:
    return load_config(REPO / "configs/lifting.yaml", {
        "data.dir": str(data_dir), "train.batch_size": batch_size,
        "train.steps_per_epoch": max(1, samples // batch_size)})


def project_lifting(cfg: Config, device: torch.device):
    """() -> figures of one epoch of the training core as a run takes it (the epoch's data drawn,
    augmented and normalised on the device, then the steps); validation is not part of it."""
    trainer = Trainer(cfg, device=device)
    epochs = iter(range(1_000_000))

    def epoch(steps: int | None = None) -> dict:
        batches = trainer._train_batches(next(epochs))
        if steps is not None:
            batches = (b for _, b in zip(range(steps), batches))
        return train_epoch(trainer.model, trainer.optimizer, batches, cfg, trainer.stats, trainer.beta_at,
                           trainer.global_step, device)[0]

    epoch(steps=2)  # warm-up: kernels, allocator

    def measure() -> dict:
        with Meter(device) as meter:
            metrics = epoch()
        steps = cfg.train.steps_per_epoch
        return meter.figures(steps * cfg.train.batch_size, steps=steps, batch=cfg.train.batch_size,
                             loop_samples_per_s=metrics["train_samples_per_s"])

    return measure


def bare_lifting(cfg: Config, device: torch.device):
    """() -> figures of the same steps by a bare loop: the same model, loss and optimiser; the train
    split normalised once and kept on the device; contiguous slices, no augmentation, no per-step
    checks or metrics."""
    torch.manual_seed(cfg.train.seed)
    stats = load_stats(cfg.data.dir, mode_2d=cfg.data.mode_2d)
    arrays = load_pose_arrays(cfg.data.dir, "train")
    data = pose_batch(*(torch.as_tensor(np.asarray(a, np.float32), device=device)
                        for a in (arrays.keypoints_2d_px, arrays.pose_3d_cam_mm, arrays.intrinsics)), stats)
    inputs, targets = data["pose_2d"], data["pose_3d"]
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss, kind = cfg.loss, cfg.loss.pose_loss
    hypotheses = loss.hypotheses if not cfg.model.deterministic else 0
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.train.amp and device.type == "cuda")
    batch_size, steps = cfg.train.batch_size, cfg.train.steps_per_epoch
    model.train()

    def run(steps: int) -> None:
        for step in range(steps):
            start = (step * batch_size) % (len(inputs) - batch_size + 1)
            x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
            with torch.autocast(**autocast):
                recon, mu, logvar = model("pose2d", "pose3d", {"pose_2d": x}, hypotheses=hypotheses)
                if hypotheses:
                    recon, samples = recon[:, 0], recon[:, 1:]
                total = pair_loss(recon, y, mu, logvar, loss.beta.max, kind)["total"]
                if hypotheses:
                    total = total + loss.hypotheses_weight * best_of_k_loss(samples, y, kind)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()

    run(2)  # warm-up

    def measure() -> dict:
        with Meter(device) as meter:
            run(steps)
        return meter.figures(steps * batch_size, steps=steps, batch=batch_size)

    return measure


def lifting_rows(data_dir: Path, device: torch.device, sizes: dict, batches: tuple[int, ...]) -> list[dict]:
    configured = load_config(REPO / "configs/lifting.yaml").train.batch_size
    n = train_count(data_dir)
    results = {}
    for batch_size in sorted({configured, *batches}):
        if batch_size > n:
            continue
        samples = max(sizes["lifting_samples"], 2 * batch_size)
        cfg = lifting_config(data_dir, batch_size, min(samples, n))
        results[batch_size] = alternate(project_lifting(cfg, device), bare_lifting(cfg, device), sizes["rounds"],
                                        device)
        p, b = results[batch_size]
        print(f"  lifting batch {batch_size}: project {p['per_cpu_s']:.0f}, bare {b['per_cpu_s']:.0f} samples/CPU-s",
              flush=True)
    rank = rank_key(device)  # best batch per side
    best_project = max(results, key=lambda b: results[b][0][rank])
    best_bare = max(results, key=lambda b: results[b][1][rank])
    tried = "/".join(str(b) for b in results)
    return [
        throughput_row("lifting", f"lifting epoch, configured batch {configured}", *results[configured],
                       "project: Trainer's in-memory batches (augmented, normalised per epoch) + train_epoch; "
                       "bare: same model and loss on resident normalised tensors"),
        throughput_row("lifting", f"lifting epoch, best batch (project {best_project}, bare {best_bare}; "
                       f"tried {tried})", results[best_project][0], results[best_bare][1],
                       f"best by {'samples/s' if rank == 'per_s' else 'samples/CPU-s'} per side"),
    ]


# ---------------------------------------------------------------- 2. image streaming

def project_stream(data_dir: Path, image_size: int, batch_size: int, shuffle_buffer: int, device: torch.device):
    """() -> figures of one epoch of the training loader with images (num_workers=0: all its work
    in this process), about one pass over the train split."""
    stats = load_stats(data_dir, mode_2d="scaled")
    steps = max(1, train_count(data_dir) // batch_size)
    loader = make_loader(data_dir, "train", batch_size, with_images=True, image_size=image_size, stats=stats,
                         shuffle_buffer=shuffle_buffer, num_workers=0, batches_per_epoch=steps, verify=False)
    # Warm-up: the loader's stream persists over epochs, so its shuffle buffer fills once per run, here.
    next(iter(loader))

    def measure() -> dict:
        with Meter(device) as meter:
            samples = sum(len(batch["key"]) for batch in loader)
        return meter.figures(samples, batches=steps)

    return measure


def _decode_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:  # read-only view: only copied from
        return torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)


def _decode_torchvision(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
DECODERS = {"PIL": _decode_pil, "torchvision": _decode_torchvision}


def _jpegs(data_dir: Path, read: str = "offsets"):
    """JPEG bytes of every train sample, shard after shard, forever; other members skipped.
    read="tarfile": tarfile parses every header; "offsets": a seek and a read each at the offsets
    of the shard's index (`tar_index.read_member_index`), no header parsed or checked."""
    shards = [data_dir / name for name in load_manifest(data_dir)["splits"]["train"]["shards"]]
    while True:
        for shard in shards:
            if read == "tarfile":
                with tarfile.open(shard, "r:") as tar:
                    for member in tar:
                        if member.name.endswith("." + IMAGE_FIELD):
                            yield tar.extractfile(member).read()
                continue
            with open(shard, "rb", buffering=0) as file:
                for name, offset, size in read_member_index(shard):
                    if name.endswith("." + IMAGE_FIELD):
                        file.seek(offset)
                        yield file.read(size)


def bare_stream(data_dir: Path, samples: int, batch_size: int, decode, device: torch.device, read: str):
    """() -> figures of JPEG bytes (`_jpegs` with `read`) + a JPEG decoder filling (B, 3, H, W)
    float batches in [-1, 1], `samples` of them; the batch buffers are allocated once and refilled."""
    jpegs = _jpegs(data_dir, read)
    first = decode(next(jpegs))
    pixels = torch.empty(batch_size, *first.shape, dtype=torch.uint8)
    batch = torch.empty(pixels.shape)

    def measure() -> dict:
        with Meter(device) as meter:
            done = 0
            while done < samples:
                size = min(batch_size, samples - done)
                for i in range(size):
                    pixels[i].copy_(decode(next(jpegs)))
                torch.mul(pixels[:size], 1 / 127.5, out=batch[:size]).sub_(1.0)
                done += size
        return meter.figures(done)

    return measure


def decoder_ms(data_dir: Path, count: int = 200) -> dict[str, float]:
    """CPU milliseconds per image of PIL and torchvision.io.decode_jpeg on `count` of the set's JPEGs."""
    jpegs = _jpegs(data_dir)
    sample = [next(jpegs) for _ in range(count)]
    ms = {}
    for name, decode in DECODERS.items():
        decode(sample[0])
        start = time.process_time()
        for data in sample:
            decode(data)
        ms[name] = round(1000 * (time.process_time() - start) / count, 4)
    return ms


@contextlib.contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# The two bare limits: the tar read as a tar (what the issue first measured against), and the
# JPEG bytes alone at known offsets (the floor: nothing but the decode).
BARE_READS = {"tarfile": "with tarfile", "offsets": "by offset"}


def streaming_rows(datasets: dict[int, Path], device: torch.device, sizes: dict) -> list[dict]:
    """One torch thread on both sides, as in a DataLoader worker process: with more, the idle
    OpenMP threads spin after every small op and count as CPU time that does no work."""
    demo = load_config(REPO / "configs/crossmodal-demo.yaml")
    rows = []
    for image_size, data_dir in datasets.items():
        for shard in load_manifest(data_dir)["splits"]["train"]["shards"]:
            (data_dir / shard).read_bytes()  # both sides read from the page cache
        batch_size = sizes["stream_batch"]
        samples = max(1, train_count(data_dir) // batch_size) * batch_size
        with torch_threads(1):
            per_image = decoder_ms(data_dir)
            decoder = min(per_image, key=per_image.get)
            project_measure = project_stream(data_dir, image_size, batch_size, demo.data.shuffle_buffer, device)
            for read, how in BARE_READS.items():
                project, bare = alternate(project_measure, bare_stream(
                    data_dir, samples, batch_size, DECODERS[decoder], device, read), sizes["rounds"], device)
                bare["decode_cpu_ms_per_image"] = per_image
                print(f"  streaming {image_size} px: project {project['per_cpu_s']:.0f}, bare ({read}, {decoder}) "
                      f"{bare['per_cpu_s']:.0f} samples/CPU-s", flush=True)
                rows.append(throughput_row(
                    "streaming", f"image streaming, {image_size} px crops, batch {sizes['stream_batch']}, "
                    f"bare reads {how}", project, bare,
                    f"project: make_loader with images, num_workers=0, shuffle buffer {demo.data.shuffle_buffer}; "
                    f"bare: JPEG bytes by {read} + {decoder} decode ({per_image[decoder]:.2f} CPU-ms/image; "
                    f"{' '.join(f'{k} {v:.2f}' for k, v in per_image.items() if k != decoder)}) into a float "
                    "batch; 1 torch thread"))
    return rows


# ---------------------------------------------------------------- 3. cross-modal step

def crossmodal_rows(data_dir: Path, device: torch.device, sizes: dict) -> list[dict]:
    steps = sizes["cross_steps"]
    cfg = load_config(REPO / "configs/crossmodal-demo.yaml", {
        "data.dir": str(data_dir), "train.steps_per_epoch": steps, "data.image_size": 64})
    trainer = Trainer(cfg, device=device)
    batch = to_device(next(iter(trainer._train_batches(0))), device)  # pre-decoded, kept on the device

    epochs = iter(range(1, 1_000_000))

    def epoch(batches) -> dict:
        with Meter(device) as meter:
            train_epoch(trainer.model, trainer.optimizer, batches, cfg, trainer.stats, trainer.beta_at, 0, device)
        samples = steps * cfg.train.batch_size
        return meter.figures(samples, steps=steps, ms_per_step=1000 * meter.wall_s / steps)

    pairs = len(cfg.loss.pair_list())
    train_epoch(trainer.model, trainer.optimizer, [batch] * pairs, cfg, trainer.stats, trainer.beta_at, 0,
                device)  # warm-up: one step of each pair
    project, bare = alternate(lambda: epoch(trainer._train_batches(next(epochs))), lambda: epoch([batch] * steps),
                              sizes["rounds"], device)
    print(f"  cross-modal: project {project['ms_per_step']:.0f} ms/step, resident {bare['ms_per_step']:.0f} "
          "ms/step", flush=True)
    return [throughput_row(
        "crossmodal", f"cross-modal step, 64 px, batch {cfg.train.batch_size}, "
        f"{'+'.join(cfg.loss.pairs)} ({cfg.loss.schedule})", project, bare,
        f"train_epoch of {steps} steps; project: streamed by its loader (loader_workers "
        f"{cfg.data.loader_workers}); bare: one pre-decoded batch reused on the device")]


# ---------------------------------------------------------------- 4. start-up

def startup_rows(data_dir: Path, work: Path, device: torch.device, sizes: dict) -> list[dict]:
    import ray
    from ray import tune

    from hpe_ray.distributed import run_training
    from hpe_ray.search.tune import run_trial
    from hpe_ray.training.loop import fit

    steps, batch_size = sizes["startup_steps"], 256
    gpus = 1 if device.type == "cuda" else 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    storage = (work / "runs").resolve()
    cfg = load_config(REPO / "configs/lifting.yaml", {
        "data.dir": str(data_dir.resolve()), "train.epochs": 1, "train.steps_per_epoch": steps,
        "train.batch_size": batch_size, "train.val_max_samples": 256, "scaling.workers": 1,
        "scaling.gpus_per_worker": gpus, "run.storage": str(storage)})
    epoch_samples = steps * batch_size

    def fixed(wall: float, metrics: dict) -> dict:
        train_s = epoch_samples / metrics["train_samples_per_s"]
        return {"wall_s": round(wall, 3), "epoch_train_s": round(train_s, 3), "fixed_s": wall - train_s}

    if ray.is_initialized():
        ray.shutdown()
    start = time.perf_counter()
    history = fit(cfg, storage / f"fit-{stamp}", device=device)
    in_process = fixed(time.perf_counter() - start, history[-1])
    print(f"  start-up: fit() in process {in_process['fixed_s']:.1f} s", flush=True)

    start = time.perf_counter()
    result = run_training(cfg.with_overrides({"run.name": f"train-{stamp}"}))  # ray.init() inside
    ray_train = fixed(time.perf_counter() - start, result.metrics)
    ray.shutdown()
    print(f"  start-up: Ray Train 1 worker {ray_train['fixed_s']:.1f} s", flush=True)

    start = time.perf_counter()
    ray.init()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.model_dump(), data_dir=cfg.data.dir,
                             train_storage=str(storage / f"tune-{stamp}" / "train_runs"), train_in_process=True),
        {"cpu": cfg.scaling.cpus_per_worker, "gpu": gpus})
    results = tune.Tuner(trainable, param_space={}, tune_config=tune.TuneConfig(num_samples=1),
                         run_config=tune.RunConfig(name=f"tune-{stamp}", storage_path=str(storage),
                                                   verbose=0)).fit()
    trial = fixed(time.perf_counter() - start, results[0].metrics)
    ray.shutdown()
    print(f"  start-up: search trial in process {trial['fixed_s']:.1f} s", flush=True)
    shutil.rmtree(storage, ignore_errors=True)  # this row's run folders only: nothing to resume

    def row(label: str, project: dict, note: str) -> dict:
        return {"row": "startup", "label": label, "unit": "s fixed cost", "project": project, "bare": in_process,
                "ratio": in_process["fixed_s"] / project["fixed_s"], "ratio_wall": None, "note": note}

    tiny = f"1 epoch of {steps} steps x {batch_size}, val 256 samples"
    return [row("start-up, Ray Train run, 1 worker", ray_train,
                f"run_training call to return less the epoch's training time ({tiny}): Ray start, "
                "controller, worker group, validation, checkpoint; bare: fit() in this process"),
            row("start-up, search trial trained in its process", trial,
                f"ray.init + Tuner.fit of run_trial(train_in_process=True) less the epoch's training time "
                f"({tiny}); bare: fit() in this process")]


# ---------------------------------------------------------------- 5. 1 vs 2 workers

def workers_rows(data_dir: Path, work: Path, device: torch.device, sizes: dict) -> list[dict]:
    import ray

    # Two ranks need two GPUs for NCCL; with fewer the comparison runs on CPUs (gloo).
    gpus = 1 if device.type == "cuda" and torch.cuda.device_count() >= 2 else 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    epochs = sizes["worker_epochs"]
    storage = (work / "runs-workers").resolve()
    cfg = load_config(REPO / "configs/lifting.yaml", {
        "data.dir": str(data_dir.resolve()), "train.steps_per_epoch": sizes["worker_steps"],
        "train.val_max_samples": 512, "train.epochs": epochs, "run.checkpoints_to_keep": epochs,
        "scaling.gpus_per_worker": gpus, "run.storage": str(storage)})
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rates = {}
    for workers in (1, 2):
        rates[workers] = train_throughput.samples_per_s(cfg.with_overrides({
            "scaling.workers": workers, "run.name": f"workers-{workers}-{stamp}"}))
        print(f"  {workers} worker(s): {rates[workers]:.0f} samples/s", flush=True)
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    figures = {w: {"per_s": r, "workers": w} for w, r in rates.items()}
    return [{"row": "workers", "label": f"lifting on Ray Train, 2 workers vs 1 (batch {cfg.train.batch_size} "
             f"per worker, {'GPU' if gpus else 'CPU'})", "unit": "samples/s", "project": figures[2],
             "bare": figures[1], "ratio": rates[2] / rates[1], "ratio_wall": rates[2] / rates[1],
             "note": f"train_throughput.samples_per_s: the loop's train_samples_per_s (all ranks), best epoch "
                     f"after the first of {epochs} x {sizes['worker_steps']} steps"}]


# ---------------------------------------------------------------- output

def machine(device: torch.device) -> dict:
    info = {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device.type, "python": platform.python_version(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _num(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    lines = [f"# hpe-ray benchmark: project paths beside their bare limits ({m['device']})", "",
             f"{report['date']}; {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
             f"device {m['device']}{gpu}; {report['mode']} sizes; `{report['command']}` took "
             f"{report['seconds']:.0f} s.", "",
             "ratio = project / bare (1.00: at the bare limit); throughput rows in samples per CPU-second "
             "(this process plus finished children) and per wall second; start-up in seconds of fixed cost, "
             "ratio = bare / project.", "",
             "| row | project | bare | unit | ratio | project /s | bare /s | ratio (wall) | how |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        p, b = row["project"], row["bare"]
        if row["unit"] == "s fixed cost":
            figures = [_num(p["fixed_s"], 1), _num(b["fixed_s"], 1), "s fixed", _num(row["ratio"], 2), "", "", ""]
        elif row["unit"] == "samples/s":
            figures = [_num(p["per_s"]), _num(b["per_s"]), "samples/s", _num(row["ratio"], 2), "", "", ""]
        else:
            figures = [_num(p["per_cpu_s"]), _num(b["per_cpu_s"]), "samples/CPU-s", _num(row["ratio"], 2),
                       _num(p["per_s"]), _num(b["per_s"]), _num(row["ratio_wall"], 2)]
        lines.append("| " + " | ".join([row["label"], *figures, row["note"]]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {','.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (under a minute): a smoke test")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results",
                        help="folder for bench-<device>.md and .json")
    parser.add_argument("--work", type=Path, default=REPO / "data/bench",
                        help="generated datasets (reused by later runs) and run folders")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {','.join(ROWS)}")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    work = args.work / mode

    def poses() -> Path:
        return dataset(work, "poses", None, sizes["pose_frames"])

    def images(size: int) -> Path:
        return dataset(work, f"images-{size}", size, sizes["image_frames"][size])

    results = []
    for row in (r for r in ROWS if r in rows):
        print(f"{row} ...", flush=True)
        if row == "lifting":
            results += lifting_rows(poses(), device, sizes, QUICK_LIFTING_BATCHES if args.quick else LIFTING_BATCHES)
        elif row == "streaming":
            results += streaming_rows({size: images(size) for size in (64, 256)}, device, sizes)
        elif row == "crossmodal":
            results += crossmodal_rows(images(64), device, sizes)
        elif row == "startup":
            results += startup_rows(poses(), work, device, sizes)
        elif row == "workers":
            results += workers_rows(poses(), work, device, sizes)

    command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(device),
              "mode": mode, "command": command.strip(), "seconds": time.perf_counter() - STARTED, "rows": results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print("\n" + text)
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
