"""Validation: PSNR, SSIM, codebook usage and perplexity of a model on fixed images, and a PNG grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from gsq_core.comparator import ssim
from gsq_core.fidelity import codebook_perplexity, codebook_usage, psnr
from gsq_core.images import uint8_to_float, write_image
from gsq_core.model import GSQTokenizer
from gsq_core.prepare import adm_center_crop

from .data import decode_rgb


def load_validation_images(paths: list[Path], size: int) -> tuple[torch.Tensor, list[str]]:
    """ADM centre crops (gsq-tokenize's, gsq_core.prepare) [N, 3, size, size] of the readable images among
    paths, in [-1, 1], and their names."""
    crops, names = [], []
    for path in paths:
        try:
            crops.append(torch.from_numpy(uint8_to_float(adm_center_crop(decode_rgb(path), size))))
            names.append(str(path))
        except (OSError, ValueError, SyntaxError) as error:
            warnings.warn(f"skipping unreadable validation image {path}: {error}")
    if not crops:
        return torch.empty(0, 3, size, size), []
    return torch.stack(crops), names


@torch.no_grad()
def evaluate(model: GSQTokenizer, images: torch.Tensor, batch_size: int = 4) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of encode -> decode on images (mean over images), and the clamped reconstructions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    reconstructions, codes = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        batch_codes = model.encode(batch)
        reconstructions.append(model.decode(batch_codes).float().clamp(-1, 1).cpu())
        codes.append(batch_codes.cpu())
    model.train(was_training)
    recon = torch.cat(reconstructions)
    all_codes = torch.cat([c.reshape(-1) for c in codes]).numpy()
    reference, test = images.numpy(), recon.numpy()
    metrics = {
        "psnr": float(np.mean([psnr(r, t) for r, t in zip(reference, test)])),
        "ssim": float(np.mean([ssim(r, t) for r, t in zip(reference, test)])),
        "codebook_usage": codebook_usage(all_codes, model.num_embed),
        "perplexity": codebook_perplexity(all_codes, model.num_embed),
    }
    return metrics, recon


def save_grid(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor, count: int) -> Path:
    """PNG with originals in the top row and their reconstructions below, written atomically."""
    count = min(count, originals.shape[0])
    top = torch.cat(list(originals[:count]), dim=2)
    bottom = torch.cat(list(reconstructions[:count]), dim=2)
    return write_image(path, torch.cat([top, bottom], dim=1).numpy(), overwrite=True)
