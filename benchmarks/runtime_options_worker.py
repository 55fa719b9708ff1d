"""One runtime setting measured in its own process: per-image encode and decode times, peak memory.

    python -m benchmarks.runtime_options_worker '<json job>'

The job names the backend, the artifact directory (a checkpoint for "torch", the eager reference),
the runtime options (e.g. ONNX Runtime session config entries, OpenVINO compile properties), the
images and the batch size, the thread count, the call order ("blocks": every encode, then every
decode; "alternating": encode and decode of one input, then the next; "encode": encodes only) and
It prints one JSON line with wall-clock and process CPU time per call (per input of `batch`
images). Torch is imported only for the torch backend: the process holds only the runtime.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.measure import peak_rss_mb, summarize_ms
from gsq_core.errors import first_line

MODES = ("blocks", "alternating", "encode")


def timed(function: Any, value: np.ndarray, samples: list[float], cpu: list[float]) -> Any:
    """Call function(value); append its wall-clock seconds, and the process's CPU seconds (all threads)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function(value)
    samples.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
    return result


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Open the runtime, warm both directions up, then time `rounds` passes over the images."""
    from gsq_core.images import read_image
    from gsq_deploy.runtimes import load_runtime, runtime_class

    if job["mode"] not in MODES:
        raise ValueError(f"unknown mode {job['mode']!r}; choose from {', '.join(MODES)}")
    declared, options = runtime_class(job["backend"]), dict(job.get("options", {}))
    if declared.torch_threads:  # the eager reference: torch's own thread count
        import torch

        torch.set_num_threads(job["threads"])
    elif "threads" in declared.options:
        options["threads"] = job["threads"]
    runtime = load_runtime(job["backend"], job["model"], **options)
    pixels = [read_image(path).pixels[None] for path in job["images"]]
    batch = job.get("batch", 1)  # inputs of `batch` images each, cycling through the images
    images = [
        np.concatenate([pixels[(start + k) % len(pixels)] for k in range(batch)])
        for start in range(0, len(pixels), batch)
    ]
    codes = [runtime.encode(image) for image in images]  # warm-up, not timed
    if job["mode"] != "encode":
        for code in codes:
            runtime.decode(code)
    encode: list[float] = []
    decode: list[float] = []
    encode_cpu: list[float] = []
    decode_cpu: list[float] = []
    for _ in range(job["rounds"]):
        if job["mode"] == "encode":
            for image in images:
                timed(runtime.encode, image, encode, encode_cpu)
        elif job["mode"] == "blocks":
            for image in images:
                timed(runtime.encode, image, encode, encode_cpu)
            for code in codes:
                timed(runtime.decode, code, decode, decode_cpu)
        else:
            for image, code in zip(images, codes):
                timed(runtime.encode, image, encode, encode_cpu)
                timed(runtime.decode, code, decode, decode_cpu)
    info = runtime.info
    runtime.close()
    no_decode = {"median_ms": float("nan")}
    return {
        "status": "ok",
        "batch": batch,
        "encode_ms": summarize_ms(encode),
        "decode_ms": summarize_ms(decode) if decode else no_decode,
        # CPU time of the whole process per call: the work done (spinning threads included), which
        # a busy machine does not distort the way it distorts wall-clock time
        "encode_cpu_ms": summarize_ms(encode_cpu),
        "decode_cpu_ms": summarize_ms(decode_cpu) if decode_cpu else no_decode,
        "calls": len(encode),
        "peak_rss_mb": peak_rss_mb(),
        "info": info.to_dict(),
    }


def main() -> None:
    """Run the job given as a JSON argument; print the result as one JSON line."""
    try:
        result = run_job(json.loads(sys.argv[1]))
    except Exception as error:  # noqa: BLE001 - the process boundary: report it to the parent in one line
        message = first_line(error)
        result = {"status": "error", "reason": f"{type(error).__name__}: {message}", "traceback": traceback.format_exc()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
