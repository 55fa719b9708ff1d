"""gsq-tokenize against the alternatives, on the same few hundred photos.

    python benchmarks/tokenize_throughput.py --out out/bench-tokenize [--images 300] [--size 256] [--model default]
        [--backends torch,onnx] [--workers 1,2] [--batch-size 16] [--device cpu|cuda] [--overwrite]

Measures images per second of
  naive     the field's extraction scripts: eager torch, batch 1, decode + ADM crop + encode, one .npy per image
  ceiling   the tokenizer alone on preloaded, preprocessed arrays (per backend, batch --batch-size): the bound
  pipeline  gsq-tokenize (local Ray instance, --num-cpus = this machine) per backend and worker count;
            "steady" counts from the first tokenized batch to the last (Ray and model start-up excluded),
            "overall" is the whole command including Ray's start-up
and the CPU time each spends per image (every process of the command: Ray's, the decode tasks',
the tokenizer actors'), less, for gsq-tokenize, the CPU time of the same command re-run with
nothing left to do (Ray's start-up and shut-down, the driver's checks). On a machine shared with
other work, wall-clock img/s depend on how the scheduler shares the cores out; CPU seconds per
image do not, and cores / (CPU s per image) is the img/s a quiet machine would reach if the work
spreads over its cores. Photos are made from scikit-image's sample photos (random crops
260-512 px and flips, JPEG), so it runs anywhere without downloads. Writes DIR/report.json and
DIR/report.md (the table in docs/tokenize.md) with the load average around every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.measure import machine_info, missing_package

REPO_ROOT = Path(__file__).resolve().parents[1]
# Colour photos that ship with scikit-image (no download), at least 300 px on the short side.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def comma_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/tokenize_throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for photos, outputs and the report")
    parser.add_argument("--images", type=int, default=300, help="photos to make and tokenize")
    parser.add_argument("--size", type=int, default=256, help="--size of gsq-tokenize (the ADM crop)")
    parser.add_argument("--model", default="default", help="checkpoint for torch (exported to ONNX for onnx)")
    parser.add_argument("--backends", type=comma_list, default=["torch", "onnx"], help="torch and/or onnx")
    parser.add_argument("--workers", type=lambda t: [int(v) for v in comma_list(t)], default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the ceiling and of gsq-tokenize")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (torch backend on a GPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return parser


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


class SessionCpu:
    """CPU seconds of every process in one session (a command started with start_new_session and
    all it starts), sampled from /proc while it runs: each process's last utime + stime."""

    def __init__(self, session: int, interval_s: float = 0.1):
        self.session, self.interval_s = session, interval_s
        self.ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.session:  # fields after the name: state ppid pgrp session ...
                    self.ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


def run_measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, CPU seconds of the command and everything it started)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    meter = SessionCpu(os.getsid(process.pid))
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    time.sleep(0.3)  # Ray's last processes exit just after the driver
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), wall, meter.stop()


# -- the photos --------------------------------------------------------------------------------------
def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Random crops (260-512 px a side) and flips of scikit-image's colour photos, as JPEG files."""
    from PIL import Image

    from gsq_core.prepare import sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    sources = [sample_photo(name) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        photo = sources[index % len(sources)]
        limit = min(512, *photo.shape[:2])
        height, width = int(rng.integers(260, limit + 1)), int(rng.integers(260, limit + 1))
        top = int(rng.integers(0, photo.shape[0] - height + 1))
        left = int(rng.integers(0, photo.shape[1] - width + 1))
        crop = photo[top : top + height, left : left + width]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)
        paths.append(path)
    return paths


# -- the measurements --------------------------------------------------------------------------------
def naive_loop(model: str, paths: list[Path], size: int, device: str, out: Path) -> dict[str, Any]:
    """What extraction scripts do: per image decode, ADM crop, encode at batch 1, np.save."""
    import torch
    from PIL import Image

    from gsq_core import load_tokenizer
    from gsq_core.prepare import adm_center_crop

    tokenizer = load_tokenizer(model, device=device).eval()
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        with Image.open(path) as image:
            pixels = adm_center_crop(image.convert("RGB"), size)
        batch = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
        with torch.no_grad():
            codes = tokenizer.encode(batch)
        np.save(out / f"{path.stem}.npy", codes.cpu().numpy())

    one(paths[0])  # warm-up

    def every_image() -> None:
        for path in paths:
            one(path)

    return timed(every_image, len(paths))


