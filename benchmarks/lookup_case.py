"""What one quantizer-lookup measurement is (no torch here, so option parsing stays instant)."""

from __future__ import annotations

from dataclasses import dataclass

METHODS: tuple[str, ...] = ("eager", "blocked", "full", "onnx", "onnx_dense")
GIB = 1024**3


@dataclass(frozen=True)
class LookupCase:
    """One point of the sweep: codebook size, grouping, batch of latents and how to run it."""

    num_embed: int
    num_group: int
    group_dim: int
    batch: int
    # "gsq": l2-normalised groups, nearest code (GSQ); "ibq": argmax of the raw dot product z . c
    # over the unnormalised codebook (SEED-Voken's IBQ), codebook and latent ~ N(0, 1).
    quantizer: str = "gsq"
    image_size: int = 256
    downsample: int = 16
    method: str = "eager"
    threads: int = 2
    repeats: int = 5
    seed: int = 0
    max_matrix_gib: float = 6.0  # refuse methods whose score matrix would be larger than this
    tokens_path: str | None = None  # where to save the tokens (.npy)

    @property
    def token_grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_vectors(self) -> int:
        """N: latent groups looked up per call (batch * h * w * G)."""
        return self.batch * self.token_grid**2 * self.num_group
