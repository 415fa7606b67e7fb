"""The one typed configuration: YAML in, validated pydantic models inside.

A Tune trial is this object with some dotted keys replaced (`with_overrides`), and the best
trial's YAML (`to_yaml`) trains the same model again. Every error names the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENCODER_MODALITIES = ("pose2d", "rgb")
DECODER_MODALITIES = ("pose3d", "pose2d", "rgb")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Lifting augmentation beyond virtual cameras (hpe_ray.data.augment). Each is applied to a
    random share of the training poses every epoch; 0 turns it off. Defaults chosen by
    benchmarks/generalisation.py: keypoint noise 0.01 costs 3-10% on the training set's own clean
    2D and gains 2-6% on noisy 2D and 4-10% on another rig's motion (the README's table)."""

    camera_distance_mm: tuple[float, float] = (2000.0, 8000.0)
    camera_elevation_deg: tuple[float, float] = (-10.0, 40.0)
    field_of_view_deg: tuple[float, float] = (25.0, 90.0)
    """Ranges of the virtual cameras (data.virtual_camera_fraction of the poses)."""
    bone_fraction: float = Field(0.5, ge=0.0, le=1.0)
    body_scale: tuple[float, float] = (0.85, 1.15)
    bone_spread: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of poses given other bone lengths: body size in body_scale, each bone +- bone_spread."""
    convention_fraction: float = Field(0.5, ge=0.0, le=1.0)
    convention_shift_mm: float = Field(30.0, ge=0.0)
    """Share of poses whose spine, thorax, neck/nose, head top, hips and shoulders are moved by up to
    convention_shift_mm per axis (another detector's or converter's keypoint placement), in 3D and 2D."""
    flip: float = Field(0.5, ge=0.0, le=1.0)
    """Share of poses mirrored left-right."""
    keypoint_noise: float = Field(0.01, ge=0.0, le=0.2)
    """Max 2D noise sigma as a share of the 2D pose height (drawn per pose), like a detector's."""
    occluded_joints: float = Field(0.1, ge=0.0, le=1.0)
    occluded_shift: float = Field(0.1, ge=0.0, le=1.0)
    """With data.keypoint_scores: the simulated detector's share of joints that are occluded (scored
    below 0.3 and, half of them, displaced by Gaussian noise of sigma occluded_shift times the 2D
    pose height, the other half put on a neighbouring joint); the other joints score high."""

    @model_validator(mode="after")
    def _ordered_ranges(self) -> "AugmentConfig":
        for name in ("camera_distance_mm", "camera_elevation_deg", "field_of_view_deg", "body_scale"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name}: the first value must not exceed the second, got {(low, high)}")
        if self.camera_distance_mm[0] <= 0 or self.body_scale[0] <= 0:
            raise ValueError("camera_distance_mm and body_scale must be positive")
        if not (0 < self.field_of_view_deg[0] and self.field_of_view_deg[1] < 170):
            raise ValueError("field_of_view_deg must lie in (0, 170)")
        return self


class DataConfig(_Strict):
    dir: str = "data/synthetic"
    mode_2d: Literal["scaled", "camera", "pixel"] = "scaled"
    """scaled: normalised image coordinates relative to the root and divided by the pose's 2D
    size (camera, distance and keypoint conventions matter least); camera: absolute normalised
    image coordinates via each sample's intrinsics, z-scored; pixel: the thesis's pixel
    coordinates with perspective kept. See hpe_ray.normalization."""
    image_size: int = Field(64, ge=32, le=512)
    shuffle_buffer: int = Field(2000, ge=0)
    loader_workers: int = Field(1, ge=0)
    in_memory: Literal["auto", "always", "never"] = "auto"
    """auto: lifting-only runs (no image modality) keep all 2D/3D arrays on the device."""
    virtual_camera_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Share of training samples re-projected through a random virtual camera each epoch
    (in-memory lifting path): generalises to unseen cameras while the rest keeps the real
    training views. 0 disables the augmentation."""
    on_error: Literal["raise", "skip"] = "raise"
    augment: "AugmentConfig" = Field(default_factory=lambda: AugmentConfig())
    """In-memory lifting only: what else varies besides the camera (see hpe_ray.data.augment)."""
    keypoint_scores: bool = False
    """True: the 2D-pose encoder also reads each joint's detector confidence in [0, 1] (input
    16 x 2 + 17 instead of 16 x 2). Training simulates a detector (data.augment.occluded_*),
    validation and evaluation on a dataset give every joint 1, `predict` the detector's scores
    (0 for a missing joint). In-memory lifting only."""

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two (32..512), got {v}")
        return v


class ModelConfig(_Strict):
    latent_dim: int = Field(100, ge=2, le=2048)
    hidden: int = Field(512, ge=16, le=8192)
    blocks: int = Field(5, ge=1, le=16)
    batch_norm: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    residual: bool = False
    deterministic: bool = False
    """True: the same MLP without the VAE (Martinez-style baseline; no sampling, no KL)."""
    conditioned: bool = True
    """True: the 3D decoder reads the latent mean beside the sample (a conditional decoder)."""
    sample_dims: int | None = Field(8, ge=1)
    """Latent dims that carry the sampling noise (the first N; the rest decode at their mean), so
    hypotheses vary along a few learned directions; None, or N >= latent_dim: all (the thesis)."""
    fit_2d: float = Field(1.0, ge=0.0, le=1.0)
    """How far every 3D prediction from 2D keypoints is moved onto the keypoints' rays, depths
    kept (`hpe_ray.camera.fit_to_keypoints`), in validation, `evaluate`, `predict` and export
    alike: 1 puts each joint's x, y on its ray, 0 leaves the decoded pose, between part way
    (true / false read as 1 / 0). 1 follows exact 2D placed by other conventions; noisy 2D passes
    its noise on, and part way does better there (README, "Lifting that travels"). `--fit-2d` of
    `predict`, `evaluate` and `export` overrides it, no retraining."""
    image_pretrained: str | None = None
    """Local path to ImageNet ResNet-18 weights, or 'torchvision' for torchvision's cache."""


