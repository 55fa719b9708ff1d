"""The quantizer lookup alone: time, peak memory and token agreement over V, G x d and batch.

    python benchmarks/quantizer.py                       # the default sweep
    python benchmarks/quantizer.py --target              # only the issue's target case
    python benchmarks/quantizer.py --ibq-target          # IBQ's largest lookup: V = 262,144, D = 256
    python benchmarks/quantizer.py --vocab-sizes 1024,65536 --groups 8x2,4x4 --batch-sizes 1,8 \
        --methods eager,blocked,full,onnx --repeats 5 --threads 2 --out out/bench/quantizer.json

Each (case, method) runs in its own process (benchmarks/lookup_worker.py) so its peak memory is its
own; methods of one case see the same codebook and latent. Tokens are checked against the exact
lookup (gsq_core.lookup, method="exact": float64 scores, lowest index on ties) on all vectors where
the sorted search applies (d <= 2) and on the first --check-rows vectors otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lookup_case import METHODS, LookupCase

# The target: V = 65,536, G = 8, d = 2, batch 8 at 256x256 with f16 (N = 16,384 vectors).
TARGET = {"num_embed": 65536, "num_group": 8, "group_dim": 2, "batch": 8, "image_size": 256, "downsample": 16}
TARGET_SPEEDUP, TARGET_EXTRA_MB = 5.0, 1024.0
# IBQ's largest published tokenizer (IBQ-Tokenizer-262144): V = 262,144 codes of D = 256 (one group),
# score = raw dot product; batch 8 at 256x256 with f16 (N = 2,048 vectors, 137 G multiply-adds).
IBQ_TARGET = {"num_embed": 262144, "num_group": 1, "group_dim": 256, "batch": 8, "image_size": 256,
              "downsample": 16, "quantizer": "ibq"}


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return values


def parse_groups(text: str) -> list[tuple[int, int]]:
    """'8x2,4x4' -> [(8, 2), (4, 4)]: G groups of d channels."""
    pairs = []
    for part in text.split(","):
        try:
            groups, dim = (int(value) for value in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not GxD (for example 8x2)") from None
        if groups < 1 or dim < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: G and d must be >= 1")
        pairs.append((groups, dim))
    return pairs


def parse_methods(text: str) -> list[str]:
    methods = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or text!r}; choose from {METHODS}")
    return methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/quantizer.py",
        description="Benchmark the quantizer lookup: eager, forced blocked, upstream full matrix, ONNX graph.",
    )
    parser.add_argument("--vocab-sizes", type=parse_int_list, default=[1024, 16384, 65536, 262144])
    parser.add_argument("--groups", type=parse_groups, default=[(16, 1), (8, 2), (4, 4), (2, 8)], help="GxD pairs")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[1, 8])
    parser.add_argument("--image-size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--downsample", type=int, default=16, help="image pixels per token (f)")
    parser.add_argument("--methods", type=parse_methods, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case after one warm-up call")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (torch and ONNX Runtime)")
    parser.add_argument("--max-matrix-gib", type=float, default=6.0, help="skip methods needing a bigger N x V block")
    parser.add_argument("--check-rows", type=int, default=4096, help="vectors checked against the exact lookup (d > 2)")
    parser.add_argument("--target", action="store_true", help="run only the issue's target case")
    parser.add_argument("--ibq-target", action="store_true", help="run only the IBQ case: V=262144, D=256, batch 8")
    parser.add_argument("--quantizer", choices=("gsq", "ibq"), default="gsq",
                        help="gsq: l2-normalised nearest code; ibq: raw dot-product argmax (SEED-Voken)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/bench/quantizer.json"), help="JSON report path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def sweep_cases(args: argparse.Namespace) -> list[LookupCase]:
    """Every (V, G x d, batch) point of the sweep, method left to fill in."""
    common = {
        "threads": args.threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "max_matrix_gib": args.max_matrix_gib,
    }
    if args.target:
        return [LookupCase(**TARGET, **common)]
    if args.ibq_target:
        return [LookupCase(**IBQ_TARGET, **common)]
    return [
        LookupCase(
            num_embed=vocab,
            num_group=groups,
            group_dim=dim,
            batch=batch,
            image_size=args.image_size,
            downsample=args.downsample,
            quantizer=args.quantizer,
            **common,
        )
        for groups, dim in args.groups
        for vocab in args.vocab_sizes
        for batch in args.batch_sizes
    ]


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width text table, one line per case and method."""
    header = (
        f"{'lookup':<6} {'V':>7} {'GxD':>5} {'B':>2} {'N':>6} {'method':<10} {'median ms':>10} {'min-max ms':>17} "
        f"{'extra MB':>9} {'vs full':>8} {'= exact':>8} {'max gap':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for r in records:
        group = f"{r['num_group']}x{r['group_dim']}"
        prefix = (
            f"{r.get('quantizer', 'gsq'):<6} {r['num_embed']:>7} {group:>5} {r['batch']:>2} {r['num_vectors']:>6} "
            f"{r['method']:<10}"
        )
        if r.get("status") != "ok":
            lines.append(
                f"{prefix} {'-':>10} {'-':>17} {'-':>9} {'-':>8} {'-':>8} {'-':>8}  {r['status']}: {r['reason']}"
            )
            continue
        spread = f"{r['min_ms']:.1f}-{r['max_ms']:.1f}"
        speedup = f"{r['speedup_vs_full']:.1f}x" if "speedup_vs_full" in r else "-"
        lines.append(
            f"{prefix} {r['median_ms']:>10.2f} {spread:>17} {r['peak_extra_mb']:>9.1f} {speedup:>8} "
            f"{r['agreement_vs_exact']:>8.4f} {r['max_gap_vs_exact']:>8.1e}  {r.get('lookup', '')}"
        )
    return "\n".join(lines)


def target_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's target, judged on the records of the target case (None when it was not run)."""
    at_target = {
        r["method"]: r
        for r in records
        if all(r[key] == TARGET[key] for key in ("num_embed", "num_group", "group_dim", "batch", "image_size"))
    }
    eager, full = at_target.get("eager"), at_target.get("full")
    if not eager or not full or eager.get("status") != "ok" or full.get("status") != "ok":
        return None
    summary = {
        "case": TARGET,
        "eager_ms": eager["median_ms"],
        "full_matrix_ms": full["median_ms"],
        "speedup": eager["speedup_vs_full"],
        "eager_extra_mb": eager["peak_extra_mb"],
        "full_matrix_extra_mb": full["peak_extra_mb"],
        "eager_agreement_vs_exact": eager["agreement_vs_exact"],
        "full_matrix_agreement_vs_exact": full["agreement_vs_exact"],
        "full_matrix_max_gap_vs_exact": full["max_gap_vs_exact"],
        "eager_vs_full_agreement": full.get("agreement_vs_eager"),
    }
    summary["met"] = (
        summary["speedup"] >= TARGET_SPEEDUP
        and summary["eager_extra_mb"] < TARGET_EXTRA_MB
        and summary["eager_agreement_vs_exact"] == 1.0
    )
    return summary


def ibq_target_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The IBQ case: every method's time and extra memory; bounded means < TARGET_EXTRA_MB for eager and ONNX."""
    keys = ("quantizer", "num_embed", "num_group", "group_dim", "batch", "image_size")
    at_target = {r["method"]: r for r in records if all(r.get(key) == IBQ_TARGET[key] for key in keys)}
    if at_target.get("eager", {}).get("status") != "ok":
        return None
    summary: dict[str, Any] = {"case": IBQ_TARGET, "limit_extra_mb": TARGET_EXTRA_MB}
    for method, record in at_target.items():
        if record.get("status") == "ok":
            summary[method] = {key: record.get(key) for key in (
                "median_ms", "peak_extra_mb", "agreement_vs_exact", "max_gap_vs_exact", "speedup_vs_full")}
        else:
            summary[method] = {"status": record.get("status"), "reason": record.get("reason")}
    bounded = [m for m in ("eager", "onnx") if m in summary and "peak_extra_mb" in summary[m]]
    summary["met"] = bool(bounded) and all(summary[m]["peak_extra_mb"] < TARGET_EXTRA_MB for m in bounded)
    return summary


def main(argv: list[str] | None = None) -> int:
    from benchmarks.measure import missing_package

    args = build_parser().parse_args(argv)
    problem = missing_package("benchmarks/quantizer.py", ("torch", "bench"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.image_size % args.downsample:
        print(
            f"error: --image-size {args.image_size} is not a multiple of --downsample {args.downsample}",
            file=sys.stderr,
        )
        return 2
    import torch
    from tqdm import tqdm

    from benchmarks.lookup_sweep import measure_case
    from benchmarks.measure import machine_info, write_json

    torch.set_num_threads(args.threads)
    cases = sweep_cases(args)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gsq-quantizer-bench-") as workdir:
        progress = tqdm(total=len(cases) * len(args.methods), disable=args.no_progress, unit="run", file=sys.stderr)
        for case in cases:
            progress.set_description(f"V={case.num_embed} {case.num_group}x{case.group_dim} B={case.batch}")
            records.extend(measure_case(case, args.methods, args.check_rows, Path(workdir)))
            progress.update(len(args.methods))
        progress.close()
    report = {
        "benchmark": "quantizer lookup",
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": records,
        "target": target_summary(records),
        "ibq_target": ibq_target_summary(records),
    }
    write_json(args.out, report, overwrite=args.overwrite)
    print(format_table(records))
    target = report["target"]
    if target is not None:
        print(
            f"\ntarget (V=65536, G=8, d=2, batch 8 at 256x256, f16; N=16384): eager {target['eager_ms']:.1f} ms vs "
            f"full matrix {target['full_matrix_ms']:.1f} ms = {target['speedup']:.1f}x (target >= {TARGET_SPEEDUP:g}x), "
            f"extra memory {target['eager_extra_mb']:.0f} MB vs {target['full_matrix_extra_mb']:.0f} MB, "
            f"eager tokens = exact: {target['eager_agreement_vs_exact']:.4f}, full matrix = exact: "
            f"{target['full_matrix_agreement_vs_exact']:.4f} (max gap {target['full_matrix_max_gap_vs_exact']:.1e}); "
            f"{'met' if target['met'] else 'NOT met'}"
        )
    ibq = report["ibq_target"]
    if ibq is not None:
        parts = [
            f"{method} {ibq[method]['median_ms']:.0f} ms, +{ibq[method]['peak_extra_mb']:.0f} MB"
            for method in ("eager", "blocked", "onnx", "full")
            if method in ibq and "median_ms" in ibq[method]
        ]
        print(
            f"\nIBQ target (V=262144, D=256, batch 8 at 256x256, f16; N=2048): {'; '.join(parts)}; eager and ONNX "
            f"under {TARGET_EXTRA_MB:.0f} MB extra: {'met' if ibq['met'] else 'NOT met'}"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
