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
from gsq_core.lookup import (
    _sorted_codebook,
    exact_scores,
    nearest_codes,
    normalize_vectors,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_worker(case: LookupCase) -> dict[str, Any]:
    """Run one case in a fresh process; its JSON line is the result."""
    return run_json_worker("benchmarks.lookup_worker", json.dumps(asdict(case)), REPO_ROOT)


def exact_reference(case: LookupCase, check_rows: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """Exact tokens for the checked vectors (all of them where the sorted search applies)."""
    quantizer, latent = build_inputs(case)
    vectors = grouped_vectors(latent, case.num_group)
    tables = quantizer.lookup_tables()
    if _sorted_codebook(tables, vectors.device) is None:
        vectors = vectors[:check_rows]
    rows = np.arange(vectors.shape[0])
    return rows, nearest_codes(vectors, tables, method="exact").numpy(), (vectors, tables)


def token_checks(tokens: np.ndarray, rows: np.ndarray, exact: np.ndarray, problem: Any) -> dict[str, Any]:
    """Agreement with the exact lookup, and the largest score gap where they differ."""
    vectors, tables = problem
    chosen = tokens[rows]
    differ = np.nonzero(chosen != exact)[0]
    max_gap = 0.0
    if differ.size:
        x = normalize_vectors(vectors[differ].float(), tables.normalization)
        bias = tables.bias
        picked, best = torch.from_numpy(chosen[differ]), torch.from_numpy(exact[differ])
        score = lambda codes: exact_scores(x, tables.weight[codes], None if bias is None else bias[codes])
        max_gap = float((score(best) - score(picked)).max())
    return {
        "checked_vectors": int(rows.size),
        "agreement_vs_exact": 1.0 - differ.size / max(1, rows.size),
        "max_gap_vs_exact": max_gap,
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
