"""Every backend and precision against the eager PyTorch reference: fidelity and speed side by side.

    python benchmarks/compare.py --ckpt PATH_OR_NAME --images DIR_OR_FILES [...] \
        --backends torch,onnx[,openvino,trt] [--precisions fp32,fp16,int8,encoder=fp32+decoder=int8] \
        [--batch-sizes 1,8] [--repeats N] [--threads N] [--artifacts DIR] --out DIR [--overwrite]

A precision is one for every graph (fp32, fp16, bf16, int8) or one per part, written
`encoder=fp32+decoder=int8` ('+' between the parts, since ',' separates the list; a part not named is
fp32; the lookup is fp32 always), as gsq-export's --precision takes it.

Exports what a backend needs (or reuses --artifacts DIR/<backend>-<precision slug>, e.g.
onnx-encoder_fp32+decoder_int8), then measures every backend + precision in its own process on the
same images (benchmarks/backend_worker.py). Eager PyTorch fp32 always runs: it is the reference,
and every other backend also decodes eager's tokens, so its decoder is judged on its own. Writes
DIR/report.json, DIR/report.md and DIR/speed_vs_fidelity.png, and ends with the fastest faithful
path (fastest_faithful_path): the fastest backend / precision to tokenize whose every token is an
optimal choice, and the fastest to detokenize whose PSNR against the input is within 0.3 dB of
eager's. Backends or precisions that cannot run here are listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import machine_info, missing_package, run_json_worker, time_calls
from gsq_core.checkpoint_options import add_checkpoint_arguments
from gsq_core.errors import GSQError

if TYPE_CHECKING:
    from gsq_deploy.exporters.precision import PrecisionPlan

REPO_ROOT = Path(__file__).resolve().parents[1]
# report.json's layout: 2 added schema_version itself and writes each renamed result field under
# its old name too (DEPRECATED_FIELDS, old -> new name); the old names go in version 3.
SCHEMA_VERSION = 2
DEPRECATED_FIELDS = {
    "disagreement_max_margin": "max_disagreement_margin",
    "recon_psnr_vs_eager_db": "recon_psnr_db",
}
REFERENCE = ("torch", "fp32")  # backend and precision (the report's spec) of the eager reference
FAITHFUL_SCORE_GAP = 1e-5  # tokenize: every token within this float64 score gap of the best code
FAITHFUL_PSNR_DROP_DB = 0.3  # detokenize: PSNR against the input at most this far below eager's


class Unavailable(Exception):
    """A backend or precision that cannot run on this machine; the message is the reason."""


def comma_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
    return values


def precision_list(text: str) -> list[PrecisionPlan]:
    """The precision plans of `fp32,int8,encoder=fp32+decoder=int8` (exporters.precision), each once:
    parsed here, at the command line, and passed on as plans."""
    from gsq_deploy.exporters.precision import PrecisionPlan

    try:
        return list(dict.fromkeys(PrecisionPlan.parse(item) for item in comma_list(text)))
    except GSQError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--precision ", "")) from None


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: values must be >= 1")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compare.py", description="Compare every backend and precision against eager PyTorch."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint path or name (the eager reference)")
    add_checkpoint_arguments(parser)  # --config FILE, --no-ema (IBQ Lightning checkpoints)
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or directories")
    parser.add_argument(
        "--backends", type=comma_list, default=["torch", "onnx"], help="of torch,onnx,openvino,trt (runtimes.BACKENDS)"
    )
    parser.add_argument(
        "--precisions",
        type=precision_list,
        default="fp32",  # argparse passes a text default through precision_list
        help="e.g. fp32,fp16,int8,encoder=fp32+decoder=int8 (one per part: '+' between parts)",
    )
    parser.add_argument("--batch-sizes", type=positive_ints, default=[1, 8], help="throughput batch sizes")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed passes over the timing images")
    parser.add_argument("--threads", type=positive_int, default=2, help="intra-op threads for every backend")
    parser.add_argument("--artifacts", type=Path, help="reuse exported artifacts from DIR/<backend>-<precision slug>")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report (and exports in --out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# -- artifacts ------------------------------------------------------------------------------------
def artifact_for(backend: str, precision: PrecisionPlan, args: argparse.Namespace, model: Any) -> Path:
    """The checkpoint (torch) or artifact directory a runtime opens; exports it when needed."""
    if backend == "torch":
        if precision.single != "fp32":
            raise Unavailable("the torch runtime is the fp32 eager reference; it has no reduced precisions")
        return Path(args.ckpt_path)
    name = artifact_name(backend, precision)
    if args.artifacts is not None:
        for candidate in (args.artifacts / name, args.artifacts):
            if _manifest_matches(candidate, backend, precision, args):
                return candidate
    exported = args.out / "artifacts" / name
    if _manifest_matches(exported, backend, precision, args) and not args.overwrite:
        return exported
    return _export(backend, precision, model, exported, args)


def artifact_name(backend: str, precision: PrecisionPlan) -> str:
    """The folder name of one backend + precision export: onnx-int8, onnx-encoder_fp32+decoder_int8."""
    return f"{backend}-{precision.slug}"


def _manifest_matches(directory: Path, backend: str, precision: PrecisionPlan, args: argparse.Namespace) -> bool:
    """Whether directory holds a backend + precision export; GSQError when it holds one of another checkpoint."""
    from gsq_deploy.runtimes.artifacts import load_artifact

    if not (directory / "manifest.json").is_file():
        return False
    manifest = load_artifact(directory, verify_checksums=False).manifest
    if manifest.get("target") != backend or manifest.get("precision") != str(precision):  # the canonical spec
        return False
    source = (manifest.get("source") or {}).get("sha256")
    if source != args.ckpt_sha256:
        found = f"checkpoint sha256 {source[:12]}..." if source else "an unrecorded checkpoint"
        raise GSQError(
            f"{directory}: exported from {found}, not from {args.ckpt} (sha256 {args.ckpt_sha256[:12]}...); "
            "comparing it with this checkpoint would measure two different models: re-export it"
            + (" or drop --artifacts" if args.artifacts else " (--overwrite)")
        )
    return True


def _export(backend: str, precision: PrecisionPlan, model: Any, out_dir: Path, args: argparse.Namespace) -> Path:
    """Export with the target's exporter (exporters.build); compare.py measures fidelity itself."""
    from gsq_deploy.exporters import TARGETS
    from gsq_deploy.exporters.build import ExportOptions, export

    if backend not in TARGETS:
        raise Unavailable(f"no exporter for {backend!r} (targets: {', '.join(TARGETS)})")
    options = ExportOptions(precision=precision, validate=False, progress=False, overwrite=True)
    try:
        export(model, out_dir, backend, options)
    except GSQError as error:
        raise Unavailable(f"export failed: {error}") from None
    return out_dir


