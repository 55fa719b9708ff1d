"""Named presets (the GSQ paper's and the published IBQ configurations) and named checkpoints shipped with the package."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import ArchitectureConfig, QuantizerConfig, TokenizerConfig
from .errors import ConfigError
from .ibq_config import IBQConfig, ibq_quantizer

ASSETS = Path(__file__).parent / "assets"
# Checkpoints that ship inside the package, by name.
CHECKPOINTS: dict[str, Path] = {"default": ASSETS / "default.safetensors"}

# Encoder/decoder layouts by spatial downsampling factor. The paper's recipe: hidden 128,
# two residual blocks per level, adaptive group norm and depth-to-space upsampling in the decoder.
_MULTIPLIERS = {8: (1, 2, 2, 4), 16: (1, 1, 2, 2, 4), 32: (1, 1, 2, 2, 4, 4)}


def paper_config(factor: int, latent_dim: int, groups: int, vocab: int, hidden_channels: int = 128) -> TokenizerConfig:
    """A GSQ-GAN configuration as in the paper: f{factor}, D={latent_dim}, G={groups}, V={vocab}."""
    if factor not in _MULTIPLIERS:
        raise ConfigError(f"downsampling factor {factor} has no preset layout; use one of {sorted(_MULTIPLIERS)}")
    multipliers = _MULTIPLIERS[factor]
    layers = (2,) * (len(multipliers) + 1)
    return TokenizerConfig(
        hidden_channels=hidden_channels,
        channel_multipliers=multipliers,
        encoder_layer_configs=layers,
        decoder_layer_configs=layers,
        embedding_dim=latent_dim,
        use_adaptive_norm=True,
        use_learnable_up_down_sample=True,
        quantizer=QuantizerConfig(
            quantize_type="gsq", num_embed=vocab, embed_dim=latent_dim, num_group=groups, use_l2_norm=True
        ),
    ).validate()


def ibq_imagenet_config(vocab: int) -> IBQConfig:
    """SEED-Voken's published IBQ tokenizer (configs/IBQ/gpu/imagenet_ibqgan_{vocab}.yaml): f16, D=256.

    The four ImageNet 256 models (V = 1,024 / 8,192 / 16,384 / 262,144) and the two text-to-image
    pretraining ones (pretrain_ibqgan_{16384,262144}.yaml) share this ddconfig; training weights
    (beta 0.25, entropy loss 0.05 at temperature 0.01) are upstream's too.
    """
    return IBQConfig(
        ch=128,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=4,
        attn_resolutions=(16,),
        z_channels=256,
        resolution=256,
        in_channels=3,
        dropout=0.0,
        resamp_with_conv=True,
        quant_loss_weight=1.0,
        quantizer=ibq_quantizer(
            num_embed=vocab, embed_dim=256, commitment_loss_weight=0.25, entropy_loss_weight=0.05,
            entropy_temperature=0.01,
        ),
    ).validate()


# Published IBQ codebook sizes (TencentARC/IBQ-Tokenizer-*).
IBQ_VOCABS = (1024, 8192, 16384, 262144)


def _preset_table() -> dict[str, Callable[[], ArchitectureConfig]]:
    table: dict[str, Callable[[], ArchitectureConfig]] = {}
    # Group-scaling tables of the paper: (factor, D, V, groups).
    scaling = [
        (8, 64, 8192, (1, 2, 4, 16)),
        (16, 16, 262144, (1, 2, 4, 8, 16)),
        (32, 32, 262144, (1, 2, 4, 8, 16, 32)),
    ]
    for factor, dim, vocab, group_list in scaling:
        for groups in group_list:
            vocab_name = f"{vocab // 1024}k"
            name = f"gsq-f{factor}-d{dim}-g{groups}-v{vocab_name}"
            table[name] = lambda f=factor, d=dim, g=groups, v=vocab: paper_config(f, d, g, v)
    # Published single-group F8 checkpoints (GSQ-F8-D{8,16,32,64}-V{8k..512k}).
    for dim in (8, 16, 32, 64):
        for vocab in (8192, 16384, 65536, 262144, 524288):
            name = f"gsq-f8-d{dim}-v{vocab // 1024}k"
            table[name] = lambda d=dim, v=vocab: paper_config(8, d, 1, v)
    for vocab in IBQ_VOCABS:
        table[f"ibq-f16-d256-v{vocab // 1024}k"] = lambda v=vocab: ibq_imagenet_config(v)
    return table


PRESETS: dict[str, Callable[[], ArchitectureConfig]] = _preset_table()


def list_presets() -> list[str]:
    """Names accepted by preset_config / build_tokenizer."""
    return sorted(PRESETS)


def preset_config(name: str) -> ArchitectureConfig:
    """The configuration of a named preset."""
    try:
        return PRESETS[name.lower()]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}") from None
