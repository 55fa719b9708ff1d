"""Judge exported graphs against the eager model on real images; the report is a plain dict.

Every target is validated the same way: the staged artifact is opened with the runtime users load
(runtimes.load_runtime, see exporters.build), each graph is run through that runtime's `run_graph`
(its sessions, options and batch chunking) on the eager model's inputs, and its output is measured
by the one comparator (gsq_core.comparator) against eager fp32. What a graph reads and writes comes
from its spec (exporters.graphs.GraphSpec): no branch here knows a graph by name. Which tolerances
hold it comes from the one table below (TOLERANCES), by the precision the plan builds it in, with
gsq-export's threshold flags (the flag fields of Tolerances) applied to the reduced precisions.
Importing this module does not import torch (gsq-export's flags come from Tolerances).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gsq_core.comparator import NEAR_TIE_MARGIN, Comparator, Mismatch
from gsq_core.errors import first_line

from . import ExportError, flag, flag_fields
from .precision import PrecisionPlan

if TYPE_CHECKING:
    from gsq_core.model import GSQTokenizer


@dataclass(frozen=True)
class Tolerances:
    """What an exported graph must meet against eager fp32 to pass. The fields made with `flag` are
    the thresholds gsq-export's flags set for reduced-precision graphs (tolerance overrides)."""

    min_token_agreement: float = flag(  # share of tokens identical to eager fp32
        0.0,
        "--min-token-agreement",
        "Reduced precisions: warn below this share of tokens identical to eager.",
        ("float_range", (0, 1)),
    )
    max_latent_relative_error: float = flag(  # max |latent - eager| / max |eager latent|
        1e-4,
        "--max-latent-error",
        "Reduced precisions: warn above this latent error (relative to the latent's magnitude).",
        ("float_range", (0, None)),
    )
    min_recon_psnr_db: float = flag(  # every decoded image against eager's decode of the same codes
        60.0,
        "--min-recon-psnr",
        "Reduced precisions: warn below this reconstruction PSNR against eager (dB).",
        "float",
    )
    # decoders: mean PSNR against the input images, below eager's decode of the same codes (dB)
    max_input_psnr_drop_db: float = flag(
        float("inf"),
        "--max-input-psnr-drop",
        "Reduced precisions: warn when a decoder's PSNR against the input images is this far below eager's (dB).",
        ("float_range", (0, None)),
    )
    max_score_gap: float = 1e-5  # every token an optimal choice (float64 score gap on the eager latent)
    near_tie_margin: float = NEAR_TIE_MARGIN  # disagreements whose eager score margin is below this are rounding
    warn_only: bool = False  # misses become report["warnings"] (reduced precisions), except errors / NaN


# Tolerances by precision. Reduced precisions keep the lookup in fp32: the graph that is the lookup
# alone is fp32 in every plan (PrecisionPlan.for_graph), so it is held to fp32's tolerances; the limits below,
# for the graphs with reduced-precision layers, only warn. Each graph is judged at its own
# precision (exporters.precision): encoders by latent error, token agreement and margins, decoders
# by PSNR against eager and against the input images.
TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(),
    "fp16": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=1e-2,
        min_recon_psnr_db=40.0,
        max_input_psnr_drop_db=0.1,
        min_token_agreement=0.95,
        warn_only=True,
    ),
    "bf16": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=5e-2,
        min_recon_psnr_db=30.0,
        max_input_psnr_drop_db=0.3,
        min_token_agreement=0.80,
        warn_only=True,
    ),
    "int8": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=1e-1,
        min_recon_psnr_db=25.0,
        max_input_psnr_drop_db=0.3,
        min_token_agreement=0.50,
        warn_only=True,
    ),
}
# The tolerances gsq-export's threshold flags (tolerance overrides) may set: the flag fields above.
OVERRIDABLE: tuple[str, ...] = tuple(item.name for item in flag_fields(Tolerances))


