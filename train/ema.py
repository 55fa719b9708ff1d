"""Exponential moving average of the generator's weights (the model that gets shipped)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of a module's floating-point state: shadow = decay * shadow + (1 - decay) * weight.

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so the
    average is not dominated by the random initialisation in short runs.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().float(), 1.0 - decay)
            else:
                shadow.copy_(value)

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into module."""
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (CPU, contiguous)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore from a checkpoint."""
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for key, shadow in self.shadow.items():
            shadow.copy_(tensors[key])
        self.updates = updates
