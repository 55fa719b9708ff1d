"""PatchGAN discriminator: a stack of strided 4x4 convolutions that scores overlapping patches."""

from __future__ import annotations

import torch
from torch import nn


def _groups(channels: int) -> int:
    return 32 if channels % 32 == 0 else 1


class PatchDiscriminator(nn.Module):
    """Image [B,3,H,W] -> patch logits [B,1,h,w] (real > 0, fake < 0).

    GroupNorm instead of BatchNorm, so that statistics do not depend on the per-process batch.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, layers + 1):
            next_width = channels * min(2**index, 8)
            stride = 2 if index < layers else 1
            modules += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(_groups(next_width), next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        modules.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
