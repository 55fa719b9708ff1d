"""Runtime settings of ONNX Runtime and OpenVINO, measured on exported artifacts: per-image encode and
decode time in blocks (every encode, then every decode) and alternating (encode and decode of one
image, then the next), each setting and order in its own process, rounds interleaved.

    python benchmarks/runtime_options.py --onnx out/default-onnx --openvino out/default-ov \
        --images out/photos --threads 2 --rounds 3 --out out/bench/runtime_options.json

    # ONNX Runtime only, two settings, also a static export (gsq-export ... --static --image-size 256x256)
    python benchmarks/runtime_options.py --onnx out/default-onnx --onnx-static out/default-onnx-static \
        --settings ort-as-before,ort,ort-static --images out/photos --out out/bench/ort.json

    # tokenize only, eager against ONNX Runtime, 8 images per call
    python benchmarks/runtime_options.py --torch CKPT --onnx out/model-onnx --settings torch,ort \
        --modes encode --batch 8 --images out/photos --out out/bench/tokenize_b8.json

Settings (--settings, default all that the given artifacts allow) are named in SETTINGS: the
runtime's own defaults ("ort", "ov"), the variants they were chosen against, and "torch" (eager).
Prints a table and writes JSON (with the machine's load average: timings under load are ratios, not
absolute speeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import run_json_worker

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# name -> (backend, artifact kind, runtime options). "ort" / "ov" are the runtimes' defaults
# (runtimes.onnx.SESSION_CONFIG, runtimes.openvino.COMPILE_CONFIG); the others change one thing.
ORT_OWN_DEFAULTS = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"}
SETTINGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch": ("torch", "checkpoint", {}),  # eager PyTorch, the reference (--torch CKPT)
    "ort": ("onnx", "dynamic", {}),
    # ONNX Runtime's own defaults: the runtime before issue 12
    "ort-as-before": ("onnx", "dynamic", {"session_config": ORT_OWN_DEFAULTS, "memory": "session"}),
    "ort-spin-stop": ("onnx", "dynamic", {"session_config": {"session.intra_op.allow_spinning": "1"}}),
    "ort-spin-100us": (
        "onnx",
        "dynamic",
        {"session_config": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "100"}},
    ),
    "ort-session-memory": ("onnx", "dynamic", {"memory": "session"}),  # per-session arenas + memory patterns
    "ort-block-base-4": ("onnx", "dynamic", {"session_config": {"session.dynamic_block_base": "4"}}),
    "ort-extended": ("onnx", "dynamic", {"graph_optimization": "extended"}),  # no NCHWc layout transformer
    "ort-basic": ("onnx", "dynamic", {"graph_optimization": "basic"}),
    "ort-static": ("onnx", "static", {}),
    "ov": ("openvino", "dynamic", {}),
    "ov-throughput": ("openvino", "dynamic", {"config": {"PERFORMANCE_HINT": "THROUGHPUT"}}),
    "ov-pinning": ("openvino", "dynamic", {"config": {"ENABLE_CPU_PINNING": True}}),
    "ov-static": ("openvino", "static", {}),
}


def image_paths(items: list[str]) -> list[str]:
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(str(path))
        else:
            raise SystemExit(f"error: {item}: no such image file or folder")
    if not paths:
        raise SystemExit(f"error: no images in {' '.join(items)}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/runtime_options.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", help="checkpoint (path or name) for the eager reference setting 'torch'")
    parser.add_argument("--onnx", type=Path, help="dynamic ONNX artifact (gsq-export --target onnx)")
    parser.add_argument("--onnx-static", type=Path, help="static ONNX artifact (--static --image-size HxW)")
    parser.add_argument("--openvino", type=Path, help="dynamic OpenVINO artifact (gsq-export --target openvino)")
    parser.add_argument("--openvino-static", type=Path, help="static OpenVINO artifact")
    parser.add_argument("--settings", help=f"comma-separated, from {', '.join(SETTINGS)} (default: all runnable)")
    parser.add_argument("--modes", default="blocks,alternating", help="call orders: blocks,alternating,encode")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders (one size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the images per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting and order (interleaved)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/runtime_options.json"))
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    from benchmarks.measure import write_json

    args = build_parser().parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    artifacts = {
        ("torch", "checkpoint"): args.torch,
        ("onnx", "dynamic"): args.onnx,
        ("onnx", "static"): args.onnx_static,
        ("openvino", "dynamic"): args.openvino,
        ("openvino", "static"): args.openvino_static,
    }
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        print(f"error: unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    names = [name for name in names if artifacts[SETTINGS[name][:2]] is not None]
    if not names:
        print("error: no setting can run: give --torch, --onnx and/or --openvino (and the static artifacts)", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    if any(mode not in ("blocks", "alternating", "encode") for mode in modes):
        print(f"error: --modes {args.modes!r}: choose from blocks, alternating, encode", file=sys.stderr)
        return 2
    images = image_paths(args.images)
    load_before = os.getloadavg()[0]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {(name, mode): [] for name in names for mode in modes}
    for repeat in range(args.repeats):
        for name in names:
            backend, kind, options = SETTINGS[name]
            for mode in modes:
                job = {
                    "backend": backend,
                    "model": str(artifacts[(backend, kind)]),
                    "options": options,
                    "images": images,
                    "threads": args.threads,
                    "batch": args.batch,
                    "mode": mode,
                    "rounds": args.rounds,
                }
                result = run_json_worker("benchmarks.runtime_options_worker", json.dumps(job), REPO_ROOT)
                if result.get("status") != "ok":
                    print(f"error: {name} {mode}: {result.get('reason')}", file=sys.stderr)
                    return 1
                samples[(name, mode)].append(result)
                print(
                    f"[{repeat + 1}/{args.repeats}] {name:<18} {mode:<11} encode "
                    f"{result['encode_ms']['median_ms']:7.1f} ms  decode {result['decode_ms']['median_ms']:7.1f} ms",
                    file=sys.stderr,
                )
    rows = []
    for (name, mode), results in samples.items():
        backend, kind, options = SETTINGS[name]
        rows.append(
            {
                "setting": name,
                "backend": backend,
                "artifact": kind,
                "options": options,
                "mode": mode,
                # median over processes of each process's median per-image time
                "encode_ms": statistics.median(r["encode_ms"]["median_ms"] for r in results),
                "decode_ms": statistics.median(r["decode_ms"]["median_ms"] for r in results),
                "encode_cpu_ms": statistics.median(r["encode_cpu_ms"]["median_ms"] for r in results),
                "decode_cpu_ms": statistics.median(r["decode_cpu_ms"]["median_ms"] for r in results),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            }
        )
    report = {
        "benchmark": "runtime settings",
        "command": " ".join(["python", "benchmarks/runtime_options.py", *(argv if argv is not None else sys.argv[1:])]),
        "images": images,
        "threads": args.threads,
        "batch": args.batch,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "rows": rows,
    }
    write_json(args.out, report, overwrite=args.overwrite)
    print(format_table(rows, report["load_average_1m"]))
    print(f"\nwrote {args.out}")
    return 0


def format_table(rows: list[dict[str, Any]], load: dict[str, float]) -> str:
    """Markdown table: one line per setting, one column per call order and direction (wall ms, CPU ms)."""
    by_setting: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], {})[row["mode"]] = row
    present = {row["mode"] for row in rows}
    columns = [
        (mode, direction)
        for mode in ("blocks", "alternating", "encode")
        if mode in present
        for direction in (("encode",) if mode == "encode" else ("encode", "decode"))
    ]
    titles = [f"{direction}, {mode}" if mode != "encode" else "encode only" for mode, direction in columns]
    lines = [
        f"load average (1 min) {load['before']:.1f} before, {load['after']:.1f} after; "
        "per call: wall-clock ms (process CPU ms, all threads)",
        "",
        "| setting | " + " | ".join(titles) + " | peak RSS MB |",
        "|---|" + "---|" * len(columns) + "---|",
    ]
    for name, modes in by_setting.items():
        cells = []
        for mode, direction in columns:
            row = modes.get(mode)
            cells.append(
                "-" if row is None else f"{row[direction + '_ms']:.1f} ({row[direction + '_cpu_ms']:.0f})"
            )
        rss = max(row["peak_rss_mb"] for row in modes.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rss:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
