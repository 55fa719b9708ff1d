"""gsq-export's precision, threshold and per-target flags, kept apart from the rest of the CLI.

--precision is declared here, and parsed here, once, into the PrecisionPlan every later step takes.
The reduced precisions' warning thresholds are the flag fields of exporters.validation.Tolerances
(the one tolerance table), and every other flag comes from the option dataclass a target module
declares (exporters.tensorrt's TensorRTOptions, exporters.triton's TritonOptions): each field made
with exporters.flag, so a flag is declared where what it sets is. `export_options` turns the flag
values into the typed pieces of ExportOptions and refuses flags that belong to another target.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import click

from . import TARGETS, ExportError, flag_fields
from .precision import PRECISIONS, PrecisionPlan
from .validation import Tolerances

_PRECISION = click.option(
    "--precision",
    default="fp32",
    show_default=True,
    help=(
        f"Numeric precision ({', '.join(PRECISIONS)}) of every graph, or one per part: "
        "encoder=fp32,decoder=int8 (a part not named is fp32). The quantizer lookup is fp32 in all of them."
    ),
)


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
    if spec == "float":
        return float
    kind, value = spec
    if kind == "int_range":
        return click.IntRange(min=value)
    if kind == "float_range":
        return click.FloatRange(*value)
    if kind == "choice":
        return click.Choice(value)
    raise ValueError(f"unknown flag type {spec!r}")


def click_options(command: Callable) -> Callable:
    """Decorate the gsq-export command with --precision, the thresholds and every target's flags."""
    options = [_PRECISION]
    for kind in [Tolerances, *target_option_types()]:
        for item in flag_fields(kind):
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
    """precision (the PrecisionPlan, parsed here once), tolerance_overrides and target_options for
    ExportOptions, from gsq-export's flag values.

    Refuses, before any work: a bad --precision, options of another target, threshold flags on fp32.
    """
    from .build import load_target

    plan = PrecisionPlan.parse(values["precision"])
    spec = load_target(target)
    chosen = []
    for kind in target_option_types():
        given = _given(kind, values)
        if not given:
            continue
        if kind not in spec.option_types:
            first = next(item.metadata["flag"] for item in flag_fields(kind) if item.name in given)
            raise ExportError(f"{first} is a {kind.OWNER} option; use it with {kind.USE_WITH}")
        chosen.append(kind(**given))
    return {
        "precision": plan,
        "tolerance_overrides": _tolerance_overrides(plan, values),
        "target_options": tuple(chosen),
    }


def _given(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    """The flag fields of a dataclass whose flags were given, by field name."""
    return {
        item.name: values[_parameter(item.metadata["flag"])]
        for item in flag_fields(kind)
        if values.get(_parameter(item.metadata["flag"])) is not None
    }


def _tolerance_overrides(plan: PrecisionPlan, values: dict[str, Any]) -> dict[str, float]:
    """The threshold flags given (Tolerances' flag fields), for every reduced-precision graph's tolerances."""
    overrides = _given(Tolerances, values)
    if overrides and plan.single == "fp32":
        flags = " / ".join(item.metadata["flag"] for item in flag_fields(Tolerances))
        raise ExportError(f"{flags} set warning thresholds of reduced precisions; fp32 is held to fixed tolerances")
    return overrides
