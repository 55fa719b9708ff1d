"""The one interface every runtime implements (numpy in, numpy out; no torch here)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class TokenizerRuntime(ABC):
    """A loaded tokenizer on some backend.

    images: float32 [B, 3, H, W] in [-1, 1] (uint8 / 127.5 - 1), H and W multiples of downsample_factor.
    codes:  int64 [B, h, w, G] ([B, h, w] when token_layout is "BHW", plain VQ).
    """

    backend: str = ""

    @abstractmethod
    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images -> token ids."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Token ids -> images float32 [B, 3, H, W] (unclipped)."""

    def encode_latent(self, images: np.ndarray) -> np.ndarray:
        """Images -> latent before quantization [B, D, h, w] (for fidelity reports), where available."""
        raise NotImplementedError(f"the {self.backend} runtime does not expose the latent")

    @property
    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Facts for reports: backend, precision, device, num_embed, num_group, downsample_factor, token_layout."""

    def close(self) -> None:
        """Release sessions / device memory (optional)."""
