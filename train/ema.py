"""Exponential moving average of the generator's weights (the model that gets shipped), as a
torch.optim.swa_utils.AveragedModel with an EMA multi_avg_fn."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_ramp_avg_fn(decay: float):
    """AveragedModel multi_avg_fn: average = d * average + (1 - d) * weight with d = min(decay, (1 + n) / (10 + n))
    at update n, so short runs are not dominated by the random initialisation. Integer buffers are copied."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # AveragedModel groups tensors by dtype
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, weight)

    return update


def make_ema(module: nn.Module, decay: float, device: torch.device | None = None) -> AveragedModel:
    """EMA of module's parameters and buffers, starting from its current weights.

    AveragedModel copies the weights at its first update_parameters call (n_averaged 0 -> 1); calling it
    once here makes that copy the initial weights, so update n of training is averaged with n = n_averaged.
    Its state_dict (weights and n_averaged) is what the run checkpoints."""
    ema = AveragedModel(module, device=device, multi_avg_fn=ema_ramp_avg_fn(decay), use_buffers=True)
    ema.update_parameters(module)
    ema.requires_grad_(False)
    return ema
