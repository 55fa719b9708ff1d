"""The convolutional encoder: image [B,3,H,W] -> latent [B,D,H/f,W/f]."""

from __future__ import annotations

import torch
from torch import nn

from .config import GROUP_NORM_GROUPS, TokenizerConfig
from .layers import SILU_GAIN, AttentionBlock, Downsample, ResNetBlock, _kaiming_linear_


class Encoder(nn.Module):
    """Stem conv, residual levels with stride-2 downsampling, middle blocks, norm-SiLU-1x1 head."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        kernel = config.residual_conv_kernel_size
        dropout = config.dropout_probability
        hidden = config.hidden_channels
        self.conv_in = nn.Conv2d(
            config.input_channels, hidden, config.input_conv_kernel_size, padding=config.input_conv_kernel_size // 2
        )
        _kaiming_linear_(self.conv_in.weight)

        blocks: list[nn.Module] = []
        in_channels = out_channels = hidden
        factor = 1
        levels = len(config.channel_multipliers)
        for level, multiplier in enumerate(config.channel_multipliers):
            out_channels = hidden * multiplier
            if in_channels != out_channels:
                blocks.append(ResNetBlock(in_channels, out_channels, kernel, dropout))
            for _ in range(config.encoder_layer_configs[level]):
                blocks.append(ResNetBlock(out_channels, out_channels, kernel, dropout))
                if factor in config.attention_resolutions:
                    blocks.append(AttentionBlock(out_channels))
            if level < levels - 1:
                blocks.append(Downsample(out_channels))
                factor *= 2
            in_channels = out_channels

        middle = config.encoder_layer_configs[-1]
        for index in range(middle):
            blocks.append(ResNetBlock(out_channels, out_channels, kernel, dropout))
            if config.mid_block_attn and index < middle - 1:
                blocks.append(AttentionBlock(out_channels))
        self.blocks = nn.ModuleList(blocks)

        self.final_layers = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, config.embedding_dim, 1),
        )
        _kaiming_linear_(self.final_layers[-1].weight, SILU_GAIN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.final_layers(h)
