"""Compare exported graphs with the eager model on real images; the report is a plain dict.

The comparison is backend-neutral: it needs only `run_graph(name, inputs) -> output`, so every
target (ONNX Runtime here; TensorRT, OpenVINO later) is judged by the same code and tolerances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from gsq_core.fidelity import psnr, score_gaps
from gsq_core.model import GSQTokenizer

RunGraph = Callable[[str, dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """What an exported graph must meet against eager fp32 to pass."""

    max_score_gap: float = 1e-5  # every token an optimal choice (float64 score gap on the eager latent)
    max_latent_relative_error: float = 1e-4  # max |latent - eager| / max |eager latent|
    min_recon_psnr_db: float = 60.0  # decoder output against eager decode of the same codes


# Tolerances by precision; reduced-precision builds add their entries (the lookup stays fp32).
TOLERANCES: dict[str, Tolerances] = {"fp32": Tolerances()}


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


class _Mismatch(Exception):
    """A graph output that cannot be compared with eager at all (shape, dtype, id range)."""


def validate_graphs(
    model: GSQTokenizer,
    graphs: Iterable[str],
    run_graph: RunGraph,
    batches: list[np.ndarray],
    precision: str = "fp32",
    image_names: list[str] | None = None,
) -> dict:
    """Run every graph on the batches and against eager; return the report (report['passed'])."""
    graphs = list(graphs)
    tolerances = TOLERANCES[precision]
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
        "tolerances": asdict(tolerances),
        "images": {
            "names": image_names or [],
            "batches": [list(batch.shape) for batch in batches],
        },
        "graphs": {name: _graph_report(name, stats[name]) for name in graphs},
    }
    report["failures"] = []
    for name, result in report["graphs"].items():
        failures = _failures(name, result, tolerances)
        result["passed"] = not failures
        report["failures"].extend(failures)
    report["passed"] = not report["failures"]
    return report


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
    stat.max_score_gap = max(stat.max_score_gap, float(score_gaps(latent, codes, spec).max(initial=0.0)))


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
    if result.get("recon_finite") is False:
        failures.append(f"{name}: the reconstruction holds NaN or infinite values")
    psnr_db = result.get("recon_psnr_db")
    if psnr_db is not None and psnr_db < tolerances.min_recon_psnr_db:
        failures.append(
            f"{name}: reconstruction PSNR against eager {psnr_db:.1f} dB < {tolerances.min_recon_psnr_db:g} dB"
        )
    return failures
