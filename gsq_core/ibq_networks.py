"""Encoder and decoder of the `ibq` family: the taming VQGAN with IBQ's quant_conv / post_quant_conv.

IBQEncoder: images -> latent the quantizer reads (conv_in, levels, middle, norm, conv_out, quant_conv).
IBQDecoder: quantized latent -> images (post_quant_conv, conv_in, middle, levels, norm, conv_out).
Module names follow upstream (down.<level>.block.<i>, mid.attn_1, up.<level>.upsample, ...), so an
upstream state dict maps onto these modules with three renames (gsq_core.checkpoint_ibq).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ibq_layers import Downsample, ResidualBlock, SelfAttention, Upsample, group_norm


class Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention where the level has it,
    and an optional resampling step (`downsample` in the encoder, `upsample` in the decoder)."""

    def __init__(self, channels_in: int, channels_out: int, blocks: int, attention: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(blocks):
            self.block.append(ResidualBlock(channels_in, channels_out, dropout))
            channels_in = channels_out
            if attention:
                self.attn.append(SelfAttention(channels_out))

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[index](h)
        return h


class Middle(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResidualBlock(channels, channels, dropout)
        self.attn_1 = SelfAttention(channels)
        self.block_2 = ResidualBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class IBQEncoder(nn.Module):
    """images [B, in_channels, H, W] -> latent [B, embed_dim, H/f, W/f], f = 2 ** (len(ch_mult) - 1).

    attention[level]: whether that level's blocks are followed by self-attention.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attention: Sequence[bool],
        z_channels: int,
        embed_dim: int,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        levels = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels = ch
        for level in range(levels):
            stage = Level(channels, ch * ch_mult[level], num_res_blocks, attention[level], dropout)
            channels = ch * ch_mult[level]
            if level != levels - 1:
                stage.downsample = Downsample(channels, resamp_with_conv)
            self.down.append(stage)
        self.mid = Middle(channels, dropout)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(images)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class IBQDecoder(nn.Module):
    """quantized latent [B, embed_dim, h, w] -> images [B, out_channels, h*f, w*f] (unclipped)."""

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attention: Sequence[bool],
        z_channels: int,
        embed_dim: int,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        levels = len(ch_mult)
        channels = ch * ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, channels, 3, padding=1)
        self.mid = Middle(channels, dropout)
        stages: list[nn.Module] = [nn.Module()] * levels
        for level in reversed(range(levels)):
            stage = Level(channels, ch * ch_mult[level], num_res_blocks + 1, attention[level], dropout)
            channels = ch * ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(channels, resamp_with_conv)
            stages[level] = stage
        self.up = nn.ModuleList(stages)  # indexed by level (0 = full resolution), run from the last
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(latent)))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
