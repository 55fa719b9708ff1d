"""Judge exported graphs against the eager model on real images; the report is a plain dict.

Every target is validated the same way: the staged artifact is opened with the runtime users load
(runtimes.load_runtime, see exporters.build), each graph is run through that runtime's `run_graph`
(its sessions, options and batch chunking) on the eager model's inputs, and its output is measured
by the one comparator (gsq_core.comparator) against eager fp32. What a graph reads and writes, and
which tolerances hold it, come from its spec (exporters.graphs.GraphSpec): no branch here knows a
graph by name. Importing this module does not import torch (gsq-export's options use Tolerances).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gsq_core.comparator import NEAR_TIE_MARGIN, Comparator, Mismatch

if TYPE_CHECKING:
    from gsq_core.model import GSQTokenizer


@dataclass(frozen=True)
class Tolerances:
    """What an exported graph must meet against eager fp32 to pass."""

    max_score_gap: float = 1e-5  # every token an optimal choice (float64 score gap on the eager latent)
    max_latent_relative_error: float = 1e-4  # max |latent - eager| / max |eager latent|
    min_recon_psnr_db: float = 60.0  # every decoded image against eager's decode of the same codes
    min_token_agreement: float = 0.0  # share of tokens identical to eager fp32
    near_tie_margin: float = NEAR_TIE_MARGIN  # disagreements whose eager score margin is below this are rounding
    warn_only: bool = False  # misses become report["warnings"] (reduced precisions), except errors / NaN


# Tolerances by precision. Reduced precisions keep the lookup in fp32: the graph that is the lookup
# alone (GraphSpec.exact_lookup) is held to fp32's tolerances in every build; the limits below,
# for the graphs with reduced-precision layers, only warn.
TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(),
    "fp16": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=1e-2,
        min_recon_psnr_db=40.0,
        min_token_agreement=0.95,
        warn_only=True,
    ),
    "bf16": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=5e-2,
        min_recon_psnr_db=30.0,
        min_token_agreement=0.80,
        warn_only=True,
    ),
    "int8": Tolerances(
        max_score_gap=float("inf"),
        max_latent_relative_error=1e-1,
        min_recon_psnr_db=25.0,
        min_token_agreement=0.50,
        warn_only=True,
    ),
}


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

    def tolerances(self, precision: str, overrides: Tolerances | None = None) -> Tolerances: ...


@dataclass(frozen=True)
class _Failure:
    message: str
    hard: bool  # fails even where misses only warn: a graph that did not run, NaN / infinite output


def validate_graphs(
    model: GSQTokenizer,
    specs: Sequence[GraphSpecLike],
    runtime: GraphRunner,
    batches: list[np.ndarray],
    precision: str = "fp32",
    image_names: list[str] | None = None,
    tolerances: Tolerances | None = None,
    graph_precisions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run every graph through runtime.run_graph on the batches and judge it against eager fp32.

    tolerances overrides the reduced precisions' thresholds (gsq-export's threshold flags);
    graph_precisions gives a graph its own precision (default: `precision`). Returns the report;
    report['passed'] is the verdict.
    """
    import torch

    lookup = model.quantizer.lookup_spec()
    comparators = {spec.name: Comparator(lookup) for spec in specs}
    errors: dict[str, list[str]] = {spec.name: [] for spec in specs}
    decodes = any(spec.outputs[0].name == "images" for spec in specs)
    for images in batches:
        with torch.no_grad():
            eager = {"images": images, "latent": model.encode_latent(torch.from_numpy(images)).numpy()}
            eager["codes"] = model.quantizer.codes(torch.from_numpy(eager["latent"])).numpy()
            if decodes:
                eager["recon"] = model.decode(torch.from_numpy(eager["codes"])).numpy()
        for spec in specs:
            feed = eager[spec.inputs[0].name]
            try:
                output = runtime.run_graph(spec.name, feed)
            except Exception as error:  # any backend's failure to run, e.g. a shape baked into the graph
                errors[spec.name].append(f"{spec.name}: failed to run on input {list(feed.shape)}: {_first_line(error)}")
                continue
            try:
                _compare(comparators[spec.name], spec.outputs[0].name, np.asarray(output), eager)
            except Mismatch as mismatch:
                errors[spec.name].append(f"{spec.name}: {mismatch} for input {list(images.shape)}")
    report: dict[str, Any] = {
        "precision": precision,
        "tolerances": _json_tolerances(tolerances or TOLERANCES[precision]),
        "images": {"names": image_names or [], "batches": [list(batch.shape) for batch in batches]},
        "graphs": {},
        "failures": [],
        "warnings": [],
    }
    for spec in specs:
        graph_precision = (graph_precisions or {}).get(spec.name, precision)
        limits = spec.tolerances(graph_precision, tolerances)
        comparator = comparators[spec.name]
        failures = [_Failure(message, hard=True) for message in errors[spec.name]]
        failures += _misses(spec.name, comparator, limits)
        hard = [failure.message for failure in failures if failure.hard or not limits.warn_only]
        report["warnings"] += [failure.message for failure in failures if failure.message not in hard]
        report["failures"] += hard
        report["graphs"][spec.name] = {
            **comparator.report(),
            "errors": errors[spec.name],
            "precision": graph_precision,
            "tolerances": _json_tolerances(limits),
            "passed": not hard,
        }
    report["passed"] = not report["failures"]
    return report


def _compare(comparator: Comparator, output_name: str, output: np.ndarray, eager: dict[str, np.ndarray]) -> None:
    """Add one graph output to its comparator, against the eager value of the same name."""
    if output_name == "latent":
        comparator.add_latent(output, eager["latent"])
    elif output_name == "codes":
        comparator.add_codes(output, eager["codes"], eager["latent"])
    elif output_name == "images":
        comparator.add_images(output, eager["recon"])
    else:
        raise Mismatch(f"output {output_name!r} has no eager counterpart (latent, codes or images)")


def _misses(name: str, comparator: Comparator, limits: Tolerances) -> list[_Failure]:
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
    return misses


def summary_line(report: dict[str, Any], image_count: int) -> str:
    """One stage line: verdict, warnings and the token agreement of the graph that makes tokens."""
    verdict = "passed" if report["passed"] else "FAILED"
    with_tokens = [result for result in report["graphs"].values() if result.get("token_agreement") is not None]
    agreement = f", token agreement {min(r['token_agreement'] for r in with_tokens):.2%}" if with_tokens else ""
    warnings = f", {len(report['warnings'])} warning(s)" if report.get("warnings") else ""
    line = f"validated {len(report['graphs'])} graphs against eager on {image_count} images: {verdict}"
    line += agreement + warnings
    for warning in report.get("warnings", []):
        line += f"\n  warning: {warning}"
    return line


def _json_tolerances(tolerances: Tolerances) -> dict[str, Any]:
    """asdict with 'no limit' (infinity) written as None: JSON has no infinity."""
    return {key: (None if value == float("inf") else value) for key, value in asdict(tolerances).items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
