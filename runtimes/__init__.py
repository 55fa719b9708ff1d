"""Runtimes: run exported tokenizer artifacts behind one interface (see runtimes.base).

Backends are imported lazily by name, so importing this package pulls in neither torch nor any
inference engine.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import TokenizerRuntime

# backend name -> "module:class"; a new backend is one new module plus one line here.
BACKENDS: dict[str, str] = {
    "torch": "runtimes.torch:TorchRuntime",
    "onnx": "runtimes.onnx:OnnxRuntime",
    # issue 4 targets
    "openvino": "runtimes.openvino:OpenVinoRuntime",
    "trt": "runtimes.trt:TrtRuntime",
}


def load_runtime(backend: str, model: str | Path, **options: Any) -> TokenizerRuntime:
    """Open `model` (a checkpoint for 'torch', an artifact directory otherwise) with a backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    runtime_class = getattr(importlib.import_module(module_name), class_name)
    return runtime_class(model, **options)


__all__ = ["BACKENDS", "TokenizerRuntime", "load_runtime"]
