"""Validated model configuration: dataclasses that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import ConfigError

QuantizeType = Literal["gsq", "vq", "ibq"]
QUANTIZE_TYPES: tuple[str, ...] = ("gsq", "vq", "ibq")
GROUP_NORM_GROUPS = 32  # every GroupNorm in the upstream architecture uses 32 groups


@dataclass
class QuantizerConfig:
    """Quantizer options, named as in the upstream constructors.

    quantize_type: "gsq" (grouped spherical), "vq" (plain nearest-neighbour VQ, no groups)
    or "ibq" (index backpropagation quantization: argmax of code logits z . c).
    """

    quantize_type: str = "gsq"
    num_embed: int = 8192
    embed_dim: int = 8
    num_group: int = 1
    use_uniform_init: bool = False
    use_l2_norm: bool = True
    use_l1_norm: bool = False
    force_1d_clip: bool = False
    commitment_loss_weight: float = 0.25
    # Upstream draws a random index among exact ties while training ("random"); inference
    # here is always deterministic (lowest index wins). Kept so configs round-trip.
    argmin_func: str = "random"
    # Entropy regulariser (training only): weight, softmax temperature.
    entropy_loss_weight: float = 0.0
    entropy_temperature: float = 1.0
    # Radius of the spherical init for plain VQ (upstream "norm_distirbution_radius").
    init_radius: float = 1.0

    @property
    def group_dim(self) -> int:
        """Channels per group, d = D / G."""
        return self.embed_dim // self.num_group

    def validate(self) -> None:
        """Raise ConfigError when an option is out of range or inconsistent."""
        if self.quantize_type not in QUANTIZE_TYPES:
            raise ConfigError(
                f"quantize_type={self.quantize_type!r} is not supported; use one of {', '.join(QUANTIZE_TYPES)}"
            )
        _check_positive("num_embed", self.num_embed)
        _check_positive("embed_dim", self.embed_dim)
        _check_positive("num_group", self.num_group)
        if self.num_embed > 2**31 - 1:
            raise ConfigError(f"num_embed={self.num_embed} does not fit int32 token ids")
        if self.embed_dim % self.num_group:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_group={self.num_group}"
            )
        if self.quantize_type == "vq" and self.num_group != 1:
            raise ConfigError("plain VQ has no groups: num_group must be 1 (use quantize_type='gsq')")
        if self.use_l1_norm and self.use_l2_norm:
            raise ConfigError("use_l1_norm and use_l2_norm are exclusive; set at most one")
        if self.commitment_loss_weight < 0 or self.entropy_loss_weight < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.entropy_temperature <= 0:
            raise ConfigError(f"entropy_temperature={self.entropy_temperature} must be > 0")

    @property
    def lookup_normalization(self) -> Literal["l2", "l1", "clip", "none"]:
        """What is applied to latent groups and codebook rows before the nearest-code search."""
        if self.use_l1_norm:
            return "l1"
        if self.use_l2_norm:
            return "l2"
        # Upstream clips to [-1, 1] only for uniform-init GSQ with d == 1 and force_1d_clip.
        if (
            self.quantize_type == "gsq"
            and self.force_1d_clip
            and self.use_uniform_init
            and self.group_dim == 1
        ):
            return "clip"
        return "none"


class ArchitectureConfig:
    """What every model family's config offers: validation, JSON round trip and the shape facts.

    A subclass is a dataclass with a `quantizer` field and its family's constructor options; it sets
    `family` (the registry name, written into the JSON) and the properties below.
    """

    family: ClassVar[str] = ""
    quantizer: QuantizerConfig

    @classmethod
    def default_quantizer(cls) -> QuantizerConfig:
        """The quantizer a config of this family has unless it says otherwise."""
        return QuantizerConfig()

    @property
    def input_channels(self) -> int:
        """Image channels in (and out)."""
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:
        """Latent channels D the encoder hands to the quantizer."""
        return self.quantizer.embed_dim

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction from image to token grid."""
        raise NotImplementedError

    @property
    def min_token_positions(self) -> int:
        """Fewest token positions (h * w) the decoder can decode."""
        return 1

    @property
    def quantizer_loss_weight(self) -> float:
        """Weight of the quantizer's loss in the generator objective."""
        return 1.0

    def summary(self) -> str:
        """One line describing the configuration."""
        q = self.quantizer
        return (
            f"{self.family} {q.quantize_type.upper()} f{self.downsample_factor} D={q.embed_dim} G={q.num_group} "
            f"d={q.group_dim} V={q.num_embed} lookup={q.lookup_normalization}"
        )

    def validate(self) -> "ArchitectureConfig":
        """Raise ConfigError when options are inconsistent; return self for chaining."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict with the family name (tuples become lists)."""
        return {"family": self.family, **json.loads(json.dumps(dataclasses.asdict(self)))}

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build and validate from a dict as written by to_dict; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"a tokenizer config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        family = data.pop("family", cls.family)
        if family != cls.family:
            raise ConfigError(f"a {family!r} config cannot be read as a {cls.family!r} config")
        _reject_unknown(cls, data, f"{cls.family} tokenizer config")
        given = data.pop("quantizer", {})
        if isinstance(given, dict):  # a partial quantizer completes the family's default one
            given = {**dataclasses.asdict(cls.default_quantizer()), **given}
        quantizer = quantizer_config_from_dict(given)
        try:
            config = cls(**data, quantizer=quantizer)
        except TypeError as error:
            raise ConfigError(f"invalid tokenizer config: {error}") from None
        return config.validate()

    @classmethod
    def from_json(cls, text: str):
        """Parse JSON text written by to_json."""
        return cls.from_dict(parse_config_json(text))


