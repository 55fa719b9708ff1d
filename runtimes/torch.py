"""The eager PyTorch reference behind the runtime interface: a checkpoint, no export needed.

CLI: `python -m runtimes.torch encode|decode --model CKPT ...` (see runtimes.cli).
The only runtime that needs torch (`pip install 'gsq-deploy[torch]'`); it is imported when a
runtime is opened, so without it this module still loads and answers in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from gsq_core.budgets import Direction, batch_limit, check_work
from gsq_core.errors import InputError
from gsq_core.extras import MissingPackageError, require_torch

from .artifacts import BackendUnavailableError
from .base import TokenizerRuntime, check_codes, check_images
from .info import ModelInfo, checkpoint_model_info


class TorchRuntime(TokenizerRuntime):
    """GSQTokenizer in fp32 eager mode on a torch device (TF32 off on CUDA: the reference numerics)."""

    backend = "torch"
    options: ClassVar[tuple[str, ...]] = ("device", "config", "ema")
    torch_threads = True  # its CPU threads are the process's torch intra-op threads

    @classmethod
    def runs_on_gpu(cls, options: Mapping[str, Any]) -> bool:
        return str(options.get("device") or "cpu").lower().startswith("cuda")

    @classmethod
    def describe_files(cls, model: str | Path, options: Mapping[str, Any]) -> ModelInfo:
        """The checkpoint loaded on the CPU (its config and weights; nothing is run)."""
        from gsq_core.api import load_tokenizer, resolve_checkpoint

        _require_torch()
        checkpoint = resolve_checkpoint(model)
        config, ema = options.get("config"), bool(options.get("ema", True))
        tokenizer = load_tokenizer(checkpoint, config=config, ema=ema)
        device = str(options.get("device") or "cpu")
        return checkpoint_model_info(cls.backend, str(model), checkpoint, tokenizer, device, config, ema)

    def __init__(self, checkpoint: str | Path, device: str = "cpu", config: str | Path | None = None, ema: bool = True):
        """config / ema: an IBQ Lightning checkpoint's YAML and weights choice (gsq_core.load_tokenizer)."""
        torch = _require_torch()
        from gsq_core.api import load_tokenizer, resolve_checkpoint

        self._torch = torch
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise InputError(f"device {device!r} is not a torch device name (cpu, cuda, cuda:0, ...)") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r}: this torch build has no usable CUDA; use --device cpu")
        self.checkpoint = str(checkpoint)
        self.config, self.ema = config, ema
        self.model = load_tokenizer(checkpoint, device=self.device, config=config, ema=ema).eval()
        self.token_layout = self.model.quantizer.token_layout
        self._info: ModelInfo | None = None  # built on first use: the checksum reads the whole file
        self._checkpoint_path = resolve_checkpoint(checkpoint)

    def encode(self, images: np.ndarray) -> np.ndarray:
        with self._reference_numerics():
            return self.model.encode(self._images(images)).cpu().numpy()

    def encode_latent(self, images: np.ndarray) -> np.ndarray:
        with self._reference_numerics():
            return self.model.encode_latent(self._images(images)).float().cpu().numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        model = self.model
        codes = check_codes(codes, model.num_embed, model.num_group, self.token_layout, model.min_token_positions)
        with self._reference_numerics():
            return model.decode(self._torch.from_numpy(codes).to(self.device)).float().cpu().numpy()

    def work_limit(self, height: int, width: int, direction: Direction) -> int:
        check_work(self.model.config, height, width, direction)
        return batch_limit(self.model.config, height, width, direction)

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            self._info = checkpoint_model_info(
                self.backend, self.checkpoint, self._checkpoint_path, self.model, str(self.device), self.config, self.ema
            )
        return self._info

    def _reference_numerics(self) -> Any:
        """no_grad and plain fp32 (no autocast, no TF32) around a call."""
        import contextlib

        from gsq_core.numerics import plain_fp32

        stack = contextlib.ExitStack()
        stack.enter_context(self._torch.no_grad())
        stack.enter_context(plain_fp32(self.device.type))
        return stack

    def _images(self, images: np.ndarray) -> Any:
        pixels = check_images(images, self.model.downsample_factor, self.model.config.input_channels)
        return self._torch.from_numpy(pixels).to(self.device)


def _require_torch() -> Any:
    """The torch module, or BackendUnavailableError naming the extra to install."""
    try:
        return require_torch("the torch runtime")
    except MissingPackageError as error:
        raise BackendUnavailableError(str(error)) from None


MODEL_HELP = "Checkpoint: flex_gen .pt, IBQ Lightning .ckpt, native .safetensors, or a named checkpoint."


def cli_options() -> list[Callable]:
    """This backend's own options, shared by `python -m runtimes.torch` and `gsq-tokenize --backend torch`."""
    import click

    from gsq_core.checkpoint_options import config_option, ema_option

    return [
        click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda:0."),
        config_option,
        ema_option,
    ]


def main() -> None:
    """`python -m runtimes.torch encode|decode ...`."""
    from .cli import run_cli

    run_cli("torch", model_help=MODEL_HELP, options=cli_options())


if __name__ == "__main__":
    main()
