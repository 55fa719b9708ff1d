"""Fidelity of one backend's outputs against the eager reference, and the report's table and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.fidelity import (
    LookupSpec,
    codebook_perplexity,
    codebook_usage,
    psnr,
    score_gaps,
)

# PSNR of identical images is infinite; JSON has no infinity, so the report says null and flags it.
IDENTICAL = None


def _ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """SSIM of two [3, H, W] images in [-1, 1] (scikit-image, channels last, data range 2)."""
    from skimage.metrics import structural_similarity

    reference, test = reference.transpose(1, 2, 0), test.transpose(1, 2, 0)
    side = min(reference.shape[:2])
    window = 7 if side >= 7 else (side if side % 2 else side - 1)  # skimage needs an odd window <= the side
    return float(structural_similarity(reference, test, channel_axis=2, data_range=2.0, win_size=window))


def load_outputs(path: Path, count: int) -> dict[str, list[np.ndarray] | None]:
    """codes, recon (and latent where the backend exposes it) per image from a worker's .npz."""
    with np.load(path) as data:
        outputs: dict[str, list[np.ndarray] | None] = {
            "codes": [data[f"codes_{i}"] for i in range(count)],
            "recon": [data[f"recon_{i}"] for i in range(count)],
        }
        outputs["latent"] = [data[f"latent_{i}"] for i in range(count)] if "latent_0" in data else None
    return outputs


