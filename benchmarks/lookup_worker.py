"""One quantizer-lookup measurement, run in its own process so its peak memory is its own.

    python -m benchmarks.lookup_worker '{"num_embed": 65536, "num_group": 8, "group_dim": 2, ...}'

prints one JSON line with timings, memory and status, and saves the tokens where the case says.
Methods:
  eager    the tokenizer's lookup as the model runs it (quantizer.codes: exact sorted search for
           d <= 2 under l2, blocked fp32 matmul otherwise)
  blocked  the blocked fp32 matmul forced for every d (gsq_core.lookup, method="blocked")
  full     the upstream-style lookup: |x|^2 + |c|^2 - 2 x c^T as one N x V fp32 matrix, then argmin
           (IBQ: the full N x V logits x c^T, then argmax, as SEED-Voken computes them)
  onnx     the exported quantizer graph (exporters.onnx) run by runtimes.onnx on CPU (its batch
           chunking keeps the lookup's scratch near 256 MiB), with the lookup the exporter picks
           (the window lookup where it is proven, d <= 2; dense otherwise)
  onnx_dense  the same graph with the dense lookup forced (normalise, MatMul, ArgMax over all codes)
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.lookup_case import GIB, METHODS, LookupCase
from benchmarks.measure import (
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    summarize_ms,
    time_calls,
)
from gsq_core.config import QuantizerConfig, TokenizerConfig
from gsq_core.lookup import nearest_codes
from gsq_core.quantizers import CodebookQuantizer, build_quantizer


def build_inputs(case: LookupCase) -> tuple[CodebookQuantizer, torch.Tensor]:
    """A quantizer (GSQ: spherical random codebook; IBQ: N(0, 1) codebook, no normalisation) and a
    random latent [B, G*d, h, w], from the seed."""
    if case.quantizer not in ("gsq", "ibq"):
        raise ValueError(f"unknown quantizer {case.quantizer!r}; use gsq or ibq")
    torch.manual_seed(case.seed)
    config = QuantizerConfig(
        quantize_type=case.quantizer,
        num_embed=case.num_embed,
        embed_dim=case.num_group * case.group_dim,
        num_group=case.num_group,
        use_l2_norm=case.quantizer == "gsq",
    )
    quantizer = build_quantizer(config).eval()
    generator = torch.Generator().manual_seed(case.seed + 1)
    latent = torch.randn(case.batch, config.embed_dim, case.token_grid, case.token_grid, generator=generator)
    return quantizer, latent


def grouped_vectors(latent: torch.Tensor, num_group: int) -> torch.Tensor:
    """[B, G*d, h, w] -> [B*h*w*G, d] in token order (channel c = g * d + k)."""
    batch, channels, height, width = latent.shape
    return latent.permute(0, 2, 3, 1).reshape(batch * height * width * num_group, channels // num_group)


def full_logits_lookup(latent: torch.Tensor, codebook: torch.Tensor, num_group: int) -> torch.Tensor:
    """IBQ as SEED-Voken computes it: the full N x V logits z . c (no normalisation), then argmax.

    Upstream also takes a softmax over the logits before the max (a second N x V matrix, the same
    argmax); this baseline keeps only the logits.
    """
    logits = grouped_vectors(latent, num_group) @ codebook.T
    return logits.argmax(dim=1).reshape(latent.shape[0], latent.shape[2], latent.shape[3], num_group)


def full_matrix_lookup(latent: torch.Tensor, codebook: torch.Tensor, num_group: int) -> torch.Tensor:
    """Upstream-style: normalise both sides, the full N x V squared-distance matrix, argmin.

    Written as lean as that algorithm allows (one N x V matrix, the matmul accumulated into it in
    place); upstream's literal expression `z2 + c2 - 2 * z @ c.T` holds about three such matrices.
    """
    z = F.normalize(grouped_vectors(latent, num_group), dim=-1)
    codes = F.normalize(codebook, dim=-1)
    distances = z.pow(2).sum(dim=1, keepdim=True) + codes.pow(2).sum(dim=1)
    distances.addmm_(z, codes.T, alpha=-2.0)
    return distances.argmin(dim=1).reshape(latent.shape[0], latent.shape[2], latent.shape[3], num_group)


def tiny_tokenizer_with(quantizer: CodebookQuantizer) -> Any:
    """A minimal GSQTokenizer around this quantizer, so the real exporter can write its quantizer graph."""
    from gsq_core.model import GSQTokenizer

    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1,),
        encoder_layer_configs=(0, 0),
        decoder_layer_configs=(0, 0),
        embedding_dim=quantizer.config.embed_dim,
        quantizer=quantizer.config,
    )
    model = GSQTokenizer(config).eval()
    model.quantizer.codebook.weight.data.copy_(quantizer.codebook.weight.data)
    return model


def onnx_lookup(
    case: LookupCase, quantizer: CodebookQuantizer, workdir: Path, lookup: str
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Export the quantizer graph with exporters.onnx (lookup "auto" or "dense") and run it as users
    do: runtimes.onnx (CPU, case.threads threads, its batch chunking); also return the manifest's
    lookup facts."""
    from gsq_deploy.exporters.onnx import export_onnx
    from gsq_deploy.runtimes import load_runtime

    artifact = workdir / f"quantizer-artifact-{lookup}"
    manifest = export_onnx(
        tiny_tokenizer_with(quantizer), artifact, graphs=("quantizer",), validate=False, progress=False, lookup=lookup
    )
    runtime = load_runtime("onnx", artifact, threads=case.threads)
    runtime.session("quantizer")  # created before memory is measured: the codebook constants are not lookup work
    return (lambda latent: runtime.run_graph("quantizer", latent)), manifest["lookup"]


