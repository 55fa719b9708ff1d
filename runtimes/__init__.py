"""Runtimes: run exported tokenizer artifacts behind one interface (see runtimes.base).

Backends are imported lazily by name, so importing this package pulls in neither torch nor any
inference engine. This package is the one place that knows the backends: their names
(`BACKENDS`, `check_backend`, `backend_choice`), what each needs (`runtime_class(name)`'s
declarations: options, GPU, threads) and what a model is on each (`describe`: a ModelInfo).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsq_core.errors import InputError

from .base import TokenizerRuntime
from .info import ModelInfo

if TYPE_CHECKING:
    import click

# backend name -> "module:class"; a new backend is one new module plus one line here.
BACKENDS: dict[str, str] = {
    "torch": "gsq_deploy.runtimes.torch:TorchRuntime",
    "onnx": "gsq_deploy.runtimes.onnx:OnnxRuntime",
    # issue 4 targets
    "openvino": "gsq_deploy.runtimes.openvino:OpenVinoRuntime",
    "trt": "gsq_deploy.runtimes.trt:TrtRuntime",
}


def check_backend(backend: str, option: str = "--backend") -> str:
    """The backend name, or InputError naming the known ones: the one check of a backend name."""
    if backend not in BACKENDS:
        raise InputError(f"{option} {backend!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return backend


def backend_choice() -> click.Choice:
    """The click type of a --backend option: a Choice of BACKENDS whose refusal is check_backend's
    InputError, so that every command reports a wrong name in one `error:` line."""
    import click

    class BackendChoice(click.Choice):
        def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
            return check_backend(str(value), param.opts[0] if param is not None and param.opts else "--backend")

    return BackendChoice(list(BACKENDS))


def runtime_class(backend: str) -> type[TokenizerRuntime]:
    """The runtime class of a backend (its module imported; no engine is loaded)."""
    module_name, class_name = BACKENDS[check_backend(backend)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_runtime(backend: str, model: str | Path, **options: Any) -> TokenizerRuntime:
    """Open `model` (a checkpoint for 'torch', an artifact directory otherwise) with a backend."""
    runtime = runtime_class(backend)
    runtime.check_options(options)
    return runtime(model, **options)


def command(backend: str | None = None) -> str:
    """The shell command of a backend's CLI by its installed name, which works wherever gsq-deploy is
    installed, editable or not (in a checkout's root `python -m runtimes.onnx` works too)."""
    return "python -m gsq_deploy.runtimes" + (f".{backend}" if backend else "")


def describe(backend: str, model: str | Path, **options: Any) -> ModelInfo:
    """The ModelInfo of `model` on a backend with these options, without running it on a GPU
    (TokenizerRuntime.describe)."""
    return runtime_class(backend).describe(model, **options)


__all__ = [
    "BACKENDS",
    "ModelInfo",
    "TokenizerRuntime",
    "backend_choice",
    "check_backend",
    "command",
    "describe",
    "load_runtime",
    "runtime_class",
]
