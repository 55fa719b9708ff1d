"""Model families: a family name maps to its config class and the builder of its encoder and decoder.

Every family's encoder maps images [B, C, H, W] to the latent the quantizer reads ([B, D, H/f, W/f],
including any projection such as IBQ's quant_conv), and its decoder maps a quantized latent back to
images (including IBQ's post_quant_conv). The quantizer is built from `config.quantizer` alike for all
families, so exporters, runtimes and training never need to know which family they run.

    flex  flex_gen's GSQ-GAN (gsq_core.encoder / decoder / layers): GSQ and VQ checkpoints
    ibq   SEED-Voken's IBQ: the taming VQGAN encoder/decoder (gsq_core.ibq_networks)

This module imports no torch; builders import their modules when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .config import ArchitectureConfig, TokenizerConfig, parse_config_json
from .errors import ConfigError
from .ibq_config import IBQConfig

if TYPE_CHECKING:
    from torch import nn

DEFAULT_FAMILY = "flex"  # configs written before families existed carry no family name


@dataclass(frozen=True)
class Family:
    """One registered architecture: its config class and encoder/decoder builder."""

    name: str
    config_class: type[ArchitectureConfig]
    build: Callable[[Any], tuple["nn.Module", "nn.Module"]]  # validated config -> (encoder, decoder)
    description: str


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family to the registry (its name must be new, and equal to its config class's family)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    if family.config_class.family != family.name:
        raise ValueError(f"{family.config_class.__name__}.family is {family.config_class.family!r}, not {family.name!r}")
    FAMILIES[family.name] = family
    return family


def list_families() -> list[str]:
    """Registered family names."""
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    """The registered family of this name, or ConfigError listing the known ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model family {name!r}; known families: {', '.join(list_families())}") from None


def config_from_dict(data: dict[str, Any]) -> ArchitectureConfig:
    """A validated config of the family named in data["family"] (default "flex")."""
    if not isinstance(data, dict):
        raise ConfigError(f"a tokenizer config must be a JSON object, got {type(data).__name__}")
    return get_family(data.get("family", DEFAULT_FAMILY)).config_class.from_dict(data)


def config_from_json(text: str) -> ArchitectureConfig:
    """config_from_dict of JSON text."""
    return config_from_dict(parse_config_json(text))


def build_networks(config: ArchitectureConfig) -> tuple["nn.Module", "nn.Module"]:
    """The (encoder, decoder) of the config's family."""
    family = get_family(config.family)
    if not isinstance(config, family.config_class):
        raise ConfigError(f"a {type(config).__name__} is not a {family.name!r} config")
    return family.build(config.validate())


def _build_flex(config: TokenizerConfig) -> tuple["nn.Module", "nn.Module"]:
    from .decoder import Decoder
    from .encoder import Encoder

    return Encoder(config), Decoder(config)


def _build_ibq(config: IBQConfig) -> tuple["nn.Module", "nn.Module"]:
    from .ibq_networks import IBQDecoder, IBQEncoder

    return (
        IBQEncoder(
            in_channels=config.in_channels,
            ch=config.ch,
            ch_mult=config.ch_mult,
            num_res_blocks=config.num_res_blocks,
            attention=config.attention_levels()[0],
            z_channels=config.z_channels,
            embed_dim=config.embedding_dim,
            dropout=config.dropout,
            resamp_with_conv=config.resamp_with_conv,
        ),
        IBQDecoder(
            out_channels=config.in_channels,
            ch=config.ch,
            ch_mult=config.ch_mult,
            num_res_blocks=config.num_res_blocks,
            attention=config.attention_levels()[1],
            z_channels=config.z_channels,
            embed_dim=config.embedding_dim,
            dropout=config.dropout,
            resamp_with_conv=config.resamp_with_conv,
        ),
    )


register_family(Family("flex", TokenizerConfig, _build_flex, "flex_gen GSQ-GAN (GSQ / VQ tokenizers)"))
register_family(Family("ibq", IBQConfig, _build_ibq, "SEED-Voken IBQ (taming VQGAN encoder/decoder)"))