def matrix_gib(case: LookupCase) -> float:
    """Size of one N x V fp32 score matrix (the full method's working set)."""
    return case.num_vectors * case.num_embed * 4 / GIB


def graph_scratch_gib(case: LookupCase, lookup: dict[str, Any]) -> float:
    """The exported lookup's scratch for the case's N vectors, from its manifest facts."""
    return case.num_vectors * int(lookup["scratch_bytes_per_vector"]) / GIB


def format_gib(size: float) -> str:
    return f"{size:.1f} GiB" if size >= 1 else f"{size * 1024:.1f} MiB"


def skip_reason(case: LookupCase) -> str | None:
    """Why this method cannot run this case here (memory guard, missing exporter), or None."""
    if case.method == "full" and matrix_gib(case) > case.max_matrix_gib:
        return f"needs a {format_gib(matrix_gib(case))} N x V matrix (> --max-matrix-gib {case.max_matrix_gib:g})"
    if case.method in ("onnx", "onnx_dense"):
        try:
            import gsq_deploy.exporters.onnx  # noqa: F401
        except ImportError as error:
            return f"exporters.onnx is not importable ({error})"
    return None


def run_case(case: LookupCase) -> dict[str, Any]:
    """Set up, time and measure one method on one case; save its tokens."""
    torch.set_num_threads(case.threads)
    result: dict[str, Any] = {"case": asdict(case), "num_vectors": case.num_vectors}
    reason = skip_reason(case)
    if reason is not None:
        return {**result, "status": "skipped", "reason": reason}
    quantizer, latent = build_inputs(case)
    with tempfile.TemporaryDirectory(prefix="gsq-lookup-bench-") as workdir:
        if case.method == "eager":
            call = lambda: quantizer.codes(latent)
        elif case.method == "blocked":
            vectors, tables = grouped_vectors(latent, case.num_group), quantizer.lookup_tables()
            call = lambda: nearest_codes(vectors, tables, method="blocked")
        elif case.method == "full":
            codebook = quantizer.codebook.weight.detach()
            full = full_logits_lookup if case.quantizer == "ibq" else full_matrix_lookup
            call = lambda: full(latent, codebook, case.num_group)
        elif case.method in ("onnx", "onnx_dense"):
            lookup_kind = "dense" if case.method == "onnx_dense" else "auto"
            run_graph, lookup = onnx_lookup(case, quantizer, Path(workdir), lookup_kind)
            result["lookup"] = lookup["method"] + (f" W={lookup['window']}" if "window" in lookup else "")
            if graph_scratch_gib(case, lookup) > case.max_matrix_gib:
                size = format_gib(graph_scratch_gib(case, lookup))
                return {**result, "status": "skipped", "reason": f"the graph's lookup scratch needs {size} "
                        f"(> --max-matrix-gib {case.max_matrix_gib:g})"}
            latent_np = latent.numpy()
            call = lambda: run_graph(latent_np)
        else:
            raise ValueError(f"unknown method {case.method!r}; choose from {', '.join(METHODS)}")
        with torch.no_grad():
            rss_before = rss_mb()
            peak_resettable = reset_peak_rss()
            first = time_calls(call, repeats=1, warmup=0)  # includes one-time caches (sorted codebook, arenas)
            times = time_calls(call, repeats=case.repeats, warmup=0)
            tokens = np.asarray(call())
            peak_extra = peak_rss_mb() - rss_before
    if case.tokens_path:
        np.save(case.tokens_path, tokens.astype(np.int64).reshape(-1))
    return {
        **result,
        "status": "ok",
        "first_call_ms": 1e3 * first[0],
        **summarize_ms(times),
        "peak_extra_mb": max(0.0, peak_extra),
        "peak_measure": "VmHWM reset before the first call" if peak_resettable else "process lifetime peak",
    }


def main() -> None:
    """Run the case given as a JSON argument and print the result as one JSON line."""
    try:
        case = LookupCase(**json.loads(sys.argv[1]))
        result = run_case(case)
    except Exception as error:  # noqa: BLE001 - the process boundary: report it to the parent in one line
        result = {"status": "error", "reason": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