def timed(run: Callable[[], None], images: int) -> dict[str, Any]:
    """Wall-clock and process CPU time of run(), which handles `images` images, with the load before it."""
    load = load_average()
    started, cpu = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_s_per_image": cpu / images,
        "load_1m": load,
    }


def ceiling(backend: str, model: str, paths: list[Path], size: int, batch: int, device: str) -> dict[str, Any]:
    """The tokenizer alone: runtime.encode over preloaded, preprocessed images, in batches."""
    from gsq_dataset.preprocess import model_input, preprocess_file
    from runtimes import load_runtime

    threads = len(os.sched_getaffinity(0))
    options: dict[str, Any] = {"device": device} if backend == "torch" else {"threads": threads}
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    runtime = load_runtime(backend, model, **options)
    images = model_input(np.stack([preprocess_file(path, size) for path in paths]))
    runtime.encode(images[:batch])  # warm-up

    def every_batch() -> None:
        for start in range(0, len(images), batch):
            runtime.encode(images[start : start + batch])

    return timed(every_batch, len(images))


def pipeline(
    backend: str, model: str, photos: Path, size: int, batch: int, workers: int, device: str, out: Path
) -> dict[str, Any]:
    """One gsq-tokenize command on a local Ray instance; its manifest has the run's timings."""
    command = [sys.executable, "-m", "gsq_dataset", "--backend", backend, "--model", model, "--input", str(photos)]
    command += ["--output", str(out), "--size", str(size), "--batch-size", str(batch), "--workers", str(workers)]
    command += ["--no-progress"]
    if backend == "torch" and device != "cpu":
        command += ["--device", device]
    load = load_average()
    completed, wall, cpu = run_measured([*command, "--overwrite"])
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "reason": last}
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    images = int(run["tokenized"])
    again, _, fixed_cpu = run_measured(command)  # nothing left to do: the fixed costs
    if again.returncode != 0 or "tokenized 0 images" not in again.stdout:
        return {"status": "error", "reason": f"the re-run did not find everything done: {again.stdout[-300:]}"}
    return {
        "cpu_s_per_image": (cpu - fixed_cpu) / images,
        "cpu_s_fixed": fixed_cpu,
        "images": images,
        "overall_images_per_s": images / wall,
        "steady_images_per_s": run["steady_images_per_s"],
        "tokenizer_busy": run.get("tokenizer_busy"),
        "pipeline_seconds": run["pipeline_seconds"],
        "command_seconds": wall,
        "plan": run["workers"],
        "load_1m": load,
        "command": " ".join(command[1:]),
    }