def check_overrides(overrides: Mapping[str, float]) -> dict[str, float]:
    """The tolerance overrides as a plain dict; ExportError (one line) for a name that is not one
    of the thresholds (OVERRIDABLE). The one check, made by ExportOptions and by tolerances_for."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ExportError(f"tolerance overrides {unknown}: only {', '.join(OVERRIDABLE)} can be set")
    return dict(overrides)


def tolerances_for(precision: str, overrides: Mapping[str, float] | None = None) -> Tolerances:
    """The tolerances of a graph built in `precision`: fp32's for fp32 (overrides never loosen
    them), else the precision's warning thresholds with gsq-export's flags (overrides)."""
    checked = check_overrides(overrides or {})
    return TOLERANCES["fp32"] if precision == "fp32" else replace(TOLERANCES[precision], **checked)


class GraphRunner(Protocol):
    """What validation needs of a runtime: run one graph of the artifact on one input array."""

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray: ...


class TensorSpecLike(Protocol):
    name: str


class GraphSpecLike(Protocol):
    """The parts of exporters.graphs.GraphSpec validation reads."""

    name: str
    inputs: tuple[TensorSpecLike, ...]
    outputs: tuple[TensorSpecLike, ...]


@dataclass(frozen=True)
class _Failure:
    message: str
    hard: bool  # fails even where misses only warn: a graph that did not run, NaN / infinite output


@dataclass
class _Check:
    """One thing validated: a graph (run through run_graph) or a path users call (encode, decode)."""

    name: str
    input_name: str  # the eager value it is fed: images, latent or codes
    output_name: str  # the eager value its output is compared with
    run: Callable[[np.ndarray], np.ndarray]
    precision: str
    limits: Tolerances
    comparator: Comparator
    errors: list[str] = field(default_factory=list)


def validate_graphs(
    model: GSQTokenizer,
    specs: Sequence[GraphSpecLike],
    runtime: GraphRunner,
    batches: list[np.ndarray],
    plan: PrecisionPlan = PrecisionPlan(),
    image_names: list[str] | None = None,
    tolerance_overrides: Mapping[str, float] | None = None,
    paths: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every graph through runtime.run_graph on the batches and judge it against eager fp32,
    each at the precision the plan builds it in (its tolerances: tolerances_for).

    paths: also judge these runtime calls ("encode", "decode"), at the encoder's / decoder's
    precision: what users call where no single graph answers it (an OpenVINO bf16 encoder runs
    as the encoder graph, then the quantizer graph).
    tolerance_overrides: gsq-export's threshold flags for every reduced-precision graph. Returns
    the report; report['passed'] is the verdict.
    """
    import torch

    lookup = model.quantizer.lookup_spec()
    checks = [
        _Check(
            spec.name,
            spec.inputs[0].name,
            spec.outputs[0].name,
            lambda value, name=spec.name: runtime.run_graph(name, value),
            plan.for_graph(spec.name),
            tolerances_for(plan.for_graph(spec.name), tolerance_overrides),
            Comparator(lookup),
        )
        for spec in specs
    ]
    calls = {"encode": ("encoder", "images", "codes"), "decode": ("decoder", "codes", "images")}
    for name in paths:
        part, source, target = calls[name]
        checks.append(
            _Check(
                name,
                source,
                target,
                getattr(runtime, name),
                plan.for_part(part),
                tolerances_for(plan.for_part(part), tolerance_overrides),
                Comparator(lookup),
            )
        )
    decodes = any(check.output_name == "images" for check in checks)
    eager_quality = Comparator(lookup)  # eager's decode of its own codes against the input images
    for images in batches:
        with torch.no_grad():
            eager = {"images": images, "latent": model.encode_latent(torch.from_numpy(images)).numpy()}
            eager["codes"] = model.quantizer.codes(torch.from_numpy(eager["latent"])).numpy()
            if decodes:
                eager["recon"] = model.decode(torch.from_numpy(eager["codes"])).numpy()
                eager_quality.add_quality(eager["recon"], images)
        for check in checks:
            feed = eager[check.input_name]
            try:
                output = check.run(feed)
            except Exception as error:  # any backend's failure to run, e.g. a shape baked into the graph
                check.errors.append(f"{check.name}: failed to run on input {list(feed.shape)}: {first_line(error)}")
                continue
            try:
                _compare(check.comparator, check.output_name, np.asarray(output), eager)
            except Mismatch as mismatch:
                check.errors.append(f"{check.name}: {mismatch} for input {list(images.shape)}")
    report: dict[str, Any] = {
        "precision": str(plan),
        "precisions": plan.to_manifest(),
        "tolerance_overrides": dict(tolerance_overrides or {}),
        "images": {"names": image_names or [], "batches": [list(batch.shape) for batch in batches]},
        "graphs": {},
        "failures": [],
        "warnings": [],
    }
    eager_psnr = eager_quality.report().get("psnr_vs_input_db")
    for check in checks:
        results = _input_quality(check.comparator.report(), eager_psnr)
        failures = [_Failure(message, hard=True) for message in check.errors]
        failures += _misses(check.name, check.comparator, check.limits, results)
        hard = [failure.message for failure in failures if failure.hard or not check.limits.warn_only]
        report["warnings"] += [failure.message for failure in failures if failure.message not in hard]
        report["failures"] += hard
        section = "paths" if check.name in ("encode", "decode") else "graphs"
        report.setdefault(section, {})[check.name] = {
            **results,
            "errors": check.errors,
            "precision": check.precision,
            "tolerances": _json_tolerances(check.limits),
            "passed": not hard,
        }
    report["passed"] = not report["failures"]
    return report


