"""The model a configuration describes, and the plain module inside a DDP wrapper."""

from __future__ import annotations

from torch import nn

from hpe_ray.config import Config
from hpe_ray.models.vae import CrossModalVAE


def build_model(cfg: Config, *, load_pretrained: bool = True) -> CrossModalVAE:
    """The CrossModalVAE a config describes: encoders and decoders of the configured pairs.

    load_pretrained=False skips the ImageNet weights (their values are overwritten by a
    checkpoint anyway, and the file may not exist where the checkpoint is evaluated).
    """
    encoders, decoders = cfg.modalities
    m = cfg.model
    return CrossModalVAE(
        latent_dim=m.latent_dim, encoders=encoders, decoders=decoders, image_size=cfg.data.image_size,
        hidden=m.hidden, blocks=m.blocks, batch_norm=m.batch_norm, dropout=m.dropout, residual=m.residual,
        deterministic=m.deterministic, conditioned=m.conditioned, keypoint_scores=cfg.data.keypoint_scores,
        sample_dims=m.sample_dims, fit_2d=m.fit_2d,
        image_pretrained=m.image_pretrained if load_pretrained else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself), so state keys carry no
    "module." prefix and a checkpoint loads into a plain model."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
