"""Optional packages: the base install (`pip install gsq-deploy`) is the torch-free runtime.

Commands that need more (PyTorch for the eager model and exports, matplotlib for plots, ...) ask
for it with `require(module, extra, what)`, which names the pip extra that installs it, so a user
gets one line (`error: gsq-export needs torch, which is not installed: pip install
'gsq-deploy[torch]'`) instead of a ModuleNotFoundError from deep inside an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import GSQError

# pip extra -> what it adds (pyproject.toml's [project.optional-dependencies] is the source of truth).
EXTRAS: dict[str, str] = {
    "torch": "the eager PyTorch model, checkpoints, gsq-export, export validation",
    "bench": "benchmarks/ (torch plus matplotlib for the plots)",
    "train": "train/ (torch, accelerate, pyyaml, tensorboard)",
    "openvino": "the OpenVINO target and runtime",
    "fp16": "fp16 ONNX builds (onnxconverter-common)",
    "gpu": "ONNX Runtime's CUDA / TensorRT providers (onnxruntime-gpu)",
    "trt": "TensorRT engines (tensorrt, polygraphy)",
    "dataset": "gsq-tokenize over whole datasets (Ray Data, pyarrow)",
    "dev": "everything the test suite needs",
}


class MissingPackageError(GSQError):
    """An optional package a command needs is not installed; the message names the extra."""


def install_hint(extra: str) -> str:
    """The pip command that installs an extra."""
    return f"pip install 'gsq-deploy[{extra}]'"


def missing_package_message(module: str, extra: str, what: str) -> str:
    """One line: what needs which package, and the extra that installs it."""
    return f"{what} needs {module}, which is not installed: {install_hint(extra)}"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingPackageError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(missing_package_message(module, extra, what)) from None


def require_torch(what: str) -> ModuleType:
    """torch, or MissingPackageError naming the `torch` extra."""
    return require("torch", "torch", what)
