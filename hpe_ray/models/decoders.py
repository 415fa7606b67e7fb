"""Decoders from the shared latent space: z (B, latent_dim) -> a normalised pose or an image."""

from __future__ import annotations

import torch
from torch import nn

from hpe_ray.models.encoders import MLP


class PoseDecoder(nn.Module):
    """z (B, latent_dim) -> normalised root-less pose (B, num_joints, coord_dim); MLP options as in `MLP`."""

    coord_dim: int

    def __init__(self, latent_dim: int = 100, num_joints: int = 16, hidden: int = 512, blocks: int = 5, *,
                 batch_norm: bool = False, dropout: float = 0.0, residual: bool = False):
        super().__init__()
        self.num_joints = num_joints
        self.trunk = MLP(latent_dim, hidden, blocks, batch_norm=batch_norm, dropout=dropout, residual=residual)
        # Linear output: the targets are z-scored, unbounded values.
        self.out = nn.Linear(hidden, num_joints * self.coord_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(z)).view(-1, self.num_joints, self.coord_dim)


class PoseDecoder3D(PoseDecoder):
    """z -> (B, 16, 3): normalised root-relative 3D pose, root dropped."""

    coord_dim = 3


class PoseDecoder2D(PoseDecoder):
    """z -> (B, 16, 2): normalised 2D pose, root dropped (for 2D -> 2D reconstruction)."""

    coord_dim = 2


class ImageDecoder(nn.Module):
    """z (B, latent_dim) -> image (B, 3, S, S) in [-1, 1], S = image_size (a multiple of 32).

    A linear layer to a (base_channels, S/32, S/32) map, then five stride-2 transposed
    convolutions halving the channels (BatchNorm + ReLU after each but the last, Tanh out).
    """

    NUM_UPSAMPLINGS = 5

    def __init__(self, latent_dim: int = 100, image_size: int = 128, base_channels: int = 256):
        super().__init__()
        factor = 2 ** self.NUM_UPSAMPLINGS
        if image_size < factor or image_size % factor:
            raise ValueError(f"ImageDecoder image_size must be a positive multiple of {factor}, got {image_size}")
        if base_channels < 2 ** (self.NUM_UPSAMPLINGS - 1):
            raise ValueError(f"ImageDecoder base_channels must be >= {2 ** (self.NUM_UPSAMPLINGS - 1)}, "
                             f"got {base_channels}")
        self.start_size = image_size // factor
        self.base_channels = base_channels
        self.project = nn.Linear(latent_dim, base_channels * self.start_size ** 2)
        layers: list[nn.Module] = [nn.BatchNorm2d(base_channels), nn.ReLU()]
        channels = base_channels
        for i in range(self.NUM_UPSAMPLINGS):
            last = i == self.NUM_UPSAMPLINGS - 1
            out_channels = 3 if last else channels // 2
            layers.append(nn.ConvTranspose2d(channels, out_channels, kernel_size=4, stride=2, padding=1))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out_channels), nn.ReLU()]
            channels = out_channels
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, self.base_channels, self.start_size, self.start_size)
        return self.upsample(x)
