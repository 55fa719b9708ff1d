"""The convolutional decoder: quantized latent [B,D,h,w] -> image [B,3,h*f,w*f]."""

from __future__ import annotations

import torch
from torch import nn

from .config import GROUP_NORM_GROUPS, TokenizerConfig
from .layers import (
    SILU_GAIN,
    AdaptiveGroupNorm,
    AttentionBlock,
    DepthToSpaceUpsample,
    ResNetBlock,
    Upsample,
    _kaiming_linear_,
)


class Decoder(nn.Module):
    """Stem conv, middle blocks, residual levels with 2x upsampling, norm-SiLU-conv head.

    With use_adaptive_norm, an AdaptiveGroupNorm conditioned on the decoder's input latent follows
    the middle blocks and every upsampling step.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        kernel = config.residual_conv_kernel_size
        dropout = config.dropout_probability
        hidden = config.hidden_channels
        multipliers = config.channel_multipliers
        channels = hidden * multipliers[-1]
        # Upstream sizes this stem with the residual kernel size, not the input one.
        self.conv_in = nn.Conv2d(config.embedding_dim, channels, kernel, padding=kernel // 2)
        _kaiming_linear_(self.conv_in.weight)

        blocks: list[nn.Module] = []
        middle = config.decoder_layer_configs[-1]
        for index in range(middle):
            blocks.append(ResNetBlock(channels, channels, kernel, dropout))
            if config.mid_block_attn and index < middle - 1:
                blocks.append(AttentionBlock(channels))
        if config.use_adaptive_norm:
            blocks.append(AdaptiveGroupNorm(config.embedding_dim, channels))

        level_blocks = config.decoder_layer_configs[:-1][::-1]
        in_channels = out_channels = channels
        factor = 2 ** (len(multipliers) - 1)
        for level, multiplier in enumerate(multipliers[::-1]):
            out_channels = hidden * multiplier
            if in_channels != out_channels:
                blocks.append(ResNetBlock(in_channels, out_channels, kernel, dropout))
            for _ in range(level_blocks[level]):
                blocks.append(ResNetBlock(out_channels, out_channels, kernel, dropout))
                if factor in config.attention_resolutions:
                    blocks.append(AttentionBlock(out_channels))
            if level < len(multipliers) - 1:
                if config.use_learnable_up_down_sample:
                    blocks.append(DepthToSpaceUpsample(out_channels))
                else:
                    blocks.append(Upsample(out_channels))
                if config.use_adaptive_norm:
                    blocks.append(AdaptiveGroupNorm(config.embedding_dim, out_channels))
                factor //= 2
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

        out_kernel = config.output_conv_kernel_size
        self.final_layers = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, config.input_channels, out_kernel, padding=out_kernel // 2),
        )
        _kaiming_linear_(self.final_layers[-1].weight, SILU_GAIN)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(latent)
        for block in self.blocks:
            h = block(h, latent) if isinstance(block, AdaptiveGroupNorm) else block(h)
        return self.final_layers(h)
