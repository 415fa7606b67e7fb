"""Encoders into the shared latent space: each returns (mu, logvar) of shape (B, latent_dim).

With `variational=False` an encoder has no log-variance head and returns (mu, None): the
deterministic baseline then has no parameters that never receive a gradient (which
DistributedDataParallel would reject).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18


class MLP(nn.Module):
    """(B, in_dim) -> (B, hidden): `blocks` Linear layers of `hidden` units, each followed by
    [BatchNorm1d], ReLU, [Dropout].

    With `residual`, the layers after the first are grouped in pairs and each pair is wrapped
    by a skip connection, as in Martinez et al. 2017 (blocks=5: one input layer and two
    residual blocks of two layers, their exact network); an unpaired last layer gets its own skip.
    """

    def __init__(self, in_dim: int, hidden: int = 512, blocks: int = 5, *, batch_norm: bool = False,
                 dropout: float = 0.0, residual: bool = False):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"MLP needs at least one block, got blocks={blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        def layer(n_in: int) -> nn.Sequential:
            parts: list[nn.Module] = [nn.Linear(n_in, hidden)]
            if batch_norm:
                parts.append(nn.BatchNorm1d(hidden))
            parts.append(nn.ReLU())
            if dropout > 0:
                parts.append(nn.Dropout(dropout))
            return nn.Sequential(*parts)

        self.stem = layer(in_dim)
        n_rest = blocks - 1
        if residual:
            group_sizes = [2] * (n_rest // 2) + [1] * (n_rest % 2)
        else:
            group_sizes = [1] * n_rest
        self.groups = nn.ModuleList(nn.Sequential(*(layer(hidden) for _ in range(size))) for size in group_sizes)
        self.residual = residual
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for group in self.groups:
            h = h + group(h) if self.residual else group(h)
        return h


def bounded_logvar(raw: torch.Tensor, upper: float) -> torch.Tensor:
    """upper - softplus(upper - raw): smoothly below `upper`, close to `raw` well under it; (...) -> (...).

    A smooth bound, not a clamp, so a saturated head still gets a gradient.
    """
    return upper - F.softplus(upper - raw)


class GaussianHeads(nn.Module):
    """(B, features) -> mu (B, latent_dim), logvar (B, latent_dim) or None when not variational.

    logvar is bounded above by LOGVAR_MAX (`bounded_logvar`). Unbounded, a linear head on
    features that grow while the backbone trains (the ResNet from scratch) puts out log-variances
    of 15-20 for some crops within the first hundred steps: exp(logvar) then dominates the KL
    (1e5 and more) and the sampled z, so the decoder sees noise of std 1e3 and the clipped
    gradient step is spent on it. A posterior wider than the N(0, I) prior never helps, so the
    bound costs nothing.
    """

    LOGVAR_MAX = 2.0  # posterior std at most e = 2.7

    def __init__(self, features: int, latent_dim: int, variational: bool = True):
        super().__init__()
        self.mu = nn.Linear(features, latent_dim)
        self.logvar = nn.Linear(features, latent_dim) if variational else None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.logvar is None:
            return self.mu(h), None
        return self.mu(h), bounded_logvar(self.logvar(h), self.LOGVAR_MAX)


class PoseEncoder2D(nn.Module):
    """Normalised root-less 2D pose (B, num_joints, 2) -> (mu, logvar), each (B, latent_dim).

    scores=True (data.keypoint_scores): the MLP also reads a detector confidence per joint, root
    included: input (B, num_joints + 1, 3) rows (x, y, score), the root's x, y zero
    (`hpe_ray.data.batch.scored_pose_2d`), of which the MLP takes num_joints * 2 + num_joints + 1
    values; a (B, num_joints, 2) pose is taken as exact (every score 1).
    """

    def __init__(self, latent_dim: int = 100, num_joints: int = 16, hidden: int = 512, blocks: int = 5, *,
                 batch_norm: bool = False, dropout: float = 0.0, residual: bool = False,
                 variational: bool = True, scores: bool = False):
        super().__init__()
        self.num_joints = num_joints
        self.scores = scores
        in_dim = num_joints * 2 + (num_joints + 1 if scores else 0)
        self.trunk = MLP(in_dim, hidden, blocks, batch_norm=batch_norm, dropout=dropout, residual=residual)
        self.heads = GaussianHeads(hidden, latent_dim, variational)

    def forward(self, pose_2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = pose_2d.dim() == 3 and pose_2d.shape[1:] == (self.num_joints, 2)
        scored = self.scores and pose_2d.dim() == 3 and pose_2d.shape[1:] == (self.num_joints + 1, 3)
        if not (plain or scored):
            expected = f"(B, {self.num_joints}, 2)" + (f" or (B, {self.num_joints + 1}, 3)" if self.scores else "")
            raise ValueError(f"PoseEncoder2D expects {expected}, got {tuple(pose_2d.shape)}")
        if scored:
            features = torch.cat([pose_2d[:, 1:, :2].flatten(1), pose_2d[:, :, 2]], 1)
        elif self.scores:
            features = torch.cat([pose_2d.flatten(1), pose_2d.new_ones(len(pose_2d), self.num_joints + 1)], 1)
        else:
            features = pose_2d.flatten(1)
        return self.heads(self.trunk(features))


def _resnet18_state_dict(pretrained_weights: str, allow_download: bool) -> dict[str, torch.Tensor]:
    """ImageNet ResNet-18 weights from a local file, or from torch.hub's cache for "torchvision"."""
    if pretrained_weights == "torchvision":
        weights = ResNet18_Weights.IMAGENET1K_V1
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        # Checked first so that a machine without network fails at once instead of hanging.
        if not os.path.isfile(cached) and not allow_download:
            raise FileNotFoundError(
                f"ResNet-18 ImageNet weights not in torch.hub's cache: {cached} "
                f"(download {weights.url} there, or pass allow_download=True)")
        return weights.get_state_dict(progress=False)
    if not os.path.isfile(pretrained_weights):
        raise FileNotFoundError(f"ResNet-18 pretrained weights file not found: {pretrained_weights}")
    return torch.load(pretrained_weights, map_location="cpu", weights_only=True)