def parse_config_json(text: str) -> Any:
    """json.loads with a ConfigError for bad text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"tokenizer config is not valid JSON: {error}") from None


@dataclass
class TokenizerConfig(ArchitectureConfig):
    """The `flex` family (flex_gen's GSQ-GAN): options named as in the upstream FlexTokenizer constructor."""

    family: ClassVar[str] = "flex"

    input_channels: int = 3
    hidden_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    encoder_layer_configs: tuple[int, ...] = (2, 2, 2, 2, 2)
    decoder_layer_configs: tuple[int, ...] = (2, 2, 2, 2, 2)
    mid_block_attn: bool = False
    attention_resolutions: tuple[int, ...] = ()
    embedding_dim: int = 8
    use_adaptive_norm: bool = True
    use_learnable_up_down_sample: bool = True
    residual_conv_kernel_size: int = 3
    input_conv_kernel_size: int = 3
    output_conv_kernel_size: int = 3
    dropout_probability: float = 0.0
    quantizer_aux_loss_weight: float = 1.0
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        for name in ("channel_multipliers", "encoder_layer_configs", "decoder_layer_configs", "attention_resolutions"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            setattr(self, name, tuple(value) if value is not None else ())
        if isinstance(self.quantizer, dict):
            self.quantizer = quantizer_config_from_dict(self.quantizer)

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction from image to token grid: 2 ** (number of multipliers - 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def min_token_positions(self) -> int:
        """Adaptive group norm divides by the latent's unbiased variance over positions: it needs 2."""
        return 2 if self.use_adaptive_norm else 1

    @property
    def quantizer_loss_weight(self) -> float:
        return self.quantizer_aux_loss_weight

    def summary(self) -> str:
        return (
            f"{super().summary()} hidden={self.hidden_channels} multipliers={list(self.channel_multipliers)}"
        )

    def validate(self) -> "TokenizerConfig":
        """Raise ConfigError when options are inconsistent; return self for chaining."""
        self.quantizer.validate()
        for name in ("input_channels", "hidden_channels", "embedding_dim"):
            _check_positive(name, getattr(self, name))
        if not self.channel_multipliers:
            raise ConfigError("channel_multipliers must name at least one level")
        for name in ("channel_multipliers", "encoder_layer_configs", "decoder_layer_configs"):
            values = getattr(self, name)
            if any((not isinstance(v, int)) or v < (1 if name == "channel_multipliers" else 0) for v in values):
                raise ConfigError(f"{name}={list(values)} must hold non-negative integers (multipliers >= 1)")
        expected = len(self.channel_multipliers) + 1
        for name in ("encoder_layer_configs", "decoder_layer_configs"):
            if len(getattr(self, name)) != expected:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries; it needs one per channel multiplier "
                    f"plus one for the middle blocks ({expected})"
                )
        for multiplier in self.channel_multipliers:
            channels = self.hidden_channels * multiplier
            if channels % GROUP_NORM_GROUPS:
                raise ConfigError(
                    f"hidden_channels * multiplier = {channels} is not divisible by {GROUP_NORM_GROUPS} "
                    "(GroupNorm groups); choose hidden_channels as a multiple of 32"
                )
        for name in ("residual_conv_kernel_size", "input_conv_kernel_size", "output_conv_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ConfigError(f"{name}={k} must be a positive odd number")
        if not 0.0 <= self.dropout_probability < 1.0:
            raise ConfigError(f"dropout_probability={self.dropout_probability} must be in [0, 1)")
        if self.embedding_dim != self.quantizer.embed_dim:
            raise ConfigError(
                f"embedding_dim={self.embedding_dim} differs from quantizer embed_dim={self.quantizer.embed_dim}; "
                "the encoder output is what the quantizer splits into groups"
            )
        return self


def quantizer_config_from_dict(data: dict[str, Any]) -> QuantizerConfig:
    """Build a QuantizerConfig from a dict; unknown keys are an error."""
    if isinstance(data, QuantizerConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"a quantizer config must be a JSON object, got {type(data).__name__}")
    _reject_unknown(QuantizerConfig, data, "quantizer config")
    try:
        return QuantizerConfig(**data)
    except TypeError as error:
        raise ConfigError(f"invalid quantizer config: {error}") from None


def _reject_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
