"""Loss terms of the GSQ-GAN objective (reconstruction, adversarial) and their switches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossConfig


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Weighted L1 or L2 pixel loss, plus the optional extra L2 term."""
    reconstruction = reconstruction.float()
    images = images.float()
    if config.reconstruction == "l1":
        loss = F.l1_loss(reconstruction, images)
    else:
        loss = F.mse_loss(reconstruction, images)
    loss = config.reconstruction_weight * loss
    if config.l2_weight > 0:
        loss = loss + config.l2_weight * F.mse_loss(reconstruction, images)
    return loss


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator side: hinge -> -E[D(fake)]; non-saturating -> softplus(-D(fake))."""
    fake_logits = fake_logits.float()
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator side: hinge or non-saturating (logistic) loss, averaged over real and fake."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def adversarial_active(step: int, config: LossConfig) -> bool:
    """Whether the discriminator trains and feeds the generator at this step."""
    return config.adversarial_weight > 0 and step >= config.disc_start
