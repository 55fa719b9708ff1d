"""gsq-export's precision, threshold and per-target flags, kept apart from the rest of the CLI.

The common flags (--precision and the reduced precisions' warning thresholds) are listed here; every
other flag comes from the option dataclass a target module declares (exporters.tensorrt's
TensorRTOptions, exporters.triton's TritonOptions: each field made with exporters.build.flag), so
a new target's flags are declared where the target is. `export_options` turns the flag values into
the typed pieces of ExportOptions and refuses flags that belong to another target.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import click

from . import TARGETS, ExportError
from .build import option_fields
from .precision import PRECISIONS, PrecisionPlan

_COMMON: list[Callable] = [
    click.option(
        "--precision",
        default="fp32",
        show_default=True,
        help=(
            f"Numeric precision ({', '.join(PRECISIONS)}) of every graph, or one per part: "
            "encoder=fp32,decoder=int8 (a part not named is fp32). The quantizer lookup is fp32 in all of them."
        ),
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
    click.option(
        "--max-input-psnr-drop",
        type=click.FloatRange(min=0),
        default=None,
        help="Reduced precisions: warn when a decoder's PSNR against the input images is this far below eager's (dB).",
    ),
]


def target_option_types() -> list[type]:
    """Every target's option dataclasses, in TARGETS order (each once). Target modules import
    without torch, so `gsq-export --help` works on the base install."""
    kinds: list[type] = []
    for location in TARGETS.values():
        module_name, attribute = location.split(":")
        for kind in getattr(importlib.import_module(module_name), attribute).option_types:
            if kind not in kinds:
                kinds.append(kind)
    return kinds


def _parameter(flag_name: str) -> str:
    return flag_name.lstrip("-").replace("-", "_")


def _click_type(spec: Any) -> Any:
    if spec is None:
        return None
    if spec == "path":
        return click.Path(path_type=Path)
    kind, value = spec
    if kind == "int_range":
        return click.IntRange(min=value)
    if kind == "choice":
        return click.Choice(value)
    raise ValueError(f"unknown flag type {spec!r}")


def click_options(command: Callable) -> Callable:
    """Decorate the gsq-export command with the common flags and every target's own."""
    options = list(_COMMON)
    for kind in target_option_types():
        for item in option_fields(kind):
            options.append(
                click.option(
                    item.metadata["flag"],
                    _parameter(item.metadata["flag"]),
                    type=_click_type(item.metadata["type"]),
                    default=None,  # None: not given; the dataclass holds the default
                    help=item.metadata["help"],
                )
            )
    for option in reversed(options):
        command = option(command)
    return command


def export_options(target: str, values: dict[str, Any]) -> dict[str, Any]:
    """precision, tolerance_overrides and target_options for ExportOptions, from gsq-export's flag values.

    Refuses, before any work: a bad --precision, options of another target, threshold flags on fp32.
    """
    from .build import load_target

    plan = PrecisionPlan.parse(values["precision"])
    spec = load_target(target)
    chosen = []
    for kind in target_option_types():
        given = {
            item.name: values[_parameter(item.metadata["flag"])]
            for item in option_fields(kind)
            if values.get(_parameter(item.metadata["flag"])) is not None
        }
        if not given:
            continue
        if kind not in spec.option_types:
            first = next(item.metadata["flag"] for item in option_fields(kind) if item.name in given)
            raise ExportError(f"{first} is a {kind.OWNER} option; use it with {kind.USE_WITH}")
        chosen.append(kind(**given))
    return {
        "precision": str(plan),
        "tolerance_overrides": _tolerance_overrides(plan, values),
        "target_options": tuple(chosen),
    }


def _tolerance_overrides(plan: PrecisionPlan, values: dict[str, Any]) -> dict[str, float]:
    """The threshold flags given, for every reduced-precision graph's tolerances."""
    overrides = {
        "min_token_agreement": values.get("min_token_agreement"),
        "max_latent_relative_error": values.get("max_latent_error"),
        "min_recon_psnr_db": values.get("min_recon_psnr"),
        "max_input_psnr_drop_db": values.get("max_input_psnr_drop"),
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides and plan.single == "fp32":
        raise ExportError(
            "--min-token-agreement / --max-latent-error / --min-recon-psnr / --max-input-psnr-drop set warning thresholds of "
            "reduced precisions; fp32 is held to fixed tolerances"
        )
    return overrides
