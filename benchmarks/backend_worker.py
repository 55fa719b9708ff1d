"""One backend + precision measured in its own process: outputs for fidelity, timings, peak memory.

    python -m benchmarks.backend_worker '<json job>'

The job names the backend, the model (checkpoint or artifact directory), runtime options, the images,
the batch sizes and repeats, where to write outputs (.npz: codes, latent, recon per image, and
recon_reference: the decode of the reference's tokens, read from job["reference_codes"]). It
prints one JSON line. Every backend runs under the same conditions: a fresh process, the same thread
count, the same images, warm-up calls excluded from timings.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.measure import peak_rss_mb, summarize_ms, time_calls
from gsq_core.errors import first_line


def timing_images(images: list[np.ndarray]) -> list[np.ndarray]:
    """The images of the most common size (the largest among equally common): the timing set."""
    counts = Counter(image.shape for image in images)
    shape = max(counts, key=lambda s: (counts[s], s[1] * s[2]))
    return [image for image in images if image.shape == shape]


def per_image_ms(function: Any, inputs: list[np.ndarray], repeats: int) -> list[float]:
    """Seconds per call, cycling over inputs `repeats` times after one warm-up call."""
    function(inputs[0])
    samples: list[float] = []
    for _ in range(repeats):
        for item in inputs:
            samples.extend(time_calls(lambda item=item: function(item), repeats=1, warmup=0))
    return samples


def batch_of(items: list[np.ndarray], size: int) -> np.ndarray:
    """A batch of `size` made by cycling through items."""
    return np.concatenate([items[i % len(items)] for i in range(size)])


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Load the runtime, run the fidelity pass and the timings; save outputs; report.

    torch is imported only by the torch backend (the runtime that declares torch_threads): the other backends' peak RSS is their own, not
    torch's (~200 MB), and the report says whether torch was loaded.
    """
    from gsq_core.images import read_image
    from gsq_deploy.runtimes import load_runtime

    runtime = load_runtime(job["backend"], job["model"], **job.get("options", {}))
    if runtime.torch_threads:  # its threads are torch's of this process (runtimes' declaration)
        import torch

        torch.set_num_threads(job["threads"])
    images = [read_image(path).pixels[None] for path in job["images"]]  # [1, 3, H, W] each

    outputs: dict[str, np.ndarray] = {}
    has_latent = True
    for index, image in enumerate(images):
        codes = runtime.encode(image)
        outputs[f"codes_{index}"] = codes
        outputs[f"recon_{index}"] = runtime.decode(codes)
        if has_latent:
            try:
                outputs[f"latent_{index}"] = runtime.encode_latent(image)
            except NotImplementedError:
                has_latent = False
    reference_codes = job.get("reference_codes")
    if reference_codes:  # the reference's tokens through this decoder: its own fidelity, not the encoder's
        with np.load(reference_codes) as data:
            for index in range(len(images)):
                outputs[f"recon_reference_{index}"] = runtime.decode(data[f"codes_{index}"])
    else:  # the reference itself
        for index in range(len(images)):
            outputs[f"recon_reference_{index}"] = outputs[f"recon_{index}"]
    np.savez(job["outputs"], **outputs)

    timed = timing_images(images)
    timed_codes = [runtime.encode(image) for image in timed]
    repeats = job["repeats"]
    encode = summarize_ms(per_image_ms(runtime.encode, timed, repeats))
    decode = summarize_ms(per_image_ms(runtime.decode, timed_codes, repeats))
    throughput: dict[str, dict[str, float]] = {}
    for size in job["batch_sizes"]:
        image_batch, code_batch = batch_of(timed, size), batch_of(timed_codes, size)
        encode_calls = time_calls(lambda batch=image_batch: runtime.encode(batch), repeats=repeats)
        decode_calls = time_calls(lambda batch=code_batch: runtime.decode(batch), repeats=repeats)
        encode_s, decode_s = (summarize_ms(calls)["median_ms"] / 1e3 for calls in (encode_calls, decode_calls))
        throughput[str(size)] = {"encode_img_s": size / encode_s, "decode_img_s": size / decode_s}
    info = runtime.info
    runtime.close()
    return {
        "status": "ok",
        "info": info.to_dict(),
        "has_latent": has_latent,
        "timing_image_size": list(timed[0].shape[2:]),
        "timing_images": len(timed),
        "encode_ms": encode,
        "decode_ms": decode,
        "throughput": throughput,
        "peak_rss_mb": peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def main() -> None:
    """Run the job given as a JSON argument; print the result as one JSON line."""
    try:
        result = run_job(json.loads(sys.argv[1]))
    except Exception as error:  # noqa: BLE001 - the process boundary: report it to the parent in one line
        message = first_line(error)
        result = {
            "status": "error",
            "reason": f"{type(error).__name__}: {message}",
            "traceback": traceback.format_exc(),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
