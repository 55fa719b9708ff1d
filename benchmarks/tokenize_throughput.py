"""gsq-tokenize against a plain single-process loop with the same runtime, on a mixed photo set.

    python benchmarks/tokenize_throughput.py --out out/bench-tokenize --images 200,2000 [--size 256]
        [--model default] [--batch-size 32] [--executors auto,ray] [--overwrite]

Makes a MIXED set from scikit-image's colour photos (no downloads): half PNG (1024x1024, 768x1024,
512x512 and 256x256 variants: resized, cropped, flipped), half JPEG (random crops of 300-640 px,
quality 90). Exports --model to ONNX once, then per image count measures, each as a whole process
from its start to its exit (Python start-up, imports and model load included):

  plain loop    one process: load_runtime("onnx", threads=cores), then per batch of --batch-size
                paths: decode + ADM crop (gsq_dataset.preprocess.preprocess_file), encode
  gsq-tokenize  the command per --executors value (auto: in-process on this machine; ray: a local
                Ray instance), --backend onnx, folder input, Parquet output

and reports per gsq-tokenize run: the whole command's img/s and its ratio to the plain loop, the
steady img/s (first tokenized batch to the last), the per-stage bound the run measured (the slowest
of decode+crop, tokenize and write, with the workers each had) and steady / bound, the start-up
(process start to the first batch) and shut-down (last batch to the end of the run). The 1-minute
load average is recorded before each measurement: on a shared machine, read the numbers with it.
Writes DIR/report.json and DIR/report.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.measure import machine_info, missing_package

REPO_ROOT = Path(__file__).resolve().parents[1]
# Colour photos that ship with scikit-image (no download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
PNG_SHAPES = ((1024, 1024), (768, 1024), (512, 512), (256, 256))  # (height, width), in turn


def comma_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/tokenize_throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for photos, outputs and the report")
    parser.add_argument("--images", type=lambda t: [int(v) for v in comma_list(t)], default=[200, 2000], help="image counts, e.g. 200,2000")
    parser.add_argument("--size", type=int, default=256, help="--size of gsq-tokenize (the ADM crop)")
    parser.add_argument("--model", default="default", help="checkpoint, exported to ONNX")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of the plain loop and of gsq-tokenize")
    parser.add_argument("--executors", type=comma_list, default=["auto", "ray"], help="gsq-tokenize --executor values to run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--plain-loop", nargs=4, metavar=("MODEL", "PHOTOS", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    return parser


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# -- the photos --------------------------------------------------------------------------------------
def make_mixed_photos(folder: Path, count: int, seed: int = 0) -> None:
    """count photos in folder: even indices PNG (PNG_SHAPES in turn: the photo resized to cover the
    shape, cropped at a random place, maybe flipped), odd indices JPEG (random crops 300-640 px)."""
    from PIL import Image

    from gsq_core.prepare import sample_photo

    marker = folder / "_photos.json"
    wanted = {"count": count, "seed": seed, "photos": list(PHOTOS), "png_shapes": [list(s) for s in PNG_SHAPES]}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return  # made before with the same recipe
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = [Image.fromarray(sample_photo(name)) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for index in range(count):
        photo = sources[index % len(sources)]
        if index % 2 == 0:
            height, width = PNG_SHAPES[(index // 2) % len(PNG_SHAPES)]
            scale = max(height / photo.height, width / photo.width) * float(rng.uniform(1.0, 1.3))
            resized = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))), Image.Resampling.BICUBIC)
            top = int(rng.integers(0, resized.height - height + 1))
            left = int(rng.integers(0, resized.width - width + 1))
            image = resized.crop((left, top, left + width, top + height))
            name, options = f"{index:05d}.png", {}
        else:
            limit = min(640, photo.height, photo.width)
            height, width = int(rng.integers(300, limit + 1)), int(rng.integers(300, limit + 1))
            top = int(rng.integers(0, photo.height - height + 1))
            left = int(rng.integers(0, photo.width - width + 1))
            image = photo.crop((left, top, left + width, top + height))
            name, options = f"{index:05d}.jpg", {"quality": 90}
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / name, **options)
    marker.write_text(json.dumps(wanted))


# -- the plain loop (run in its own process) -------------------------------------------------------------
def plain_loop(model: str, photos: Path, size: int, batch: int) -> None:
    """Decode + ADM crop + encode at `batch`, one process, the machine's cores as runtime threads."""
    from gsq_dataset.preprocess import model_input, preprocess_file
    from gsq_deploy.runtimes import load_runtime

    runtime = load_runtime("onnx", model, threads=len(os.sched_getaffinity(0)))
    factor = runtime.info.downsample_factor
    paths = sorted(path for path in photos.iterdir() if path.suffix in (".png", ".jpg"))
    tokens = 0
    for start in range(0, len(paths), batch):
        pixels = np.stack([preprocess_file(path, size, factor) for path in paths[start : start + batch]])
        tokens += runtime.encode(model_input(pixels)).shape[0]
    print(json.dumps({"images": tokens}))