def runtime_options(backend: str, threads: int) -> dict[str, Any]:
    """Options of one runtime, as that runtime declares them (runtimes.runtime_class(...).options):
    the thread count goes to the runtimes that take a `threads` option (onnx, openvino); TensorRT
    takes a device and runs on its default one; torch's threads are its process's, set in its worker."""
    from gsq_deploy.runtimes import runtime_class

    return {"threads": threads} if "threads" in runtime_class(backend).options else {}


def reference_loading(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """The torch reference loads the checkpoint as the model here was loaded (--config, --no-ema)."""
    return {"config": args.config, "ema": args.ema} if backend == "torch" else {}


def directory_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


# -- measuring ------------------------------------------------------------------------------------
def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    return run_json_worker("benchmarks.backend_worker", json.dumps(job), REPO_ROOT)


def model_flops(model: Any, height: int, width: int) -> dict[str, int]:
    """FLOPs per image of encode (encoder + lookup matmuls) and decode, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros(1, model.config.input_channels, height, width)
    with torch.no_grad():
        with FlopCounterMode(display=False) as encode_counter:
            codes = model.encode(image)
        with FlopCounterMode(display=False) as decode_counter:
            model.decode(codes)
    return {"encode": int(encode_counter.get_total_flops()), "decode": int(decode_counter.get_total_flops())}


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a large square matmul with this many threads: the machine's practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(time_calls(lambda: torch.mm(a, b), repeats=repeats))
    return 2.0 * size**3 / best / 1e9


def result_record(
    backend: str,
    precision: PrecisionPlan,
    worker: dict[str, Any],
    quality: dict[str, Any],
    reference: dict[str, Any],
    extra: dict,
) -> dict[str, Any]:
    """One entry of report.json's results list."""
    best = max(worker["throughput"].values(), key=lambda t: t["encode_img_s"])
    best_decode = max(t["decode_img_s"] for t in worker["throughput"].values())
    encode_p50, decode_p50 = worker["encode_ms"]["median_ms"], worker["decode_ms"]["median_ms"]
    flops, peak = extra["flops"], extra["matmul_gflops"] * 1e9
    record = {
        "backend": backend,
        "precision": str(precision),
        "device": str(worker["info"]["device"]),
        **quality,
        "encode_ms_p50": encode_p50,
        "encode_ms_p95": worker["encode_ms"]["p95_ms"],
        "decode_ms_p50": decode_p50,
        "decode_ms_p95": worker["decode_ms"]["p95_ms"],
        "throughput_img_s": best["encode_img_s"],
        "decode_throughput_img_s": best_decode,
        "throughput_by_batch": worker["throughput"],
        "speedup_vs_eager": reference["encode_ms"]["median_ms"] / encode_p50,
        "decode_speedup_vs_eager": reference["decode_ms"]["median_ms"] / decode_p50,
        "throughput_speedup_vs_eager": best["encode_img_s"]
        / max(t["encode_img_s"] for t in reference["throughput"].values()),
        "encode_fraction_of_peak": flops["encode"] * best["encode_img_s"] / peak if peak else None,
        "decode_fraction_of_peak": flops["decode"] * best_decode / peak if peak else None,
        "peak_rss_mb": worker["peak_rss_mb"],
        "torch_loaded": worker["torch_loaded"],
        "artifact_mb": extra["artifact_mb"],
        "timing_spread_pct": {"encode": worker["encode_ms"]["spread_pct"], "decode": worker["decode_ms"]["spread_pct"]},
        "runtime_info": worker["info"],
    }
    for old, new in DEPRECATED_FIELDS.items():  # the old names, for one schema version
        if new in record:
            record[old] = record[new]
    return record


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, measure every backend + precision, score fidelity; return the report."""
    import tempfile

    import numpy as np
    import torch
    from tqdm import tqdm

    from benchmarks.backend_worker import timing_images
    from benchmarks.compare_report import fidelity, load_outputs
    from gsq_deploy.exporters.precision import PrecisionPlan
    from gsq_core.api import load_tokenizer, resolve_checkpoint
    from gsq_core.budgets import check_work
    from gsq_core.images import expand_image_paths, inspect_image, read_image
    from gsq_deploy.runtimes.artifacts import file_sha256

    args.ckpt_path = resolve_checkpoint(args.ckpt)
    args.ckpt_sha256 = file_sha256(args.ckpt_path)
    model = load_tokenizer(args.ckpt_path, config=args.config, ema=args.ema).eval()
    paths = expand_image_paths(args.images)
    factor = model.downsample_factor
    for header in [inspect_image(path) for path in paths]:  # every image's size, before decoding any
        if header.height % factor or header.width % factor:
            raise GSQError(f"{header.name}: size {header.height}x{header.width} is not a multiple of {factor} (the model's f)")
        check_work(model.config, header.height, header.width, "decode", label=header.name)
        for note in header.notes:
            print(f"note: {note}", file=sys.stderr)
    inputs = [read_image(path).pixels[None] for path in paths]
    timing_size = list(timing_images(inputs)[0].shape[2:])
    spec = model.quantizer.lookup_spec()

    reference = (REFERENCE[0], PrecisionPlan.uniform(REFERENCE[1]))
    pairs = [reference] + [(b, p) for b in args.backends for p in args.precisions if (b, p) != reference]
    if args.artifacts is not None:  # an artifact of another checkpoint is refused before anything is measured
        for backend, precision in pairs:
            for candidate in (args.artifacts / artifact_name(backend, precision), args.artifacts):
                _manifest_matches(candidate, backend, precision, args)
    skipped: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    extra = {"flops": model_flops(model, *timing_size), "matmul_gflops": matmul_gflops(args.threads)}
    reference_outputs = reference_worker = None
    progress = tqdm(total=len(pairs), disable=args.no_progress, unit="backend", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gsq-compare-") as workdir:
        for backend, precision in pairs:
            progress.set_description(f"{backend} {precision}")
            try:
                target = artifact_for(backend, precision, args, model)
            except Unavailable as reason:
                skipped.append({"backend": backend, "precision": str(precision), "reason": str(reason)})
                progress.update()
                continue
            outputs_path = Path(workdir) / f"{artifact_name(backend, precision)}.npz"
            job = {
                "backend": backend,
                "model": str(target),
                "options": runtime_options(backend, args.threads) | reference_loading(backend, args),
                "threads": args.threads,
                "images": [str(p) for p in paths],
                "batch_sizes": args.batch_sizes,
                "repeats": args.repeats,
                "outputs": str(outputs_path),
                # every backend also decodes eager's tokens: its decoder judged on its own
                "reference_codes": str(Path(workdir) / "reference_codes.npz") if reference_outputs else None,
            }
            worker = run_worker(job)
            progress.update()
            if worker["status"] != "ok":
                if (backend, precision) == reference:
                    raise GSQError(f"the eager reference failed: {worker['reason']}")
                skipped.append({"backend": backend, "precision": str(precision), "reason": worker["reason"]})
                continue
            outputs = load_outputs(outputs_path, len(paths))
            if (backend, precision) == reference:
                reference_outputs, reference_worker = outputs, worker
                codes = {f"codes_{index}": value for index, value in enumerate(outputs["codes"])}
                np.savez(Path(workdir) / "reference_codes.npz", **codes)
            quality = fidelity(outputs, reference_outputs, inputs, spec)
            extra["artifact_mb"] = directory_mb(target)
            results.append(result_record(backend, precision, worker, quality, reference_worker, extra))
        progress.close()
    config = model.config
    return {
        "benchmark": "backend comparison",
        "schema_version": SCHEMA_VERSION,
        "deprecated_fields": {
            old: f"renamed {new}; also written under the old name in schema_version {SCHEMA_VERSION}, removed in "
            f"{SCHEMA_VERSION + 1}"
            for old, new in DEPRECATED_FIELDS.items()
        },
        "model": {
            "checkpoint": str(args.ckpt),
            "checkpoint_path": str(args.ckpt_path),
            "num_embed": model.num_embed,
            "num_group": model.num_group,
            "group_dim": model.quantizer.group_dim,
            "family": model.family,
            "quantize_type": config.quantizer.quantize_type,
            "lookup_normalization": config.quantizer.lookup_normalization,
            "downsample_factor": factor,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "flops_per_image": extra["flops"],
        },
        "machine": {
            **machine_info(),
            "torch_threads": torch.get_num_threads(),
            "matmul_gflops": extra["matmul_gflops"],
            "matmul_size": 2048,
        },
        "settings": {
            "backends": args.backends,
            "precisions": [str(plan) for plan in args.precisions],
            "batch_sizes": args.batch_sizes,
            "repeats": args.repeats,
            "threads": args.threads,
            "artifacts": str(args.artifacts) if args.artifacts else None,
        },
        "images": {
            "count": len(paths),
            "paths": [str(p) for p in paths],
            "sizes": sorted({f"{i.shape[2]}x{i.shape[3]}" for i in inputs}),
            "timing_size": timing_size,
            "tokens_per_image": [int(np.prod(c.shape)) for c in reference_outputs["codes"]],
        },
        "results": results,
        "skipped": skipped,
        "fastest_faithful_path": fastest_faithful_path(results),
    }


def fastest_faithful_path(results: list[dict[str, Any]]) -> dict[str, Any]:
    """For tokenizing, the fastest backend / precision (p50 at batch 1) whose every token is an
    optimal choice (float64 score gap <= 1e-5); for detokenizing, the fastest whose PSNR against the
    input, decoding eager's tokens, is at most 0.3 dB below eager's. None where nothing qualifies."""
    reference = next((r for r in results if (r["backend"], r["precision"]) == REFERENCE), None)
    eager_psnr = reference["detokenize_psnr_vs_input_db"] if reference else None
    tokenizers = [r for r in results if r.get("max_score_gap") is not None and r["max_score_gap"] <= FAITHFUL_SCORE_GAP]
    detokenizers = [
        r
        for r in results
        if eager_psnr is not None
        and r.get("detokenize_psnr_vs_input_db") is not None
        and r["detokenize_psnr_vs_input_db"] >= eager_psnr - FAITHFUL_PSNR_DROP_DB
    ]
    tokenize = min(tokenizers, key=lambda r: r["encode_ms_p50"], default=None)
    detokenize = min(detokenizers, key=lambda r: r["decode_ms_p50"], default=None)
    return {
        "criteria": {
            "tokenize": f"every token an optimal choice (score gap <= {FAITHFUL_SCORE_GAP:g})",
            "detokenize": f"PSNR vs input (eager's tokens) within {FAITHFUL_PSNR_DROP_DB} dB of eager's",
        },
        "tokenize": None
        if tokenize is None
        else {
            "backend": tokenize["backend"],
            "precision": tokenize["precision"],
            "encode_ms_p50": tokenize["encode_ms_p50"],
            "speedup_vs_eager": tokenize["speedup_vs_eager"],
            "max_score_gap": tokenize["max_score_gap"],
        },
        "detokenize": None
        if detokenize is None
        else {
            "backend": detokenize["backend"],
            "precision": detokenize["precision"],
            "decode_ms_p50": detokenize["decode_ms_p50"],
            "speedup_vs_eager": detokenize["decode_speedup_vs_eager"],
            "psnr_vs_input_db": detokenize["detokenize_psnr_vs_input_db"],
            "psnr_drop_db": eager_psnr - detokenize["detokenize_psnr_vs_input_db"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gsq_deploy.runtimes import check_backend

    try:  # a backend name that does not exist is refused before any work
        for backend in args.backends:
            check_backend(backend, "--backends")
    except GSQError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = missing_package("benchmarks/compare.py", ("torch", "bench"), ("skimage", "bench"))
    if problem:  # the eager reference runs in torch; SSIM comes from scikit-image
        print(problem, file=sys.stderr)
        return 2
    report_path = args.out / "report.json"
    from benchmarks.compare_report import markdown_report, plot_speed_vs_fidelity
    from gsq_core.checkpoint import atomic_write
    from gsq_core.outputs import check_output_files

    try:  # every output checked before any work, and again none of them may be an input
        outputs = [report_path, args.out / "report.md", args.out / "speed_vs_fidelity.png"]
        check_output_files(args.out, outputs, args.overwrite, inputs=args.images)
        report = run(args)
    except (GSQError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_report(report)
    atomic_write(args.out / "report.md", lambda tmp: tmp.write_text(table, encoding="utf-8"), overwrite=True)
    atomic_write(report_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"), overwrite=True)
    plot_path = args.out / "speed_vs_fidelity.png"
    try:
        plot_speed_vs_fidelity(report["results"], plot_path)
    except ImportError:
        print("note: matplotlib is not installed; no plot written (pip install matplotlib)", file=sys.stderr)
    print(table)
    print(f"wrote {report_path}, {args.out / 'report.md'}" + (f", {plot_path}" if plot_path.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
