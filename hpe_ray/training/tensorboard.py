"""TensorBoard events of a run: every metric per epoch, and every few epochs the validation
prediction grid (prediction and K hypotheses against ground truth) in the Images tab."""

from __future__ import annotations

from pathlib import Path

import torch

from hpe_ray.models import BATCH_KEY, predict_pose_3d_mm
from hpe_ray.training.data import to_device

GRID_SAMPLES = 8


class EpochWriter:
    """Writes a Trainer's epochs to run_dir/tensorboard (rank 0 only: no collective calls here)."""

    def __init__(self, run_dir: str | Path, trainer):
        from tensorboardX import SummaryWriter

        self.trainer = trainer
        # purge_step drops events a failed attempt wrote after the checkpoint we resume from.
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=trainer.epoch + 1)

    def write(self, metrics: dict[str, float]) -> None:
        epoch = metrics["epoch"]
        for name, value in metrics.items():
            if name != "epoch":
                self.writer.add_scalar(name, value, epoch)
        every = self.trainer.cfg.train.tensorboard_images_every
        if every and epoch % every == 0:
            self._prediction_grid(epoch)
        self.writer.flush()

    @torch.no_grad()
    def _prediction_grid(self, epoch: int) -> None:
        from hpe_ray.plotting import render_predictions_image  # matplotlib only where images are wanted

        t = self.trainer
        hypotheses = t.cfg.train.eval_hypotheses
        batch = to_device(next(iter(t.val_batches())), t.device)
        t.model.eval()
        mean_mm, samples_mm = predict_pose_3d_mm(t.model, batch[BATCH_KEY[t.modality]][:GRID_SAMPLES], t.modality,
                                                 t.stats, hypotheses)
        image = render_predictions_image(mean_mm.cpu().numpy(), batch["pose_3d_cam_mm"][:GRID_SAMPLES].cpu().numpy(),
                                         hypotheses_mm=samples_mm.cpu().numpy() if hypotheses > 1 else None)
        self.writer.add_image("val/predictions", image, epoch, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "EpochWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

