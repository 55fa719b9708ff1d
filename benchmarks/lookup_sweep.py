"""Running the quantizer-lookup sweep: one worker process per (case, method), then token checks."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.lookup_case import LookupCase
from benchmarks.lookup_worker import build_inputs, grouped_vectors
from benchmarks.measure import run_json_worker
from gsq_core.comparator import Comparator
from gsq_core.fidelity import LookupSpec
from gsq_core.lookup import _sorted_codebook, nearest_codes, normalize_vectors

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_worker(case: LookupCase) -> dict[str, Any]:
    """Run one case in a fresh process; its JSON line is the result."""
    return run_json_worker("benchmarks.lookup_worker", json.dumps(asdict(case)), REPO_ROOT)


# Above this group dimension the float64 reference is a float64 matmul (error ~1e-13, far below fp32's
# resolution) instead of gsq_core's fixed-order float64 sums, which take one pass per component.
MATMUL_REFERENCE_MIN_DIM = 16


def float64_matmul_reference(vectors: torch.Tensor, tables: Any, block_rows: int = 256) -> np.ndarray:
    """argmax of normalize(x) . w (+ bias) in float64 matmuls, lowest index among the best."""
    x = normalize_vectors(vectors.float(), tables.normalization).double()
    weight_t = tables.weight.double().T.contiguous()
    bias = None if tables.bias is None else tables.bias.double()
    result = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], block_rows):
        scores = x[start : start + block_rows] @ weight_t
        if bias is not None:
            scores += bias
        result[start : start + block_rows] = scores.argmax(dim=1).numpy()  # first maximum on ties
    return result


def exact_reference(case: LookupCase, check_rows: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, LookupSpec]]:
    """Exact tokens for the checked vectors (all of them where the sorted search applies), and the
    checked vectors with the lookup's spec, one vector per token, for the comparator."""
    quantizer, latent = build_inputs(case)
    vectors = grouped_vectors(latent, case.num_group)
    tables = quantizer.lookup_tables()
    if _sorted_codebook(tables, vectors.device) is None:
        vectors = vectors[:check_rows]
    rows = np.arange(vectors.shape[0])
    spec = replace(quantizer.lookup_spec(), num_group=1)  # the vectors are [N, d]: one group each
    if case.group_dim >= MATMUL_REFERENCE_MIN_DIM:
        return rows, float64_matmul_reference(vectors, tables), (vectors.numpy(), spec)
    return rows, nearest_codes(vectors, tables, method="exact").numpy(), (vectors.numpy(), spec)


def token_checks(
    tokens: np.ndarray, rows: np.ndarray, exact: np.ndarray, problem: tuple[np.ndarray, LookupSpec]
) -> dict[str, Any]:
    """Agreement with the exact lookup, and the largest score gap where they differ (the comparator,
    scoring only the disagreements: all N x V scores would not fit at V = 262,144)."""
    vectors, spec = problem
    comparator = Comparator(spec)
    comparator.add_codes(tokens[rows], exact, vectors[:, :, None, None], every_token=False)
    report = comparator.report()
    return {
        "checked_vectors": int(rows.size),
        "agreement_vs_exact": report["token_agreement"],
        "max_gap_vs_exact": report["max_disagreement_margin"],
    }


def measure_case(case: LookupCase, methods: list[str], check_rows: int, workdir: Path) -> list[dict[str, Any]]:
    """All methods on one case, then token checks and ratios against the full-matrix baseline."""
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        tokens_path = workdir / f"tokens-{method}.npy"
        tokens_path.unlink(missing_ok=True)
        results[method] = run_worker(replace(case, method=method, tokens_path=str(tokens_path)))
    rows, exact, problem = exact_reference(case, check_rows)
    tokens = {m: np.load(workdir / f"tokens-{m}.npy") for m, r in results.items() if r.get("status") == "ok"}
    full_ms = results.get("full", {}).get("median_ms")
    eager_tokens = tokens.get("eager")
    records = []
    for method, result in results.items():
        record = {
            "quantizer": case.quantizer,
            "num_embed": case.num_embed,
            "num_group": case.num_group,
            "group_dim": case.group_dim,
            "batch": case.batch,
            "image_size": case.image_size,
            "num_vectors": case.num_vectors,
            "method": method,
            **{key: value for key, value in result.items() if key not in ("case", "traceback")},
        }
        if method in tokens:
            record.update(token_checks(tokens[method], rows, exact, problem))
            if eager_tokens is not None:
                record["agreement_vs_eager"] = float((tokens[method] == eager_tokens).mean())
            if full_ms:
                record["speedup_vs_full"] = full_ms / result["median_ms"]
        records.append(record)
    return records
