"""Building blocks of the GSQ-GAN encoder and decoder.

Module layouts (the indices inside `net`, the names `skip`, `conv`, `qkv_conv`, ...) follow the
upstream flex_gen implementation so that its state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GROUP_NORM_GROUPS

# Upstream initialisation constants, kept so freshly built models train like upstream ones:
# SILU_GAIN ~ 1 / std(SiLU(z)) for z ~ N(0, 1): keeps activations at unit scale after a SiLU.
SILU_GAIN = 1.6761
# RESIDUAL_BRANCH_SCALE = 1 / sqrt(2): the residual sum of two unit-variance branches stays unit-variance.
RESIDUAL_BRANCH_SCALE = 0.70711


def _kaiming_linear_(weight: torch.Tensor, gain: float = 1.0) -> None:
    nn.init.kaiming_normal_(weight, nonlinearity="linear")
    if gain != 1.0:
        with torch.no_grad():
            weight.mul_(gain)


class ResNetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, plus a 1x1 projection on the skip path when channels change."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        activation = nn.SiLU()
        padding = kernel_size // 2
        self.net = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, in_channels),
            activation,
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
            activation,
            nn.Dropout2d(p=dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size, padding=padding),
        )
        if in_channels != out_channels:
            self.skip: nn.Module = nn.Conv2d(in_channels, out_channels, 1)
            _kaiming_linear_(self.skip.weight)
        else:
            self.skip = nn.Identity()
        _kaiming_linear_(self.net[2].weight, SILU_GAIN)
        _kaiming_linear_(self.net[6].weight, SILU_GAIN * RESIDUAL_BRANCH_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.skip(x)


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        _kaiming_linear_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour interpolation, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        _kaiming_linear_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def depth_to_space(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Rearrange [B, C*s*s, H, W] into [B, C, H*s, W*s] in DCR order (as ONNX DepthToSpace mode='DCR')."""
    batch, channels, height, width = x.shape
    out_channels = channels // (block_size * block_size)
    x = x.reshape(batch, block_size, block_size, out_channels, height, width)
    x = x.permute(0, 3, 4, 1, 5, 2)
    return x.reshape(batch, out_channels, height * block_size, width * block_size)


class DepthToSpaceUpsample(nn.Module):
    """Learnable upsampling: a 3x3 convolution to 4x the channels, then depth-to-space by 2."""

    block_size = 2

    def __init__(self, channels: int):
        super().__init__()
        # Upstream leaves this convolution at PyTorch's default initialisation.
        self.conv = nn.Conv2d(channels, self.block_size * self.block_size * channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv(x), self.block_size)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6, affine=True)
        self.qkv_conv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_conv = nn.Conv2d(channels, channels, kernel_size=1)
        _kaiming_linear_(self.qkv_conv.weight)
        _kaiming_linear_(self.proj_conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv_conv(self.norm(x))
        qkv = qkv.permute(0, 2, 3, 1).reshape(batch, height * width, 3 * channels)
        query, key, value = torch.split(qkv, channels, dim=2)
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return x + self.proj_conv(attended)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the quantized latent's per-channel statistics.

    scale = Linear(std over positions of the latent), shift = Linear(mean over positions).
    The variance is the unbiased one (torch.var's default), as upstream computes it; a 1x1
    token grid therefore has no defined scale.
    """

    def __init__(self, cond_channels: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gn = nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(cond_channels, channels)
        self.beta = nn.Linear(cond_channels, channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        flat = condition.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt()).view(batch, channels, 1, 1)
        shift = self.beta(flat.mean(dim=-1)).view(batch, channels, 1, 1)
        return scale * self.gn(x) + shift
