"""gsq_core: GSQ and IBQ image tokenizers in PyTorch (eager reference), checkpoints and image helpers.

Model families (gsq_core.families): "flex" (flex_gen's GSQ-GAN) and "ibq" (SEED-Voken's IBQ).

Public API:
    from gsq_core import load_tokenizer
    tok = load_tokenizer("model.safetensors" | "flex_gen.pt" | "default")
    latent = tok.encode_latent(images)   # [B, D, h, w]
    codes = tok.encode(images)           # int64 [B, h, w, G]
    images = tok.decode(codes)           # [B, 3, H, W]
    tok.save("out.safetensors")

Torch is imported lazily, so `gsq_core.images` and `gsq_core.errors` work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError, GSQError, InputError

__version__ = "0.1.0"

_LAZY = {
    "TokenizerConfig": ".config",
    "QuantizerConfig": ".config",
    "IBQConfig": ".ibq_config",
    "list_families": ".families",
    "config_from_dict": ".families",
    "GSQTokenizer": ".model",
    "load_tokenizer": ".api",
    "build_tokenizer": ".api",
    "list_presets": ".registry",
    "preset_config": ".registry",
}

__all__ = ["CheckpointError", "ConfigError", "GSQError", "InputError", "__version__", *_LAZY]

if TYPE_CHECKING:
    from .api import build_tokenizer, load_tokenizer
    from .config import QuantizerConfig, TokenizerConfig
    from .families import config_from_dict, list_families
    from .ibq_config import IBQConfig
    from .model import GSQTokenizer
    from .registry import list_presets, preset_config


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'gsq_core' has no attribute {name!r}")