class ImageEncoder(nn.Module):
    """RGB crop (B, 3, S, S) in [-1, 1] -> (mu, logvar), each (B, latent_dim); ResNet-18 backbone.

    pretrained_weights: None (random init), a path to a ResNet-18 ImageNet state dict, or
    "torchvision" for torchvision's IMAGENET1K_V1 file in torch.hub's cache (downloaded only
    with allow_download=True). The classifier ("fc.*") weights are discarded.
    """

    # ImageNet statistics the pretrained backbone was trained with, RGB order.
    _IMAGENET_MEAN = (0.485, 0.456, 0.406)
    _IMAGENET_STD = (0.229, 0.224, 0.225)

    def __init__(self, latent_dim: int = 100, pretrained_weights: str | None = None, *,
                 allow_download: bool = False, variational: bool = True):
        super().__init__()
        self.backbone = resnet18(weights=None)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        if pretrained_weights is not None:
            state = _resnet18_state_dict(pretrained_weights, allow_download)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                self.backbone.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"{pretrained_weights}: not a ResNet-18 state dict: {err}") from err
        self.heads = GaussianHeads(features, latent_dim, variational)
        self.register_buffer("imagenet_mean", torch.tensor(self._IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(self._IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"ImageEncoder expects (B, 3, H, W), got {tuple(image.shape)}")
        # The loader yields [-1, 1]; the backbone expects ImageNet-standardised [0, 1] RGB.
        x = ((image + 1.0) * 0.5 - self.imagenet_mean) / self.imagenet_std
        return self.heads(self.backbone(x))
