"""exporters: turn a GSQ tokenizer into deployable graphs plus a manifest (see docs/onnx.md).

    from gsq_deploy.exporters.build import ExportOptions, export
    manifest = export(load_tokenizer("model.pt"), "out/model-onnx", "onnx", ExportOptions())  # fp32

or `gsq-export --ckpt model.pt --target onnx --out out/model-onnx`. Torch loads lazily: the target
modules import without it, so `gsq-export --help` works on the base install.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import Field, field, fields
from typing import Any

from gsq_core.errors import GSQError

__version__ = "0.1.0"

# target name -> "module:TARGET" (an exporters.build.Target declared in that module); a new target
# is one module plus one line here.
TARGETS: dict[str, str] = {
    "onnx": "gsq_deploy.exporters.onnx:TARGET",
    "trt": "gsq_deploy.exporters.tensorrt:TARGET",
    "openvino": "gsq_deploy.exporters.openvino:TARGET",
    "triton": "gsq_deploy.exporters.triton:TARGET",
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


def flag(default: Any, name: str, help: str, type: Any = None) -> Any:  # noqa: A002 - click's words
    """A dataclass field that gsq-export offers as the flag `name` (a target's option, a threshold
    of exporters.validation.Tolerances).

    type: None (text), "path", "float", ("int_range", minimum), ("float_range", (minimum, maximum))
    or ("choice", values), turned into click types by exporters.target_options; the flag's value is
    None when not given, the field's default then applies.
    """
    return field(default=default, metadata={"flag": name, "help": help, "type": type})


def flag_fields(kind: type) -> list[Field]:
    """The fields of a dataclass that are gsq-export flags, in declaration order."""
    return [item for item in fields(kind) if "flag" in item.metadata]


__all__ = [
    "TARGETS",
    "GRAPH_NAMES",
    "ExportError",
    "ExportValidationError",
    "__version__",
    "select_graphs",
    "flag",
    "flag_fields",
]