class BetaConfig(_Strict):
    kind: Literal["constant", "linear", "cyclical"] = "constant"
    max: float = Field(0.001, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    cycles: int = Field(4, ge=1)
    ratio: float = Field(0.5, gt=0.0, le=1.0)


class LossConfig(_Strict):
    pairs: dict[str, float] = Field(default_factory=lambda: {"pose2d_to_pose3d": 1.0})
    """Encoder->decoder pairs ("SRC_to_DST") and their weights."""
    schedule: Literal["alternate", "sum"] = "alternate"
    pose_loss: Literal["mse", "l1"] = "l1"
    beta: BetaConfig = Field(default_factory=BetaConfig)
    reprojection_weight: float = Field(0.0, ge=0.0)
    use_3d_labels: bool = True
    """False: 3D targets are never used; train through the reprojection loss only."""
    hypotheses: int = Field(8, ge=0, le=64)
    """K > 0: pairs decoding pose3d reconstruct from the latent mean and add a best-of-K term over K
    posterior samples (hypotheses_weight), so the hypotheses spread where the input is ambiguous;
    0: the thesis's loss on one sampled latent."""
    hypotheses_weight: float = Field(4.0, ge=0.0)

    @field_validator("pairs")
    @classmethod
    def _known_pairs(cls, pairs: dict[str, float]) -> dict[str, float]:
        if not pairs:
            raise ValueError("at least one encoder->decoder pair is needed")
        for name, weight in pairs.items():
            src, sep, dst = name.partition("_to_")
            if not sep or src not in ENCODER_MODALITIES or dst not in DECODER_MODALITIES:
                raise ValueError(
                    f"unknown pair {name!r}: use SRC_to_DST with SRC in {ENCODER_MODALITIES} "
                    f"and DST in {DECODER_MODALITIES}")
            if weight < 0:
                raise ValueError(f"pair {name!r} has a negative weight {weight}")
        return pairs

    def pair_list(self) -> list[tuple[str, str, float]]:
        """[(src, dst, weight)] for pairs with a positive weight."""
        return [(*name.split("_to_"), w) for name, w in self.pairs.items() if w > 0]


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["cosine", "step", "none"] = "cosine"
    grad_clip: float = Field(1.0, ge=0.0)
    """Max gradient norm; 0 disables clipping."""
    amp: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""
    seed: int = 0
    eval_hypotheses: int = Field(10, ge=1)
    """K for the best-of-K validation metric reported beside the deterministic one."""
    steps_per_epoch: int | None = Field(None, ge=1)
    """Cap on optimiser steps per epoch (small searches); None: one pass over the train split."""
    val_max_samples: int | None = Field(None, ge=1)
    tensorboard_images_every: int = Field(5, ge=0)
    fit_sample_temperature: bool = True
    """After each validation, set the spread hypotheses are drawn with (`sample_temperature`,
    posterior std x 0.4-1) to the one with the lowest best-of-K error on up to 1024 validation
    samples; false: draw at 1."""
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss: stop, naming the epoch and batch (the last checkpoint stays the
    newest), or skip that optimiser step and count it (`nonfinite_steps` in the epoch metrics)."""


class ScalingConfig(_Strict):
    workers: int = Field(2, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float = Field(1.0, gt=0.0)


class RunConfig(_Strict):
    name: str = "hpe-ray"
    storage: str = "runs"
    max_failures: int = Field(2, ge=0)
    checkpoints_to_keep: int = Field(2, ge=1)


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if not self.loss.use_3d_labels and self.loss.reprojection_weight <= 0:
            raise ValueError("loss.use_3d_labels is false, so loss.reprojection_weight must be > 0")
        if self.data.keypoint_scores and (self.uses_images or self.data.in_memory == "never"):
            raise ValueError("data.keypoint_scores needs in-memory lifting (no rgb pair, data.in_memory not "
                             "'never'): the detector scores are simulated there")
        return self

    @property
    def modalities(self) -> tuple[set[str], set[str]]:
        """(encoder modalities, decoder modalities) used by the configured pairs."""
        pairs = self.loss.pair_list()
        return {s for s, _, _ in pairs}, {d for _, d, _ in pairs}

    @property
    def uses_images(self) -> bool:
        enc, dec = self.modalities
        return "rgb" in enc or "rgb" in dec

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted keys replaced, e.g. {"model.latent_dim": 32}; validated."""
        return config_from_dict(apply_overrides(self.model_dump(), overrides), origin="overrides")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (copy). "loss.pairs.rgb_to_pose3d" creates the pair."""
    import copy

    out = copy.deepcopy(tree)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            # A section the file leaves out is created (validation still names unknown ones).
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parents[:i + 1])}: not a section, cannot set {dotted!r}")
            node = child
        node[leaf] = value
    return out


def format_validation_error(err: ValidationError, origin: str, what: str = "configuration") -> str:
    """One line naming origin, then one line per bad key: "  model.latnet_dim: unknown key"."""
    lines = [f"{origin}: invalid {what}"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


# Keys added to Config after checkpoints were first written, with the behaviour a checkpoint that
# lacks them had (not today's default). Checkpoints store the full config: only these can be absent.
KEYS_ADDED_LATER = {"model.conditioned": False, "model.sample_dims": None, "train.fit_sample_temperature": False}


def stored_config(tree: dict[str, Any], origin: str) -> Config:
    """The Config of a full config dict written by an earlier run (a checkpoint's), keys it
    predates set as they behaved then (KEYS_ADDED_LATER)."""
    missing = {}
    for dotted, value in KEYS_ADDED_LATER.items():
        section, key = dotted.split(".")
        if key not in tree.get(section, {}):
            missing[dotted] = value
    return config_from_dict(apply_overrides(tree, missing), origin)


def config_from_dict(tree: dict[str, Any] | None, origin: str = "config") -> Config:
    try:
        return Config.model_validate(tree or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be {expected}")
    return tree


RESOURCE_KINDS = {"configs": "config", "tune_spaces": "search space"}
"""The YAML folders that ship inside the package (hpe_ray/configs, hpe_ray/tune_spaces in a wheel;
configs/, tune_spaces/ at the top of the repository)."""


def resource_dir(kind: str) -> Path:
    """The folder of the packaged `kind` files: inside the installed package, else (a source
    checkout or an editable install) the repository's top-level folder."""
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"kind must be one of {sorted(RESOURCE_KINDS)}, got {kind!r}")
    here = Path(__file__).resolve().parent
    packaged = here / kind
    return packaged if packaged.is_dir() else here.parent / kind


def resource_names(kind: str) -> list[str]:
    """The names (file stems) of the packaged `kind` files, e.g. ['crossmodal', 'lifting', 'quick']."""
    folder = resource_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def find_resource(kind: str, name_or_path: str | Path) -> Path:
    """An existing file wins; else a bare name (`quick` or `quick.yaml`) is one of the packaged
    `kind` files; else a ConfigError that lists the packaged names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
        packaged = resource_dir(kind) / f"{stem}.yaml"
        if packaged.is_file():
            return packaged
    raise ConfigError(f"{path}: {RESOURCE_KINDS[kind]} file not found "
                      f"(packaged ones, by name: {', '.join(resource_names(kind)) or 'none'})")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config file (a path, or the name of a packaged one: `lifting`); unknown keys
    and bad values raise ConfigError naming the key."""
    path = find_resource("configs", path)
    tree = read_yaml_mapping(path, "config file", "a mapping of sections")
    return config_from_dict(apply_overrides(tree, overrides or {}), origin=str(path))


def absolute_paths(cfg: Config) -> Config:
    """data.dir and a model.image_pretrained file as absolute paths, resolved in the caller's
    working directory: Ray workers (and Tune trials, which change directory) do not share it."""
    overrides = {"data.dir": str(Path(cfg.data.dir).resolve())}
    if cfg.model.image_pretrained not in (None, "torchvision"):
        overrides["model.image_pretrained"] = str(Path(cfg.model.image_pretrained).resolve())
    return cfg.with_overrides(overrides)
