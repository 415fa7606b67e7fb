"""The cross-modal VAE (after Spurr et al., CVPR 2018): modality encoders into one latent space,
modality decoders out of it, trained pair by pair (e.g. pose2d -> pose3d, rgb -> pose3d).

Modalities: "pose2d" (B, 16, 2) and "pose3d" (B, 16, 3) normalised root-less poses (a scored
2D encoder also takes (B, 17, 3) with confidences), "rgb" (B, 3, S, S) crops in [-1, 1]. A
lifting-only model has encoders {"pose2d"}, decoders {"pose3d"}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from hpe_ray.config import DECODER_MODALITIES, ENCODER_MODALITIES
from hpe_ray.data.batch import scored_pose_2d
from hpe_ray.models.decoders import ImageDecoder, PoseDecoder2D, PoseDecoder3D
from hpe_ray.models.encoders import ImageEncoder, PoseEncoder2D

# Where each modality lives in a batch dict of hpe_ray.data.stream.make_loader.
BATCH_KEY = {"pose2d": "pose_2d", "pose3d": "pose_3d", "rgb": "image"}


def _checked(names: Iterable[str], known: tuple[str, ...], role: str) -> list[str]:
    names = sorted(set(names))  # sorted: the same parameter creation order on every worker
    if not names:
        raise ValueError(f"CrossModalVAE needs at least one {role}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {role} modality {unknown[0]!r}; expected one of {known}")
    return names


def _default_temperature(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """Checkpoints from before `sample_temperature` existed drew hypotheses at 1."""
    state_dict.setdefault(prefix + "sample_temperature", torch.ones(()))


def hypothesis_noise(batch: int, hypotheses: int, dims: int, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """(batch, K, dims) standard normal draws, K per sample, as antithetic pairs (e, -e) along
    orthogonal directions (blocks of `dims` directions when K/2 > dims) with chi-distributed
    lengths. Each draw is still N(0, I), but the set covers the latent evenly instead of
    clustering, so best-of-K finds the closest body with fewer samples (orthogonal Monte Carlo);
    the pairs come first, so the first k of K are a good set too."""
    pairs = (hypotheses + 1) // 2
    gaussian = torch.randn(batch, pairs, dims, device=device, dtype=torch.float32)
    directions = torch.cat([torch.linalg.qr(gaussian[:, start:start + dims].transpose(1, 2))[0].transpose(1, 2)
                            for start in range(0, pairs, dims)], 1) if pairs else gaussian
    lengths = torch.randn(batch, pairs, dims, device=device).norm(dim=-1, keepdim=True)
    draws = directions * lengths
    return torch.stack([draws, -draws], 2).flatten(1, 2)[:, :hypotheses].to(dtype or torch.float32)


class CrossModalVAE(nn.Module):
    """Encoders and decoders over a shared latent space of size latent_dim.

    MLP options (hidden, blocks, batch_norm, dropout, residual) apply to the pose encoder and
    decoders. `deterministic=True` is the Martinez-style baseline with the same architecture
    (no log-variance heads, z = mu, no KL term, `conditioned` ignored). `conditioned=True`
    gives the 3D decoder the latent mean beside z (a conditional decoder, after Sohn et al.
    2015): it knows what the input said and can spend z - mu on what the input leaves open
    (depth, occluded limbs).
    `keypoint_scores=True`: the 2D-pose encoder also reads per-joint detector confidences
    (`PoseEncoder2D`), taken from the batch's "keypoint_scores" in `forward` (1 without them).
    `sample_dims=N`: only the first N latent dims carry sampling noise, the rest decode at their
    mean, so that K hypotheses vary along a few learned directions (as lifting's ambiguity does:
    limb depth) and cover them with few samples; None (or N >= latent_dim): every dim. The buffer
    `sample_temperature` scales the posterior's std when `lift` draws hypotheses (training
    samples at 1); `hpe_ray.training.loop.fit_sample_temperature` sets it on validation data.
    `fit_2d` in [0, 1]: how far predictions from 2D move onto the keypoints' rays (`predict_pose_3d_mm`).
    """

    def __init__(self, latent_dim: int = 100, encoders: Iterable[str] = ("pose2d",),
                 decoders: Iterable[str] = ("pose3d",), image_size: int = 128, hidden: int = 512,
                 blocks: int = 5, batch_norm: bool = False, dropout: float = 0.0, residual: bool = False,
                 image_pretrained: str | None = None, deterministic: bool = False, num_joints: int = 16,
                 allow_download: bool = False, conditioned: bool = False, keypoint_scores: bool = False,
                 sample_dims: int | None = None, fit_2d: float = 0.0):
        super().__init__()
        if sample_dims is not None and sample_dims < 1:
            raise ValueError(f"sample_dims must be >= 1 or None, got {sample_dims}")
        self.latent_dim = latent_dim
        self.sample_dims = sample_dims if sample_dims is not None and sample_dims < latent_dim else None
        # In the state dict, so every checkpoint carries the spread its hypotheses were fitted at.
        self.register_buffer("sample_temperature", torch.ones(()))
        self.register_load_state_dict_pre_hook(_default_temperature)
        self.keypoint_scores = keypoint_scores
        self.fit_2d = fit_2d
        self.deterministic = deterministic
        self.conditioned = conditioned and not deterministic  # z is mu: nothing to condition on
        mlp = dict(hidden=hidden, blocks=blocks, batch_norm=batch_norm, dropout=dropout, residual=residual)
        variational = not deterministic
        builders_in = {
            "pose2d": lambda: PoseEncoder2D(latent_dim, num_joints, **mlp, variational=variational,
                                            scores=keypoint_scores),
            "rgb": lambda: ImageEncoder(latent_dim, image_pretrained, allow_download=allow_download,
                                        variational=variational),
        }
        builders_out = {
            "pose3d": lambda: PoseDecoder3D(latent_dim * (2 if self.conditioned else 1), num_joints, **mlp),
            "pose2d": lambda: PoseDecoder2D(latent_dim, num_joints, **mlp),
            "rgb": lambda: ImageDecoder(latent_dim, image_size),
        }
        self.encoders = nn.ModuleDict(
            {m: builders_in[m]() for m in _checked(encoders, ENCODER_MODALITIES, "encoder")})
        self.decoders = nn.ModuleDict(
            {m: builders_out[m]() for m in _checked(decoders, DECODER_MODALITIES, "decoder")})

    def encode(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x of `modality` -> (mu, logvar), each (B, latent_dim); logvar is None when deterministic."""
        if modality not in self.encoders:
            raise ValueError(f"this model has no {modality!r} encoder (it has {list(self.encoders)})")
        return self.encoders[modality](x)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """A sample z ~ N(mu, temperature^2 exp(logvar)) in the first `sample_dims` dims (mu in the
        others), differentiable in mu and logvar; (..., D). noise: the standard normal draw to
        use (default: a fresh one)."""
        noise = torch.randn_like(mu) if noise is None else noise.clone()
        if self.sample_dims is not None:
            noise[..., self.sample_dims:] = 0
        return mu + temperature * noise * torch.exp(0.5 * logvar)

    def decode(self, modality: str, z: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim) -> (B, ...) of `modality`. mu (B, latent_dim): the latent mean z was
        drawn around, which a conditioned 3D decoder also reads (None: z is the mean)."""
        if modality not in self.decoders:
            raise ValueError(f"this model has no {modality!r} decoder (it has {list(self.decoders)})")
        if modality == "pose3d" and self.conditioned:
            z = torch.cat([z, z if mu is None else mu], -1)
        return self.decoders[modality](z)

    def forward(self, src: str, dst: str, batch_inputs: Mapping[str, torch.Tensor], sample: bool = True,
                hypotheses: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encode `src` from the batch dict, decode `dst`: (recon, mu, logvar).

        The module's forward so that a DistributedDataParallel wrapper can be called directly:
        `ddp_model("pose2d", "pose3d", batch)`. sample=False (or deterministic) decodes z = mu.
        hypotheses=K > 0 (variational only) decodes z = mu and K samples of the posterior in one
        pass: recon (B, 1 + K, ...), the mean's decoding first (for a best-of-K loss).
        """
        key = BATCH_KEY[src]
        if key not in batch_inputs:
            raise KeyError(f"batch has no {key!r}, needed by the {src!r} encoder (keys: {sorted(batch_inputs)})")
        inputs = batch_inputs[key]
        if src == "pose2d" and self.keypoint_scores and "keypoint_scores" in batch_inputs:
            inputs = scored_pose_2d(inputs, batch_inputs["keypoint_scores"])
        mu, logvar = self.encode(src, inputs)
        if hypotheses > 0 and logvar is not None:
            samples = self.reparameterize(mu.repeat_interleave(hypotheses, 0), logvar.repeat_interleave(hypotheses, 0))
            z = torch.cat([mu[:, None], samples.view(len(mu), hypotheses, -1)], 1).flatten(0, 1)
            recon = self.decode(dst, z, mu.repeat_interleave(1 + hypotheses, 0))
            return recon.view(len(mu), 1 + hypotheses, *recon.shape[1:]), mu, logvar
        z = self.reparameterize(mu, logvar) if sample and logvar is not None else mu
        return self.decode(dst, z, mu), mu, logvar

    def lift(self, modality: str, inputs: torch.Tensor, hypotheses: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised 3D from one encoder: (mean (B, 16, 3), samples (B, K, 16, 3)).

        The mean decodes the latent mean; the K hypotheses decode samples of the input-conditioned
        posterior at `sample_temperature`, drawn as a set by `hypothesis_noise` (a deterministic
        model repeats its one answer); K = 0 decodes the mean only.
        Gradients and train/eval mode are left to the caller.
        """
        if hypotheses < 0:
            raise ValueError(f"hypotheses must be >= 0, got {hypotheses}")
        mu, logvar = self.encode(modality, inputs)
        mean = self.decode("pose3d", mu)
        if logvar is None:
            return mean, mean[:, None].expand(-1, hypotheses, -1, -1)
        dims = self.sample_dims or self.latent_dim
        noise = nn.functional.pad(hypothesis_noise(len(mu), hypotheses, dims, device=mu.device, dtype=mu.dtype),
                                  (0, self.latent_dim - dims))
        mu_k = mu.repeat_interleave(hypotheses, 0)
        z = self.reparameterize(mu_k, logvar.repeat_interleave(hypotheses, 0), self.sample_temperature,
                                noise.flatten(0, 1))
        return mean, self.decode("pose3d", z, mu_k).view(len(mu), hypotheses, *mean.shape[1:])
