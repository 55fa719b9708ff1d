"""Entry points: load a trained tokenizer by path or name, or build an untrained one."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import tokenizer_from_file
from .config import ArchitectureConfig
from .errors import CheckpointError
from .model import GSQTokenizer
from .registry import CHECKPOINTS, PRESETS, preset_config


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A checkpoint path: an existing file, or the packaged file of a named checkpoint."""
    text = str(path_or_name)
    if text in CHECKPOINTS and not Path(text).exists():
        path = CHECKPOINTS[text]
        if not path.is_file():
            raise CheckpointError(f"the named checkpoint {text!r} is not installed (expected {path})")
        return path
    path = Path(text)
    if not path.exists():
        hint = f"; {text!r} is a preset config (untrained): use build_tokenizer({text!r})" if text.lower() in PRESETS else ""
        raise CheckpointError(
            f"{text}: no such checkpoint file, and not a named checkpoint ({', '.join(CHECKPOINTS)}){hint}"
        )
    if path.is_dir():
        raise CheckpointError(f"{text}: is a directory, not a checkpoint file")
    return path


def load_tokenizer(
    path_or_name: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | ArchitectureConfig | None = None,
    ema: bool = True,
) -> GSQTokenizer:
    """Load a trained tokenizer (eval mode): a native .safetensors, a flex_gen .pt, a SEED-Voken IBQ
    Lightning .ckpt, or a name.

    config: for a Lightning .ckpt, its LightningCLI YAML (or a preset name); default: the .yaml beside
    it with the same stem. ema: the EMA weights (what SEED-Voken evaluates), or the raw ones (False).
    """
    return tokenizer_from_file(resolve_checkpoint(path_or_name), device=device, config=config, ema=ema)


def build_tokenizer(preset_or_config: str | ArchitectureConfig, seed: int | None = None) -> GSQTokenizer:
    """A freshly initialised (untrained) tokenizer from a preset name or a config."""
    config = preset_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if seed is not None:
        torch.manual_seed(seed)
    return GSQTokenizer(config)
