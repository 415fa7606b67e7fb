"""The cross-modal VAE in pure PyTorch: encoders, decoders, the model, losses, beta schedules."""

from hpe_ray.models.beta import make_beta_schedule
from hpe_ray.models.build import build_model, unwrap_model
from hpe_ray.models.decoders import ImageDecoder, PoseDecoder2D, PoseDecoder3D
from hpe_ray.models.encoders import MLP, ImageEncoder, PoseEncoder2D
from hpe_ray.models.losses import (
    DEFAULT_RECON_KIND,
    best_of_k_loss,
    estimate_root_translation,
    kl_divergence,
    pair_loss,
    reconstruction_loss,
    reprojection_loss,
)
from hpe_ray.models.predict import predict_pose_3d_mm
from hpe_ray.models.vae import BATCH_KEY, CrossModalVAE

__all__ = [
    "BATCH_KEY", "DEFAULT_RECON_KIND", "MLP",
    "CrossModalVAE", "ImageDecoder", "ImageEncoder", "PoseDecoder2D", "PoseDecoder3D", "PoseEncoder2D",
    "best_of_k_loss", "build_model", "estimate_root_translation", "kl_divergence", "make_beta_schedule", "pair_loss",
    "predict_pose_3d_mm", "reconstruction_loss", "reprojection_loss", "unwrap_model",
]
