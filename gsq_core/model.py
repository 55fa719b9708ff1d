"""GSQTokenizer: encoder -> quantizer -> decoder, the eager reference of this toolkit."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .budgets import Direction, batch_limit, check_work
from .config import ArchitectureConfig
from .errors import InputError
from .images import check_value_range
from .families import build_networks
from .quantizers import CodebookQuantizer, build_quantizer


@dataclass
class TokenizerOutput:
    """What one training forward pass produces."""

    reconstruction: torch.Tensor  # [B, 3, H, W]
    codes: torch.Tensor
    quantizer_loss: torch.Tensor
    latent: torch.Tensor  # encoder output before quantization


class GSQTokenizer(nn.Module):
    """Image tokenizer of any registered family (gsq_core.families). Images are float [B,3,H,W] in
    [-1, 1] (uint8 / 127.5 - 1).

    encoder: images -> latent the quantizer reads; quantizer: latent <-> token ids (its lookup facts
    live on it); decoder: quantized latent -> images. Nothing outside needs the family.
    """

    def __init__(self, config: ArchitectureConfig):
        super().__init__()
        self.config = config.validate()
        self.encoder, self.decoder = build_networks(config)
        self.quantizer: CodebookQuantizer = build_quantizer(config.quantizer)

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Image side / token grid side."""
        return self.config.downsample_factor

    @property
    def num_embed(self) -> int:
        """Codebook size V: token ids lie in [0, V)."""
        return self.quantizer.num_embed

    @property
    def num_group(self) -> int:
        """Tokens per spatial position G."""
        return self.quantizer.num_group

    @property
    def family(self) -> str:
        """The registered model family (gsq_core.families)."""
        return self.config.family

    @property
    def min_token_positions(self) -> int:
        """Fewest token positions (h * w) the decoder can decode (2 for flex with adaptive group norm)."""
        return self.config.min_token_positions

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an image of the given size."""
        f = self.downsample_factor
        return height // f, width // f

    def check_images(self, images: torch.Tensor, inference: bool = True) -> None:
        """Raise InputError unless images are a finite float batch [B, C, H, W] with H, W divisible by f.

        inference: also hold the range contract (values in [-1, 1], uint8 / 127.5 - 1, up to
        rounding) and the working-memory budget (gsq_core.budgets). Training passes False: its
        augmentations may step slightly outside [-1, 1], and its crop size is the run's own choice.
        """
        channels = self.config.input_channels
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != channels:
            raise InputError(f"images must have shape [B, {channels}, H, W], got {list(images.shape)}")
        if not images.dtype.is_floating_point:
            raise InputError(f"images must be floating point in [-1, 1] (uint8 / 127.5 - 1), got dtype {images.dtype}")
        height, width = images.shape[-2:]
        f = self.downsample_factor
        if height % f or width % f or height == 0 or width == 0:
            raise InputError(f"image size {height}x{width} is not a positive multiple of the downsampling factor {f}")
        if not inference:
            if not torch.isfinite(images).all():
                raise InputError("images contain NaN or infinite values")
            return
        if images.numel():
            low, high = (float(v) for v in torch.aminmax(images.detach()))  # one pass; NaN propagates
            check_value_range(low, high, lambda: bool(torch.isfinite(images).all()))
        check_work(self.config, int(height), int(width), "encode")

    def _chunks(self, batch: torch.Tensor, height: int, width: int, direction: Direction) -> list[torch.Tensor]:
        """The batch split into chunks whose work fits the memory budget (images never interact)."""
        size = batch_limit(self.config, height, width, direction)
        return list(batch.split(size)) if batch.shape[0] > size else [batch]

    # -- inference -----------------------------------------------------------------------------
    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output before quantization, [B, D, H/f, W/f]."""
        self.check_images(images)
        chunks = self._chunks(images, *images.shape[-2:], "encode")
        return torch.cat([self.encoder(chunk.to(self._dtype)) for chunk in chunks])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> int64 token ids [B, h, w, G] ([B, h, w] for plain VQ); deterministic."""
        self.check_images(images)
        chunks = self._chunks(images, *images.shape[-2:], "encode")
        return torch.cat([self.quantizer.codes(self.encoder(chunk.to(self._dtype))) for chunk in chunks])

    @torch.no_grad()
    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids -> quantized latent [B, D, h, w] (raw codebook rows)."""
        return self.quantizer.codes_to_latent(torch.as_tensor(codes, device=self.quantizer.codebook.weight.device))

    def decode_latent(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latent -> images [B, 3, H, W] (unclipped)."""
        return self.decoder(quantized.to(self._dtype))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids -> images [B, 3, H, W] (unclipped floats; clamp to [-1, 1] for display).

        Refused before any work: a grid this model cannot decode (fewer than min_token_positions
        tokens, e.g. 1x1 with adaptive group norm), or one whose image is over the memory budget."""
        codes = torch.as_tensor(codes, device=self.quantizer.codebook.weight.device)
        self.quantizer.check_codes(codes)
        height, width = int(codes.shape[1]), int(codes.shape[2])
        f = self.downsample_factor
        if height == 0 or width == 0:
            raise InputError(f"token grid {height}x{width} is empty")
        if height * width < self.min_token_positions:
            raise InputError(
                f"a {height}x{width} token grid cannot be decoded: this model needs at least "
                f"{self.min_token_positions} tokens (its adaptive group norm takes a variance over positions; "
                f"images of at least {f}x{2 * f} pixels)"
            )
        check_work(self.config, height * f, width * f, "decode")
        chunks = self._chunks(codes, height * f, width * f, "decode")
        return torch.cat([self.decode_latent(self.codes_to_latent(chunk)) for chunk in chunks])

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training pass: reconstruction with straight-through quantization and the quantizer loss."""
        self.check_images(images, inference=False)
        latent = self.encoder(images.to(self._dtype))
        quantized = self.quantizer(latent)
        reconstruction = self.decoder(quantized.quantized)
        return TokenizerOutput(reconstruction, quantized.codes, quantized.loss, latent)

    def reconstruction_loss(self, images: torch.Tensor, output: TokenizerOutput) -> torch.Tensor:
        """Mean squared error plus the weighted quantizer loss (the upstream generator objective)."""
        return F.mse_loss(output.reconstruction, images) + self.config.quantizer_loss_weight * output.quantizer_loss

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a native checkpoint (.safetensors with the config in its metadata), atomically."""
        from .checkpoint import save_native

        return save_native(self, path, overwrite=overwrite)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype


def expected_state_shapes(config: ArchitectureConfig, max_parameters: int | None = None) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes a config implies, from a model built on the meta device: nothing is
    allocated, however large the config claims the model is. With max_parameters (the number of
    tensors a checkpoint holds), a config that builds more parameters than that stops building at
    once with CheckpointError (a hostile config could otherwise ask for millions of layers)."""
    from .errors import CheckpointError

    builder = threading.get_ident()
    registered = 0

    def count(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        nonlocal registered
        if threading.get_ident() != builder or parameter is None:
            return
        registered += 1
        if max_parameters is not None and registered > max_parameters:
            raise CheckpointError(
                f"the config builds more than {max_parameters} weight tensors, more than the checkpoint holds; "
                "config and weights do not match"
            )

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        with torch.device("meta"):
            model = GSQTokenizer(config)
    finally:
        handle.remove()
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
