"""Config of the `ibq` family: SEED-Voken's IBQ tokenizer (taming-transformers VQGAN encoder/decoder).

Field names are those of upstream's `ddconfig` (src/IBQ/modules/diffusionmodules/model.py Encoder and
Decoder), so a LightningCLI YAML maps onto them one to one; n_embed / embed_dim live in `quantizer`.
Defaults are the published ImageNet 256 tokenizers (configs/IBQ/gpu/imagenet_ibqgan_*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .config import GROUP_NORM_GROUPS, ArchitectureConfig, QuantizerConfig, _check_positive, quantizer_config_from_dict
from .errors import ConfigError


def ibq_quantizer(num_embed: int = 16384, embed_dim: int = 256, **options) -> QuantizerConfig:
    """IBQ's quantizer: one group of D channels, logits z . c over the raw codebook (no normalisation)."""
    return QuantizerConfig(
        quantize_type="ibq", num_embed=num_embed, embed_dim=embed_dim, num_group=1, use_l2_norm=False, **options
    )


@dataclass
class IBQConfig(ArchitectureConfig):
    """Encoder/decoder options of the taming VQGAN as IBQ builds it, plus its quantizer.

    Layout: conv_in, len(ch_mult) levels of num_res_blocks residual blocks (channels ch * ch_mult[i];
    self-attention after each block where the level's nominal resolution is in attn_resolutions,
    counted from `resolution` halving per level), a 2x downsampling after every level but the last,
    a middle block (residual, attention, residual), norm and conv_out to z_channels, then quant_conv
    to the quantizer's embed_dim. The decoder mirrors it with num_res_blocks + 1 blocks per level,
    starting with post_quant_conv.
    """

    family: ClassVar[str] = "ibq"

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3  # upstream out_ch equals it; double_z and give_pre_end are False (see checkpoint_ibq)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    # Weight of the quantizer's loss in the generator objective (upstream lossconfig quant_loss_weight).
    quant_loss_weight: float = 1.0
    quantizer: QuantizerConfig = field(default_factory=ibq_quantizer)

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            setattr(self, name, tuple(value) if value is not None else ())
        if isinstance(self.quantizer, dict):
            self.quantizer = quantizer_config_from_dict(self.quantizer)

    @classmethod
    def default_quantizer(cls) -> QuantizerConfig:
        return ibq_quantizer()

    @property
    def input_channels(self) -> int:
        return self.in_channels

    @property
    def downsample_factor(self) -> int:
        """2 ** (number of levels - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def quantizer_loss_weight(self) -> float:
        return self.quant_loss_weight

    def summary(self) -> str:
        return (
            f"{super().summary()} ch={self.ch} ch_mult={list(self.ch_mult)} res_blocks={self.num_res_blocks} "
            f"attn_resolutions={list(self.attn_resolutions)} z_channels={self.z_channels}"
        )

    def validate(self) -> "IBQConfig":
        """Raise ConfigError when options are out of range or describe a model upstream cannot run."""
        self.quantizer.validate()
        for name in ("ch", "z_channels", "resolution", "in_channels"):
            _check_positive(name, getattr(self, name))
        if not self.ch_mult or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in self.ch_mult):
            raise ConfigError(f"ch_mult={list(self.ch_mult)} must be a non-empty list of positive integers")
        # Upstream's encoder breaks without residual blocks (its channel bookkeeping assumes one per level).
        _check_positive("num_res_blocks", self.num_res_blocks)
        if any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in self.attn_resolutions):
            raise ConfigError(f"attn_resolutions={list(self.attn_resolutions)} must hold positive integers")
        for channels in (self.ch, *(self.ch * m for m in self.ch_mult)):
            if channels % GROUP_NORM_GROUPS:
                raise ConfigError(
                    f"ch * ch_mult gives {channels} channels, not divisible by {GROUP_NORM_GROUPS} (GroupNorm groups); "
                    "choose ch as a multiple of 32"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if not isinstance(self.resamp_with_conv, bool):
            raise ConfigError(f"resamp_with_conv={self.resamp_with_conv!r} must be true or false")
        if self.quant_loss_weight < 0:
            raise ConfigError(f"quant_loss_weight={self.quant_loss_weight} must be >= 0")
        return self

    def attention_levels(self) -> tuple[list[bool], list[bool]]:
        """Which encoder levels and which decoder levels (both indexed by level, 0 = full resolution)
        carry attention after their residual blocks, with upstream's integer resolution arithmetic."""
        levels = len(self.ch_mult)
        encoder, resolution = [], self.resolution
        for level in range(levels):
            encoder.append(resolution in self.attn_resolutions)
            if level != levels - 1:
                resolution //= 2
        decoder = [False] * levels
        resolution = self.resolution // 2 ** (levels - 1)
        for level in reversed(range(levels)):
            decoder[level] = resolution in self.attn_resolutions
            if level != 0:
                resolution *= 2
        return encoder, decoder