def fidelity(
    outputs: dict[str, Any], reference: dict[str, Any], inputs: list[np.ndarray], spec: LookupSpec
) -> dict[str, Any]:
    """Token agreement, margins of disagreements, latent error, PSNR/SSIM; codebook usage and perplexity."""
    codes, ref_codes = outputs["codes"], reference["codes"]
    same = sum(int((c == r).sum()) for c, r in zip(codes, ref_codes))
    total = sum(r.size for r in ref_codes)
    margins = [0.0]
    for latent, test_codes, eager_codes in zip(reference["latent"], codes, ref_codes):
        differing = test_codes != eager_codes
        if differing.any():  # margin of each disagreement, scored in float64 from the eager latent
            gaps = score_gaps(latent, test_codes, spec).reshape(test_codes.shape)
            margins.append(float(gaps[differing].max()))
    latent_error = None
    if outputs["latent"] is not None:
        latent_error = max(float(np.abs(a - b).max()) for a, b in zip(outputs["latent"], reference["latent"]))
    recon_psnrs = [psnr(r, t) for r, t in zip(reference["recon"], outputs["recon"])]
    finite = [value for value in recon_psnrs if math.isfinite(value)]
    clipped = [np.clip(r[0], -1.0, 1.0) for r in outputs["recon"]]
    all_codes = np.concatenate([c.reshape(-1) for c in codes])
    return {
        "token_agreement": same / total,
        "tokens_compared": total,
        "disagreement_max_margin": max(margins),
        "latent_max_abs_err": latent_error,
        "recon_psnr_vs_eager_db": min(finite) if finite else IDENTICAL,
        "recon_identical_to_eager": not finite,
        "psnr_vs_input_db": float(np.mean([psnr(x[0], y) for x, y in zip(inputs, clipped)])),
        "ssim_vs_input": float(np.mean([_ssim(x[0], y) for x, y in zip(inputs, clipped)])),
        "codebook_usage": codebook_usage(all_codes, spec.codebook.shape[0]),
        "codebook_perplexity": codebook_perplexity(all_codes, spec.codebook.shape[0]),
    }


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def markdown_report(report: dict[str, Any]) -> str:
    """The human side of report.json: one table row per backend + precision, then the skipped ones."""
    model, machine = report["model"], report["machine"]
    lines = [
        "# Backend comparison",
        "",
        (
            f"Model `{model['checkpoint']}`: V={model['num_embed']}, G={model['num_group']}, d={model['group_dim']}, "
            f"f={model['downsample_factor']}, {model['parameters'] / 1e6:.2f} M parameters; "
            f"{report['images']['count']} images, timings at {report['images']['timing_size'][0]}x"
            f"{report['images']['timing_size'][1]}, {report['settings']['threads']} threads, "
            f"{report['settings']['repeats']} repeats."
        ),
        (
            f"Machine: {machine['cpu']}, {machine['usable_cpus']} CPUs, load {machine.get('load_average_1m', 0):.1f} "
            f"at start; matmul peak {machine['matmul_gflops']:.1f} GFLOP/s (fp32, {machine['matmul_size']}^3)."
        ),
        "",
        (
            "| backend | precision | device | tokens = eager | max margin | latent err | PSNR vs eager | PSNR vs input "
            "| SSIM | encode p50/p95 ms | decode p50/p95 ms | enc img/s | dec img/s | speedup enc/dec | % peak enc "
            "| usage % | perplexity | peak RSS MB | artifact MB |"
        ),
        "|" + "---|" * 19,
    ]
    for r in report["results"]:
        psnr_eager = "identical" if r["recon_identical_to_eager"] else _fmt(r["recon_psnr_vs_eager_db"], ".1f")
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} | {r['token_agreement']:.4%} "
            f"| {r['disagreement_max_margin']:.1e} | {_fmt(r['latent_max_abs_err'], '.1e')} | {psnr_eager} "
            f"| {r['psnr_vs_input_db']:.2f} | {r['ssim_vs_input']:.4f} "
            f"| {r['encode_ms_p50']:.1f} / {r['encode_ms_p95']:.1f} | {r['decode_ms_p50']:.1f} / {r['decode_ms_p95']:.1f} "
            f"| {r['throughput_img_s']:.1f} | {r['decode_throughput_img_s']:.1f} "
            f"| {r['speedup_vs_eager']:.2f}x / {r['decode_speedup_vs_eager']:.2f}x "
            f"| {_fmt(r['encode_fraction_of_peak'], '.1%')} | {100 * r['codebook_usage']:.1f} "
            f"| {r['codebook_perplexity']:.1f} | {r['peak_rss_mb']:.0f} | {_fmt(r['artifact_mb'], '.1f')} |"
        )
    if report["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [f"- {s['backend']} {s['precision']}: {s['reason']}" for s in report["skipped"]]
    lines += [
        "",
        (
            "tokens = eager: share of tokens identical to eager PyTorch fp32; max margin: largest float64 score gap "
            "of a differing token under the eager latent (near-ties below 1e-5 are rounding). Speedups are eager "
            "p50 latency at batch 1 over the backend's; img/s is the best over batch sizes "
            f"{', '.join(str(b) for b in report['settings']['batch_sizes'])}; % peak enc: model FLOPs per image "
            "(convolutions and matmuls) times encode img/s, over the matmul peak measured in the same run."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot_speed_vs_fidelity(results: list[dict[str, Any]], path: Path) -> None:
    """Two panels: encode throughput against token agreement, and against PSNR to the input image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        label = f"{r['backend']} {r['precision']}"
        left.scatter(r["throughput_img_s"], 100 * r["token_agreement"], s=60)
        left.annotate(
            label, (r["throughput_img_s"], 100 * r["token_agreement"]), textcoords="offset points", xytext=(5, 4)
        )
        right.scatter(r["throughput_img_s"], r["psnr_vs_input_db"], s=60)
        right.annotate(label, (r["throughput_img_s"], r["psnr_vs_input_db"]), textcoords="offset points", xytext=(5, 4))
    left.set(xlabel="encode throughput (img/s, best batch)", ylabel="tokens identical to eager (%)")
    right.set(xlabel="encode throughput (img/s, best batch)", ylabel="PSNR of reconstruction vs input (dB)")
    left.set_title("speed vs token fidelity")
    right.set_title("speed vs image fidelity")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.ticklabel_format(useOffset=False)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)
