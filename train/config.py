"""Training configuration: YAML file -> validated dataclasses, with `section.key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gsq_core.config import ArchitectureConfig
from gsq_core.errors import ConfigError
from gsq_core.families import config_from_dict as model_config_from_dict
from gsq_core.registry import PRESETS, preset_config

SCHEDULES = ("cosine", "linear", "constant")
RECONSTRUCTION_LOSSES = ("l1", "l2")
ADVERSARIAL_LOSSES = ("hinge", "non_saturating")
MIXED_PRECISION = ("no", "bf16", "fp16")
DATA_FORMATS = ("folder", "shards")


@dataclass
class DataConfig:
    """Where images come from and how training crops are cut."""

    path: str | None = None  # set by --data
    format: str = "folder"  # "folder": a tree of jpg/png/webp; "shards": a folder of .tar shards
    crop_size: int = 256
    min_scale: float = 1.0  # random downscale factor in [min_scale, 1] before cropping (1 = off)
    hflip: bool = True
    vflip: bool = False
    color_jitter: float = 0.0  # > 0: random RGB channel order and per-channel gain in [1 - color_jitter, 1]
    batch_size: int = 8  # per process, per micro-step
    num_workers: int = 0
    cache_images: bool = False  # keep decoded images in memory (small folders only)
    val_dir: str | None = None  # validation images; default: a held-out share of the training folder
    val_fraction: float = 0.02
    max_val_images: int = 16
    val_size: int = 256  # validation images are centre-cropped (after a short-side resize) to this size
    shuffle_buffer: int = 256  # shards: samples held for shuffling


@dataclass
class OptimConfig:
    """Optimizer, schedule and step bookkeeping."""

    max_steps: int = 1000
    schedule_steps: int | None = None  # length of the lr decay; None: max_steps (set it to train in stages)
    grad_accum_steps: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 0
    schedule: str = "cosine"
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    disc_lr: float | None = None  # None: same as lr
    device: str = "auto"  # "auto": accelerator if present, else CPU (also for multi-process runs)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"


@dataclass
class LossConfig:
    """Weights of the GSQ-GAN objective."""

    reconstruction: str = "l1"
    reconstruction_weight: float = 1.0
    l2_weight: float = 0.0  # extra L2 term on top of an L1 reconstruction loss
    quantizer_weight: float = 1.0  # times the model's quantizer loss (commitment, codebook, entropy)
    perceptual_weight: float = 0.0
    lpips_vgg_weights: str | None = None  # local torchvision vgg16 state dict (.pth/.safetensors)
    lpips_linear_weights: str | None = None  # local LPIPS linear-layer weights (vgg.pth)
    adversarial_weight: float = 0.0
    adversarial_loss: str = "hinge"
    disc_start: int = 0  # generator step at which the discriminator starts
    disc_channels: int = 64
    disc_layers: int = 3


@dataclass
class LogConfig:
    """How often to log, validate and checkpoint."""

    every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_grid_images: int = 4


@dataclass
class TrainConfig:
    """Everything a run needs besides the command-line paths."""

    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def tokenizer_config(self) -> ArchitectureConfig:
        """The model: `model.preset` (a gsq_core preset name) updated by the other model keys;
        `model.family` picks the architecture (gsq_core.families; default flex, or the preset's)."""
        model = dict(self.model)
        preset = model.pop("preset", None)
        base = preset_config(preset).to_dict() if preset else {}
        quantizer = {**base.pop("quantizer", {}), **model.pop("quantizer", {})}
        return model_config_from_dict({**base, **model, "quantizer": quantizer})

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first bad option."""
        self.tokenizer_config()
        _choice("data.format", self.data.format, DATA_FORMATS)
        _choice("optim.schedule", self.optim.schedule, SCHEDULES)
        _choice("optim.mixed_precision", self.optim.mixed_precision, MIXED_PRECISION)
        _choice("loss.reconstruction", self.loss.reconstruction, RECONSTRUCTION_LOSSES)
        _choice("loss.adversarial_loss", self.loss.adversarial_loss, ADVERSARIAL_LOSSES)
        for name in ("data.crop_size", "data.batch_size", "data.val_size", "optim.max_steps",
                     "optim.grad_accum_steps", "log.every", "log.val_every", "log.checkpoint_every",
                     "log.keep_checkpoints", "loss.disc_layers", "loss.disc_channels"):
            if _get(self, name) < 1:
                raise ConfigError(f"{name}={_get(self, name)} must be >= 1")
        if not 0 < self.data.min_scale <= 1:
            raise ConfigError(f"data.min_scale={self.data.min_scale} must be in (0, 1]")
        if not 0 <= self.data.color_jitter < 1:
            raise ConfigError(f"data.color_jitter={self.data.color_jitter} must be in [0, 1)")
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction={self.data.val_fraction} must be in [0, 1)")
        if not 0 <= self.optim.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay={self.optim.ema_decay} must be in [0, 1)")
        factor = self.tokenizer_config().downsample_factor
        for name in ("data.crop_size", "data.val_size"):
            if _get(self, name) % factor:
                raise ConfigError(f"{name}={_get(self, name)} must be a multiple of the model's downsampling factor {factor}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for printing and for the run record)."""
        data = dataclasses.asdict(self)
        data["optim"]["betas"] = list(self.optim.betas)
        return data


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "loss": LossConfig, "log": LogConfig}


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config, apply `section.key=value` overrides, validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown sections {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name) or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - fields)
        if bad:
            raise ConfigError(f"{source}: unknown {name} keys {', '.join(bad)}; known: {', '.join(sorted(fields))}")
        sections[name] = cls(**{key: _coerce(cls, key, value, name) for key, value in values.items()})
    model = raw.get("model") or {}
    if model.get("preset") and model["preset"].lower() not in PRESETS:
        raise ConfigError(f"{source}: unknown model.preset {model['preset']!r}")
    return TrainConfig(seed=int(raw.get("seed", 0)), model=model, **sections).validate()


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=2e-4)")
    value = yaml.safe_load(text) if text else None
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = value


def _coerce(cls: type, key: str, value: Any, section: str) -> Any:
    """YAML reads '1e-4' as text; turn numbers written as text into the field's number type."""
    annotation = str(next(f.type for f in dataclasses.fields(cls) if f.name == key))
    if not isinstance(value, str):
        if annotation.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    for kind, convert in (("float", float), ("int", int)):
        if annotation.startswith(kind):
            try:
                return convert(value)
            except ValueError:
                raise ConfigError(f"{section}.{key}={value!r} is not a number") from None
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _get(config: TrainConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)
