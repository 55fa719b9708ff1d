"""Building blocks of the `ibq` family (the taming-transformers VQGAN that SEED-Voken's IBQ uses).

Attribute names (norm1, conv1, nin_shortcut, q, k, v, proj_out, ...) are upstream's, so upstream
state-dict keys load without renaming. Every GroupNorm has 32 groups and eps 1e-6, as upstream's
`Normalize`. Weights keep PyTorch's default initialisation, as upstream does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GROUP_NORM_GROUPS

NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    """Upstream's Normalize: GroupNorm(32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


class ResidualBlock(nn.Module):
    """norm-SiLU-conv3x3 twice (dropout before the second conv), plus a 1x1 projection when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # Upstream names the projection nin_shortcut ("network in network": a 1x1 conv).
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions (1x1 q, k, v and output convs), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, HW, C]; softmax(q k^T / sqrt(C)) v, the scale SDPA applies by default.
        query, key, value = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Halve height and width: zero-pad right and bottom by one, then a stride-2 3x3 conv; or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour interpolation, then a 3x3 conv when with_conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)
