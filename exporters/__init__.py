"""exporters: turn a GSQ tokenizer into deployable graphs plus a manifest (see docs/onnx.md).

    from exporters.build import ExportOptions, export
    manifest = export(load_tokenizer("model.pt"), "out/model-onnx", "onnx", ExportOptions(precision="fp32"))

or `gsq-export --ckpt model.pt --target onnx --out out/model-onnx`. Torch loads lazily: the target
modules import without it, so `gsq-export --help` works on the base install.
"""

from __future__ import annotations

from collections.abc import Iterable

from gsq_core.errors import GSQError

__version__ = "0.1.0"

# target name -> "module:TARGET" (an exporters.build.Target declared in that module); a new target
# is one module plus one line here.
TARGETS: dict[str, str] = {
    "onnx": "exporters.onnx:TARGET",
    "trt": "exporters.tensorrt:TARGET",
    "openvino": "exporters.openvino:TARGET",
    "triton": "exporters.triton:TARGET",
}

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


__all__ = ["TARGETS", "GRAPH_NAMES", "ExportError", "ExportValidationError", "__version__", "select_graphs"]