def gpu_busy_sampler() -> subprocess.Popen | None:
    """nvidia-smi sampling the GPU's utilisation every 200 ms, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
    return subprocess.Popen(query, stdout=subprocess.PIPE, text=True)


def gpu_busy_fraction(sampler: subprocess.Popen | None) -> float | None:
    if sampler is None:
        return None
    sampler.terminate()
    values = [float(line) for line in (sampler.communicate()[0] or "").split() if line.strip().isdigit()]
    return round(sum(values) / len(values) / 100.0, 3) if values else None


# -- the report ----------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    naive = report["naive"]["images_per_s"]
    cores = report["machine"]["usable_cpus"]
    lines = [
        f"{report['images']} photos, --size {report['size']}, model {report['model']}, batch {report['batch_size']}, "
        f"device {report['device']}; {report['machine']['logical_cpus']} CPUs ({report['machine']['cpu']})",
        "",
        "| what | backend | workers | img/s (steady) | img/s (whole command) | vs ceiling | vs naive | tokenizer busy "
        "| CPU s / image | cores / CPU s per image (img/s) | CPU: vs ceiling | CPU: vs naive | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| naive loop (batch 1, .npy per image) | torch | 1 | {naive:.2f} | | | 1.00x | | "
        f"{report['naive']['cpu_s_per_image']:.3f} | {cores / report['naive']['cpu_s_per_image']:.2f} | | 1.00x | "
        f"{report['naive']['load_1m']} |",
    ]
    naive_cpu = report["naive"]["cpu_s_per_image"]
    for backend, ceiling_result in report["ceiling"].items():
        rate, cpu = ceiling_result["images_per_s"], ceiling_result["cpu_s_per_image"]
        lines.append(
            f"| tokenizer alone (preloaded arrays) | {backend} | 1 | {rate:.2f} | | 1.00x | {rate / naive:.2f}x | | "
            f"{cpu:.3f} | {cores / cpu:.2f} | 1.00x | {naive_cpu / cpu:.2f}x | {ceiling_result['load_1m']} |"
        )
    for entry in report["pipeline"]:
        if entry.get("status") == "error":
            lines.append(f"| gsq-tokenize | {entry['backend']} | {entry['workers']} | error: {entry['reason']} | | | | | | | | | |")
            continue
        steady = entry["steady_images_per_s"] or 0.0
        bound = report["ceiling"].get(entry["backend"], {}).get("images_per_s")
        versus = f"{steady / bound:.2f}x" if bound else ""
        cpu = entry["cpu_s_per_image"]
        bound_cpu = report["ceiling"].get(entry["backend"], {}).get("cpu_s_per_image")
        cpu_versus = f"{bound_cpu / cpu:.2f}x" if bound_cpu else ""
        gpu = f", GPU busy {entry['gpu_busy']:.0%}" if entry.get("gpu_busy") is not None else ""
        busy = f"{entry['tokenizer_busy']:.0%}" if entry.get("tokenizer_busy") is not None else ""
        lines.append(
            f"| gsq-tokenize{gpu} | {entry['backend']} | {entry['workers']} | {steady:.2f} | "
            f"{entry['overall_images_per_s']:.2f} | {versus} | {steady / naive:.2f}x | {busy} | {cpu:.3f} | "
            f"{cores / cpu:.2f} | {cpu_versus} | {naive_cpu / cpu:.2f}x | {entry['load_1m']} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from exporters.onnx import export_onnx
    from gsq_core import load_tokenizer

    photos = args.out / "photos"
    if photos.exists():
        shutil.rmtree(photos)
    paths = make_photos(photos, args.images)
    models = {"torch": args.model}
    if "onnx" in args.backends:
        onnx_dir = args.out / "model-onnx"
        if onnx_dir.exists():
            shutil.rmtree(onnx_dir)
        export_onnx(load_tokenizer(args.model), onnx_dir, graphs=("tokenize", "detokenize"), progress=False)
        models["onnx"] = str(onnx_dir)
    report: dict[str, Any] = {
        "images": len(paths),
        "size": args.size,
        "model": args.model,
        "batch_size": args.batch_size,
        "device": args.device,
        "machine": machine_info(),
    }
    print(f"naive loop on {len(paths)} photos ...", flush=True)
    report["naive"] = naive_loop(args.model, paths, args.size, args.device, args.out / "naive-npy")
    report["ceiling"] = {}
    report["pipeline"] = []
    for backend in args.backends:
        print(f"{backend}: tokenizer alone ...", flush=True)
        report["ceiling"][backend] = ceiling(backend, models[backend], paths, args.size, args.batch_size, args.device)
        for workers in args.workers:
            print(f"{backend}: gsq-tokenize, {workers} worker(s) ...", flush=True)
            sampler = gpu_busy_sampler() if args.device != "cpu" else None
            entry = pipeline(
                backend, models[backend], photos, args.size, args.batch_size, workers, args.device,
                args.out / f"tokens-{backend}-{workers}",
            )  # fmt: skip
            entry.update(backend=backend, workers=workers, gpu_busy=gpu_busy_fraction(sampler))
            report["pipeline"].append(entry)
    report["load_1m_at_end"] = load_average()
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_package("benchmarks/tokenize_throughput.py", ("torch", "bench"), ("ray", "dataset"), ("pyarrow", "dataset"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.images < 2 or args.batch_size < 1 or args.size < 8:
        print("error: --images must be >= 2, --batch-size >= 1 and --size >= 8", file=sys.stderr)
        return 2
    if (args.out / "report.json").exists() and not args.overwrite:
        print(f"error: {args.out / 'report.json'}: already exists; pass --overwrite", file=sys.stderr)
        return 2
    unknown = [b for b in args.backends if b not in ("torch", "onnx")]
    if unknown:
        print(f"error: --backends {unknown[0]!r}: this benchmark runs torch and onnx", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = table(report)
    (args.out / "report.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
