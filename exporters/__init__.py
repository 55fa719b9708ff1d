"""exporters: turn a GSQ tokenizer into deployable graphs plus a manifest (see docs/onnx.md).

    from exporters.onnx import export_onnx
    manifest = export_onnx(load_tokenizer("model.pt"), "out/model-onnx")

or `gsq-export --ckpt model.pt --target onnx --out out/model-onnx`. Torch loads lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from gsq_core.errors import GSQError

__version__ = "0.1.0"

# target name -> "module:function"; a new target is one module plus one line here.
TARGETS: dict[str, str] = {
    "onnx": "exporters.onnx:export_onnx",
    "trt": "exporters.tensorrt:export_tensorrt",
    "openvino": "exporters.openvino:export_openvino",
    "triton": "exporters.triton:export_triton",
}
# Reduced-precision ONNX builds convert an fp32 export (fp16 / int8 QDQ); the other targets take precision.
ONNX_REDUCED_PRECISION = "exporters.onnx_precision:export_onnx_precision"

# Every graph an artifact directory can hold, in the order they are written.
GRAPH_NAMES: tuple[str, ...] = ("encoder", "quantizer", "decoder", "tokenize", "detokenize")


class ExportError(GSQError):
    """The export could not be done as asked (bad option, existing output, unsupported target)."""


class ExportValidationError(ExportError):
    """Exported graphs disagree with eager beyond tolerance; carries the written manifest."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def select_graphs(graphs: Iterable[str]) -> list[str]:
    """The requested graph names in canonical order; ExportError for unknown or no names."""
    names = list(dict.fromkeys(graphs))
    unknown = [name for name in names if name not in GRAPH_NAMES]
    if unknown or not names:
        raise ExportError(
            f"unknown graph(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(GRAPH_NAMES)}"
        )
    return [name for name in GRAPH_NAMES if name in names]


def export_function(target: str, precision: str = "fp32") -> Callable[..., dict]:
    """The export function for a target and precision (imported lazily); ExportError for unknown targets."""
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; available: {', '.join(TARGETS)}")
    location = ONNX_REDUCED_PRECISION if target == "onnx" and precision != "fp32" else TARGETS[target]
    module_name, function_name = location.split(":")
    return getattr(importlib.import_module(module_name), function_name)


__all__ = ["TARGETS", "export_function", "GRAPH_NAMES", "ExportError", "ExportValidationError", "__version__", "select_graphs"]