# -- the measurements --------------------------------------------------------------------------------
def timed_process(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    return completed, time.perf_counter() - started


def measure_plain(model: str, photos: Path, size: int, batch: int) -> dict[str, Any]:
    load = load_average()
    script = str(Path(__file__).resolve())
    completed, wall = timed_process([sys.executable, script, "--out", "-", "--plain-loop", model, str(photos), str(size), str(batch)])
    if completed.returncode != 0:
        return {"status": "error", "reason": (completed.stderr.strip().splitlines() or ["no output"])[-1], "load_1m": load}
    images = json.loads(completed.stdout.strip().splitlines()[-1])["images"]
    return {"images": images, "seconds": round(wall, 2), "images_per_s": round(images / wall, 2), "load_1m": load}


def measure_tokenize(model: str, photos: Path, size: int, batch: int, executor: str, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "gsq_dataset", "--backend", "onnx", "--model", model, "--input", str(photos)]
    command += ["--output", str(out), "--size", str(size), "--batch-size", str(batch), "--executor", executor]
    command += ["--no-progress", "--overwrite"]
    load = load_average()
    completed, wall = timed_process(command)
    if completed.returncode != 0:
        return {"status": "error", "reason": (completed.stderr.strip().splitlines() or ["no output"])[-1], "load_1m": load}
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    stages = run.get("stages") or {}
    images = int(run["tokenized"])
    steady, bound = run.get("steady_images_per_s"), stages.get("bound_images_per_s")
    return {
        "executor": run["executor"],
        "images": images,
        "seconds": round(wall, 2),
        "images_per_s": round(images / wall, 2),
        "steady_images_per_s": steady,
        "bound": stages.get("bound"),
        "bound_images_per_s": bound,
        "steady_vs_bound": round(steady / bound, 3) if steady and bound else None,
        "stages": stages,
        "startup_seconds": run.get("startup_seconds"),
        "shutdown_seconds": run.get("shutdown_seconds"),
        "load_1m": load,
        "command": " ".join(command[1:]),
    }


# -- the report ----------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"--size {report['size']}, model {report['model']} (onnx), batch {report['batch_size']}; "
        f"{machine['logical_cpus']} CPUs ({machine['cpu']})",
        "",
        "| images | what | img/s (whole command) | vs plain loop | img/s (steady) | bound (stage, img/s) | steady / bound "
        "| start-up s | shut-down s | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["runs"]:
        plain = entry["plain"]
        rate = plain.get("images_per_s")
        lines.append(
            f"| {entry['images']} | plain loop (decode, crop, encode at batch {report['batch_size']}) | "
            f"{rate if rate else 'error: ' + plain.get('reason', '')} | 1.00x | | | | | | {plain['load_1m']} |"
        )
        for run in entry["tokenize"]:
            if run.get("status") == "error":
                lines.append(f"| {entry['images']} | gsq-tokenize --executor {run['asked']} | error: {run['reason']} | | | | | | | {run['load_1m']} |")
                continue
            versus = f"{run['images_per_s'] / rate:.2f}x" if rate else ""
            bound = f"{run['bound']}, {run['bound_images_per_s']}" if run.get("bound") else ""
            ratio = f"{run['steady_vs_bound']:.2f}x" if run.get("steady_vs_bound") else ""
            lines.append(
                f"| {entry['images']} | gsq-tokenize --executor {run['asked']} ({run['executor']}) | {run['images_per_s']} | {versus} | "
                f"{run['steady_images_per_s'] or ''} | {bound} | {ratio} | {run['startup_seconds']} | {run['shutdown_seconds']} | {run['load_1m']} |"
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gsq_deploy.exporters.onnx import export_onnx
    from gsq_core import load_tokenizer

    onnx_dir = args.out / "model-onnx"
    if not (onnx_dir / "manifest.json").is_file():
        print("exporting the model to ONNX ...", flush=True)
        export_onnx(load_tokenizer(args.model), onnx_dir, graphs=("tokenize", "detokenize"), progress=False)
    report: dict[str, Any] = {
        "size": args.size,
        "model": args.model,
        "batch_size": args.batch_size,
        "machine": machine_info(),
        "runs": [],
    }
    for count in args.images:
        photos = args.out / f"photos-{count}"
        print(f"{count} mixed photos ...", flush=True)
        make_mixed_photos(photos, count)
        entry: dict[str, Any] = {"images": count, "tokenize": []}
        print(f"{count}: plain loop ...", flush=True)
        entry["plain"] = measure_plain(str(onnx_dir), photos, args.size, args.batch_size)
        for executor in args.executors:
            print(f"{count}: gsq-tokenize --executor {executor} ...", flush=True)
            result = measure_tokenize(str(onnx_dir), photos, args.size, args.batch_size, executor, args.out / f"tokens-{count}-{executor}")
            result["asked"] = executor
            entry["tokenize"].append(result)
        report["runs"].append(entry)
    report["load_1m_at_end"] = load_average()
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plain_loop:
        model, photos, size, batch = args.plain_loop
        plain_loop(model, Path(photos), int(size), int(batch))
        return 0
    problem = missing_package("benchmarks/tokenize_throughput.py", ("torch", "bench"), ("ray", "dataset"), ("pyarrow", "dataset"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if min(args.images) < 2 or args.batch_size < 1 or args.size < 8:
        print("error: --images must be >= 2, --batch-size >= 1 and --size >= 8", file=sys.stderr)
        return 2
    unknown = [e for e in args.executors if e not in ("auto", "local", "ray")]
    if unknown:
        print(f"error: --executors {unknown[0]!r}: choose from auto, local, ray", file=sys.stderr)
        return 2
    if (args.out / "report.json").exists() and not args.overwrite:
        print(f"error: {args.out / 'report.json'}: already exists; pass --overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = table(report)
    (args.out / "report.md").write_text(markdown)
    print(markdown)
    failed = failed_measurements(report)
    if failed:
        print(f"error: {failed} measurement(s) failed (the table says which and why)", file=sys.stderr)
        return 1
    return 0


def failed_measurements(report: dict[str, Any]) -> int:
    """How many of the report's measurements ended in an error."""
    return sum(1 for entry in report["runs"] for run in [entry["plain"], *entry["tokenize"]] if run.get("status") == "error")


if __name__ == "__main__":
    sys.exit(main())
