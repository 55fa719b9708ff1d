"""Compare exported graphs with the eager model on real images; the report is a plain dict.

The comparison is backend-neutral: it needs only `run_graph(name, inputs) -> output`, so every
target (ONNX Runtime here; TensorRT, OpenVINO later) is judged by the same code and tolerances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from gsq_core.fidelity import psnr, score_gaps

if TYPE_CHECKING:
    from gsq_core.model import GSQTokenizer

RunGraph = Callable[[str, dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """What an exported graph must meet against eager fp32 to pass."""

    max_score_gap: float = 1e-5  # every token an optimal choice (float64 score gap on the eager latent)
    max_latent_relative_error: float = 1e-4  # max |latent - eager| / max |eager latent|
    min_recon_psnr_db: float = 60.0  # decoder output against eager decode of the same codes
    # -- reduced precision (issue 4) --
    min_token_agreement: float = 0.0  # share of tokens identical to eager fp32
    near_tie_margin: float = 1e-5  # disagreements whose eager score margin is below this are rounding
    warn_only: bool = False  # misses become report["warnings"] (reduced precisions), except errors / NaN


# Tolerances by precision. Reduced precisions keep the lookup in fp32, so their quantizer graph is
# still held to fp32's optimal-choice gap by the exporter; the limits below only warn.
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


@dataclass
class _Stats:
    """Running worst case of each measure over all validation batches."""

    tokens: int = 0
    agreeing: int = 0
    max_score_gap: float = 0.0
    latent_max_abs_error: float = 0.0
    latent_max_abs: float = 0.0
    recon_min_psnr_db: float = float("inf")
    recon_max_abs_error: float = 0.0
    recon_finite: bool = True
    errors: list[str] = field(default_factory=list)  # runs that failed or gave the wrong shape/dtype
    margins: list[float] = field(default_factory=list)  # eager score margin of each disagreeing token


class _Mismatch(Exception):
    """A graph output that cannot be compared with eager at all (shape, dtype, id range)."""


def validate_graphs(
    model: GSQTokenizer,
    graphs: Iterable[str],
    run_graph: RunGraph,
    batches: list[np.ndarray],
    precision: str = "fp32",
    image_names: list[str] | None = None,
    tolerances: Tolerances | None = None,
) -> dict:
    """Run every graph on the batches and against eager; return the report (report['passed'])."""
    import torch

    graphs = list(graphs)
    tolerances = tolerances or TOLERANCES[precision]
    spec = model.quantizer.lookup_spec()
    stats = {name: _Stats() for name in graphs}
    for images in batches:
        with torch.no_grad():
            latent = model.encode_latent(torch.from_numpy(images)).numpy()
            codes = model.quantizer.codes(torch.from_numpy(latent)).numpy()
            decodes = any(name in ("decoder", "detokenize") for name in graphs)
            recon = model.decode(torch.from_numpy(codes)).numpy() if decodes else None
        for name in graphs:
            stat = stats[name]
            feed = {"images": images} if name in ("encoder", "tokenize") else {"latent": latent}
            if name in ("decoder", "detokenize"):
                feed = {"codes": codes}
            try:
                output = run_graph(name, feed)
            except Exception as error:  # any backend's failure to run, e.g. a shape baked into the graph
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                stat.errors.append(f"{name}: failed to run on input {list(images.shape)}: {message}")
                continue
            try:
                if name == "encoder":
                    _compare_latent(stat, output, latent)
                elif name in ("quantizer", "tokenize"):
                    _compare_codes(stat, output, codes, latent, spec, model.num_embed)
                else:
                    assert recon is not None
                    _compare_recon(stat, output, recon)
            except _Mismatch as mismatch:
                stat.errors.append(f"{name}: {mismatch} for input {list(images.shape)}")
    report = {
        "precision": precision,
        "tolerances": _json_tolerances(tolerances),
        "images": {
            "names": image_names or [],
            "batches": [list(batch.shape) for batch in batches],
        },
        "graphs": {name: _graph_report(name, stats[name]) for name in graphs},
    }
    report["failures"] = []
    report["warnings"] = []
    for name, result in report["graphs"].items():
        if name in ("quantizer", "tokenize"):
            result.update(_disagreement_report(stats[name].margins, tolerances.near_tie_margin))
        failures = _failures(name, result, tolerances)
        if tolerances.warn_only:  # reduced precision: only a failed run or a non-finite output fails
            hard = [failure for failure in failures if failure in result["errors"] or "NaN" in failure]
            report["warnings"].extend(failure for failure in failures if failure not in hard)
            failures = hard
        result["passed"] = not failures
        report["failures"].extend(failures)
    report["passed"] = not report["failures"]
    return report


def _json_tolerances(tolerances: Tolerances) -> dict:
    """asdict with 'no limit' (infinity) written as None: JSON has no infinity."""
    return {key: (None if value == float("inf") else value) for key, value in asdict(tolerances).items()}


def _disagreement_report(margins: list[float], near_tie_margin: float) -> dict:
    """Disagreements with eager and their margins (eager fp32 score gap, float64): near ties vs flagged."""
    values = np.sort(np.asarray(margins, dtype=np.float64))[::-1]
    flagged = values[values >= near_tie_margin]
    return {
        "disagreements": int(values.size),
        "near_tie_disagreements": int(values.size - flagged.size),
        "flagged_disagreements": int(flagged.size),
        "max_disagreement_margin": float(values[0]) if values.size else 0.0,
        "median_disagreement_margin": float(np.median(values)) if values.size else 0.0,
        "largest_disagreement_margins": [float(v) for v in values[:10]],
    }


def _compare_latent(stat: _Stats, latent: np.ndarray, reference: np.ndarray) -> None:
    if latent.shape != reference.shape:
        raise _Mismatch(f"latent shape {list(latent.shape)} differs from eager {list(reference.shape)}")
    stat.latent_max_abs_error = max(stat.latent_max_abs_error, float(np.abs(latent - reference).max()))
    stat.latent_max_abs = max(stat.latent_max_abs, float(np.abs(reference).max()))


def _compare_codes(
    stat: _Stats, codes: np.ndarray, reference: np.ndarray, latent: np.ndarray, spec, num_embed: int
) -> None:
    if codes.shape != reference.shape or codes.dtype != np.int64:
        raise _Mismatch(f"codes {codes.dtype}{list(codes.shape)} differ from eager's int64{list(reference.shape)}")
    if codes.size and (codes.min() < 0 or codes.max() >= num_embed):
        raise _Mismatch(f"token ids outside [0, {num_embed})")
    stat.tokens += codes.size
    stat.agreeing += int((codes == reference).sum())
    gaps = score_gaps(latent, codes, spec)
    stat.max_score_gap = max(stat.max_score_gap, float(gaps.max(initial=0.0)))
    stat.margins.extend(gaps[(codes != reference).reshape(-1)].tolist())


def _compare_recon(stat: _Stats, recon: np.ndarray, reference: np.ndarray) -> None:
    if recon.shape != reference.shape:
        raise _Mismatch(f"image shape {list(recon.shape)} differs from eager {list(reference.shape)}")
    if not np.isfinite(recon).all():
        stat.recon_finite = False
        return
    stat.recon_min_psnr_db = min(stat.recon_min_psnr_db, float(psnr(reference, recon)))
    stat.recon_max_abs_error = max(stat.recon_max_abs_error, float(np.abs(recon - reference).max()))


def _graph_report(name: str, stat: _Stats) -> dict:
    return {**_measures(name, stat), "errors": stat.errors}


def _measures(name: str, stat: _Stats) -> dict:
    if name == "encoder":
        relative = stat.latent_max_abs_error / stat.latent_max_abs if stat.latent_max_abs else 0.0
        return {
            "latent_max_abs_error": stat.latent_max_abs_error,
            "latent_max_abs": stat.latent_max_abs,
            "latent_relative_error": relative,
        }
    if name in ("quantizer", "tokenize"):
        return {
            "tokens": stat.tokens,
            "token_agreement": stat.agreeing / stat.tokens if stat.tokens else None,
            "max_score_gap": stat.max_score_gap,
        }
    return {
        # JSON has no infinity: identical reconstructions report None for PSNR.
        "recon_psnr_db": None if stat.recon_min_psnr_db == float("inf") else stat.recon_min_psnr_db,
        "recon_max_abs_error": stat.recon_max_abs_error,
        "recon_finite": stat.recon_finite,
    }


def _failures(name: str, result: dict, tolerances: Tolerances) -> list[str]:
    """Why one graph's result misses the tolerances (empty when it passes)."""
    failures = list(result.get("errors", []))
    if result.get("latent_relative_error", 0.0) > tolerances.max_latent_relative_error:
        failures.append(
            f"{name}: latent error {result['latent_max_abs_error']:.3g} is "
            f"{result['latent_relative_error']:.3g} of the latent's magnitude "
            f"(limit {tolerances.max_latent_relative_error:g})"
        )
    if result.get("max_score_gap", 0.0) > tolerances.max_score_gap:
        failures.append(
            f"{name}: a token is not an optimal choice: score gap {result['max_score_gap']:.3g} "
            f"> {tolerances.max_score_gap:g} (token agreement {result['token_agreement']:.4%})"
        )
    agreement = result.get("token_agreement")
    if agreement is not None and agreement < tolerances.min_token_agreement:
        failures.append(
            f"{name}: token agreement {agreement:.4%} < {tolerances.min_token_agreement:.2%} "
            f"({result.get('flagged_disagreements', 0)} disagreements with margin >= {tolerances.near_tie_margin:g})"
        )
    if result.get("recon_finite") is False:
        failures.append(f"{name}: the reconstruction holds NaN or infinite values")
    psnr_db = result.get("recon_psnr_db")
    if psnr_db is not None and psnr_db < tolerances.min_recon_psnr_db:
        failures.append(
            f"{name}: reconstruction PSNR against eager {psnr_db:.1f} dB < {tolerances.min_recon_psnr_db:g} dB"
        )
    return failures