def _input_quality(results: dict[str, Any], eager_psnr: float | None) -> dict[str, Any]:
    """A decoder's report with eager's PSNR against the input on the same images, and the drop."""
    if "psnr_vs_input_db" not in results or eager_psnr is None or results["psnr_vs_input_db"] is None:
        return results
    return {
        **results,
        "eager_psnr_vs_input_db": eager_psnr,
        "psnr_vs_input_drop_db": eager_psnr - results["psnr_vs_input_db"],
    }


def _compare(comparator: Comparator, output_name: str, output: np.ndarray, eager: dict[str, np.ndarray]) -> None:
    """Add one graph output to its comparator, against the eager value of the same name."""
    if output_name == "latent":
        comparator.add_latent(output, eager["latent"])
    elif output_name == "codes":
        comparator.add_codes(output, eager["codes"], eager["latent"])
    elif output_name == "images":
        comparator.add_images(output, eager["recon"])
        comparator.add_quality(output, eager["images"])
    else:
        raise Mismatch(f"output {output_name!r} has no eager counterpart (latent, codes or images)")


def _misses(name: str, comparator: Comparator, limits: Tolerances, results: dict[str, Any]) -> list[_Failure]:
    """Why one graph's measures miss its tolerances (empty when it meets them)."""
    misses: list[_Failure] = []
    relative = comparator.latent_relative_error
    if relative is not None and not relative <= limits.max_latent_relative_error:
        misses.append(
            _Failure(
                f"{name}: latent error {comparator.latent_max_abs_error:.3g} is {relative:.3g} of the latent's "
                f"magnitude (limit {limits.max_latent_relative_error:g})",
                hard=not math.isfinite(relative),
            )
        )
    agreement = comparator.token_agreement
    gap = comparator.max_score_gap
    if gap is not None and gap > limits.max_score_gap:
        misses.append(
            _Failure(
                f"{name}: a token is not an optimal choice: score gap {gap:.3g} > {limits.max_score_gap:g} "
                f"(token agreement {agreement:.4%})",
                hard=False,
            )
        )
    if agreement is not None and agreement < limits.min_token_agreement:
        flagged = sum(margin >= limits.near_tie_margin for margin in comparator.margins)
        misses.append(
            _Failure(
                f"{name}: token agreement {agreement:.4%} < {limits.min_token_agreement:.2%} "
                f"({flagged} disagreements with margin >= {limits.near_tie_margin:g})",
                hard=False,
            )
        )
    if not comparator.images_finite:
        misses.append(_Failure(f"{name}: the reconstruction holds NaN or infinite values", hard=True))
    lowest = comparator.images_min_psnr_db
    if lowest is not None and lowest < limits.min_recon_psnr_db:
        misses.append(
            _Failure(
                f"{name}: reconstruction PSNR against eager {lowest:.1f} dB < {limits.min_recon_psnr_db:g} dB",
                hard=False,
            )
        )
    drop = results.get("psnr_vs_input_drop_db")
    if drop is not None and drop > limits.max_input_psnr_drop_db:
        misses.append(
            _Failure(
                f"{name}: PSNR against the input images {results['psnr_vs_input_db']:.2f} dB is {drop:.2f} dB below "
                f"eager's {results['eager_psnr_vs_input_db']:.2f} dB (limit {limits.max_input_psnr_drop_db:g} dB)",
                hard=False,
            )
        )
    return misses


def summary_line(report: dict[str, Any], image_count: int) -> str:
    """One stage line: verdict, warnings and the token agreement of the graph that makes tokens."""
    verdict = "passed" if report["passed"] else "FAILED"
    paths = report.get("paths", {})
    results = [*report["graphs"].values(), *paths.values()]
    with_tokens = [result for result in results if result.get("token_agreement") is not None]
    agreement = f", token agreement {min(r['token_agreement'] for r in with_tokens):.2%}" if with_tokens else ""
    drops = [result["psnr_vs_input_drop_db"] for result in results if result.get("psnr_vs_input_drop_db") is not None]
    quality = f", PSNR vs input {0.0 - max(drops):+.2f} dB against eager" if drops else ""  # 0.0 -: no "-0.00"
    warnings = f", {len(report['warnings'])} warning(s)" if report.get("warnings") else ""
    also = f" and {' / '.join(paths)}" if paths else ""
    line = f"validated {len(report['graphs'])} graphs{also} against eager on {image_count} images: {verdict}"
    line += agreement + quality + warnings
    for warning in report.get("warnings", []):
        line += f"\n  warning: {warning}"
    return line


def _json_tolerances(tolerances: Tolerances) -> dict[str, Any]:
    """asdict with 'no limit' (infinity) written as None: JSON has no infinity."""
    return {key: (None if value == float("inf") else value) for key, value in asdict(tolerances).items()}
