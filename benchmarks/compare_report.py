"""Fidelity of one backend's outputs against the eager reference, and the report's table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.comparator import Comparator
from gsq_core.fidelity import LookupSpec


def load_outputs(path: Path, count: int) -> dict[str, list[np.ndarray] | None]:
    """codes, recon (and latent where the backend exposes it) per image from a worker's .npz."""
    with np.load(path) as data:
        outputs: dict[str, list[np.ndarray] | None] = {
            "codes": [data[f"codes_{i}"] for i in range(count)],
            "recon": [data[f"recon_{i}"] for i in range(count)],
            "recon_reference": [data[f"recon_reference_{i}"] for i in range(count)],
        }
        outputs["latent"] = [data[f"latent_{i}"] for i in range(count)] if "latent_0" in data else None
    return outputs


def fidelity(
    outputs: dict[str, Any], reference: dict[str, Any], inputs: list[np.ndarray], spec: LookupSpec
) -> dict[str, Any]:
    """One backend's outputs against the eager worker's (gsq_core.comparator): token agreement,
    score gaps and margins, latent error, PSNR against eager, PSNR / SSIM against the input images,
    codebook usage and perplexity; and, as detokenize_*, its decode of eager's tokens against eager's
    decode and against the input images (the decoder alone, whatever its encoder did)."""
    comparator, decoder = Comparator(spec), Comparator(spec)
    for index, image in enumerate(inputs):
        comparator.add_codes(outputs["codes"][index], reference["codes"][index], reference["latent"][index])
        if outputs["latent"] is not None:
            comparator.add_latent(outputs["latent"][index], reference["latent"][index])
        comparator.add_images(outputs["recon"][index], reference["recon"][index])
        comparator.add_quality(outputs["recon"][index], image)
        decoder.add_images(outputs["recon_reference"][index], reference["recon"][index])
        decoder.add_quality(outputs["recon_reference"][index], image)
    alone = decoder.report()
    return {
        **comparator.report(),
        "detokenize_psnr_db": alone["recon_psnr_db"],
        "detokenize_psnr_vs_input_db": alone["psnr_vs_input_db"],
        "detokenize_ssim_vs_input": alone["ssim_vs_input"],
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
            "| detok. PSNR vs input | SSIM | encode p50/p95 ms | decode p50/p95 ms | enc img/s | dec img/s "
            "| speedup enc/dec | % peak enc | usage % | perplexity | peak RSS MB | artifact MB |"
        ),
        "|" + "---|" * 20,
    ]
    for r in report["results"]:
        psnr_eager = "identical" if r["recon_identical"] else _fmt(r["recon_psnr_db"], ".1f")
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} | {r['token_agreement']:.4%} "
            f"| {r['max_disagreement_margin']:.1e} | {_fmt(r.get('latent_max_abs_error'), '.1e')} | {psnr_eager} "
            f"| {r['psnr_vs_input_db']:.2f} | {_fmt(r.get('detokenize_psnr_vs_input_db'))} | {r['ssim_vs_input']:.4f} "
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
            "of a differing token under the eager latent (near-ties below 1e-5 are rounding). PSNR vs input: the "
            "backend's own round trip; detok. PSNR vs input: the backend decoding eager's tokens. Speedups are eager "
            "p50 latency at batch 1 over the backend's; img/s is the best over batch sizes "
            f"{', '.join(str(b) for b in report['settings']['batch_sizes'])}; % peak enc: model FLOPs per image "
            "(convolutions and matmuls) times encode img/s, over the matmul peak measured in the same run."
        ),
    ]
    lines += ["", *fastest_faithful_lines(report.get("fastest_faithful_path") or {}, model["checkpoint"])]
    return "\n".join(lines) + "\n"


def fastest_faithful_lines(path: dict[str, Any], checkpoint: str) -> list[str]:
    """The report's closing lines: the fastest faithful path to tokenize and to detokenize."""
    criteria = path.get("criteria", {})
    tokenize, detokenize = path.get("tokenize"), path.get("detokenize")
    token_text = (
        "none qualifies"
        if tokenize is None
        else f"{tokenize['backend']} {tokenize['precision']} ({tokenize['encode_ms_p50']:.1f} ms, "
        f"{tokenize['speedup_vs_eager']:.2f}x eager, max score gap {tokenize['max_score_gap']:.1e})"
    )
    image_text = (
        "none qualifies"
        if detokenize is None
        else f"{detokenize['backend']} {detokenize['precision']} ({detokenize['decode_ms_p50']:.1f} ms, "
        f"{detokenize['speedup_vs_eager']:.2f}x eager, PSNR vs input {detokenize['psnr_vs_input_db']:.2f} dB, "
        f"{-detokenize['psnr_drop_db']:+.2f} dB against eager)"
    )
    return [
        f"**Fastest faithful path** (`{checkpoint}`): tokenize: {token_text}; detokenize: {image_text}.",
        f"(tokenize: {criteria.get('tokenize', '')}; detokenize: {criteria.get('detokenize', '')})",
    ]


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
