"""gsq-export options of the precision / TensorRT / OpenVINO / Triton targets, kept apart from the CLI.

`click_options` adds the flags to the command; `export_options` turns their values into the keyword
arguments of the chosen target's export function (and checks, before any work, that the target
can run here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from . import ExportError
from .validation import TOLERANCES, Tolerances

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TARGET_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
    "trt": ("fp32", "fp16", "bf16", "int8"),
    "triton": ("fp32", "fp16", "bf16", "int8"),
}
_OPTIONS: list[Callable] = [
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="Numeric precision; the quantizer lookup stays fp32 in all of them.",
    ),
    click.option(
        "--min-token-agreement",
        type=click.FloatRange(0, 1),
        default=None,
        help="Reduced precisions: warn below this share of tokens identical to eager.",
    ),
    click.option(
        "--max-latent-error",
        type=click.FloatRange(min=0),
        default=None,
        help="Reduced precisions: warn above this latent error (relative to the latent's magnitude).",
    ),
    click.option(
        "--min-recon-psnr",
        type=float,
        default=None,
        help="Reduced precisions: warn below this reconstruction PSNR against eager (dB).",
    ),
    click.option("--min-shape", default=None, help="trt: smallest BxHxW of the optimization profile."),
    click.option("--opt-shape", default=None, help="trt: BxHxW the engines are tuned for."),
    click.option("--max-shape", default=None, help="trt: largest BxHxW of the optimization profile."),
    click.option(
        "--workspace-mb",
        type=click.IntRange(min=16),
        default=4096,
        show_default=True,
        help="trt: builder workspace limit (MiB).",
    ),
    click.option(
        "--timing-cache",
        type=click.Path(path_type=Path),
        default=None,
        help="trt: timing cache file, read if present and updated.",
    ),
    click.option(
        "--triton-backend",
        type=click.Choice(("onnxruntime", "tensorrt")),
        default="onnxruntime",
        show_default=True,
        help="triton: what serves the models.",
    ),
    click.option(
        "--triton-max-batch",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="triton: max_batch_size of the dynamic batcher.",
    ),
    click.option(
        "--triton-instance",
        type=click.Choice(("cpu", "gpu")),
        default=None,
        help="triton: instance kind (default: Triton's choice).",
    ),
]
TRT_ONLY = ("min_shape", "opt_shape", "max_shape", "timing_cache")
TRITON_ONLY = ("triton_instance",)


def click_options(command: Callable) -> Callable:
    """Decorate the gsq-export command with the flags of this module."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def export_options(target: str, values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the target's export function; {} for a plain fp32 ONNX export.

    Everything that can be refused without the checkpoint is refused here, before the slow part:
    precisions a target has no build for, options of another target, missing optional packages.
    """
    precision = values["precision"]
    uses_tensorrt = target == "trt" or (target == "triton" and values["triton_backend"] == "tensorrt")
    builds_from_onnx = "onnx" if target == "triton" and not uses_tensorrt else target
    allowed = TARGET_PRECISIONS[builds_from_onnx] if builds_from_onnx in TARGET_PRECISIONS else ("fp32",)
    if precision not in allowed:
        backend = " with --triton-backend onnxruntime" if target == "triton" else ""
        raise ExportError(
            f"--precision {precision} is not available for --target {target}{backend} (choose {', '.join(allowed)})"
        )
    given = [name for name in TRT_ONLY if values.get(name) is not None]
    if given and not uses_tensorrt:
        raise ExportError(f"--{given[0].replace('_', '-')} is a TensorRT option; use it with --target trt")
    if values.get("triton_instance") and target != "triton":
        raise ExportError("--triton-instance is a Triton option; use it with --target triton")
    _require_packages(target, precision, uses_tensorrt)
    thresholds = _tolerances(precision, values)
    if target == "onnx":
        return {} if precision == "fp32" else {"precision": precision, "tolerances": thresholds}
    options: dict[str, Any] = {"precision": precision, "tolerances": thresholds}
    if uses_tensorrt:
        options.update({name: values[name] for name in TRT_ONLY})
        options["workspace_mb"] = values["workspace_mb"]
    if target == "triton":
        options.update(
            triton_backend=values["triton_backend"],
            max_batch=values["triton_max_batch"],
            instance_kind=values["triton_instance"],
        )
    return options


def _require_packages(target: str, precision: str, uses_tensorrt: bool) -> None:
    """ExportError in one line when an optional package (or the GPU) the build needs is missing."""
    import importlib.util

    if uses_tensorrt:
        from .tensorrt import require_tensorrt

        require_tensorrt("--target trt" if target == "trt" else "--triton-backend tensorrt")
    if target == "openvino":
        from .openvino import require_openvino

        require_openvino()
    if precision == "fp16" and not uses_tensorrt and importlib.util.find_spec("onnxconverter_common") is None:
        raise ExportError(
            "--precision fp16 needs onnxconverter-common: pip install 'gsq-deploy[fp16]' (or onnxconverter-common)"
        )


def _tolerances(precision: str, values: dict[str, Any]) -> Tolerances | None:
    """The precision's default tolerances with the flags' overrides; None when no flag is given."""
    overrides = {
        "min_token_agreement": values.get("min_token_agreement"),
        "max_latent_relative_error": values.get("max_latent_error"),
        "min_recon_psnr_db": values.get("min_recon_psnr"),
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not overrides:
        return None
    if precision == "fp32":
        raise ExportError(
            "--min-token-agreement / --max-latent-error / --min-recon-psnr set warning thresholds of "
            "reduced precisions; fp32 is held to fixed tolerances"
        )
    from dataclasses import replace

    return replace(TOLERANCES[precision], **overrides)
