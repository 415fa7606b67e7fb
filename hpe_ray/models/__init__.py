"""The cross-modal VAE in pure PyTorch: encoders, decoders, the model, losses, beta schedules."""

from hpe_ray.models.beta import make_beta_schedule
from hpe_ray.models.decoders import ImageDecoder, PoseDecoder2D, PoseDecoder3D
from hpe_ray.models.encoders import MLP, ImageEncoder, PoseEncoder2D
from hpe_ray.models.losses import (
    DEFAULT_RECON_KIND,
    estimate_root_translation,
    kl_divergence,
    pair_loss,
    reconstruction_loss,
    reprojection_loss,
)
from hpe_ray.models.vae import BATCH_KEY, DECODER_MODALITIES, ENCODER_MODALITIES, CrossModalVAE

__all__ = [
    "BATCH_KEY", "DECODER_MODALITIES", "DEFAULT_RECON_KIND", "ENCODER_MODALITIES", "MLP",
    "CrossModalVAE", "ImageDecoder", "ImageEncoder", "PoseDecoder2D", "PoseDecoder3D", "PoseEncoder2D",
    "estimate_root_translation", "kl_divergence", "make_beta_schedule", "pair_loss",
    "reconstruction_loss", "reprojection_loss",
]
