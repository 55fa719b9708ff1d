"""Eager PyTorch on an accelerator (CUDA) against eager on CPU: token agreement and speed.

    python -m benchmarks.torch_device --ckpt default --images out/photos --device cuda \
        [--batch-sizes 1,16] [--repeats 20] [--json out/torch_cuda.json]

Two numerics on CUDA: fp32 (TF32 off, what runtimes.torch uses) and TF32 (cuDNN's default).
Fidelity: every image is encoded on CPU (fp32, the reference) and on the device; tokens that differ
must be near-ties (float64 score gap of the device's choice on the CPU latent <= --tie-tolerance).
Speed: encode (image -> tokens) and decode (tokens -> image) per batch, after warm-up, with the
device synchronised around each call. Prints a table and one JSON line; exits 2 when the device is
missing, 1 when an fp32 token differs by more than a near-tie (TF32 is reported, not judged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import summarize_ms
from gsq_core.checkpoint_options import add_checkpoint_arguments


def comma_ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def device_ms(function: Callable[[], Any], synchronize: Callable[[], None], repeats: int) -> dict[str, float]:
    """Timing summary of `repeats` calls after two warm-up calls, synchronising the device each time."""
    for _ in range(2):
        function()
    synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return summarize_ms(seconds)


def token_agreement(model_cpu: Any, model_device: Any, images: list[Any], device: Any, tolerance: float) -> dict[str, Any]:
    """Tokens of every image on CPU and on the device; differing tokens must be near-ties."""
    import torch

    from gsq_core.fidelity import score_gaps

    spec = model_cpu.quantizer.lookup_spec()
    total = differing = 0
    worst_gap = 0.0
    with torch.no_grad():
        for image in images:
            latent = model_cpu.encode_latent(image)
            codes_cpu = model_cpu.encode(image).numpy()
            codes_device = model_device.encode(image.to(device)).cpu().numpy()
            total += codes_cpu.size
            differing += int((codes_cpu != codes_device).sum())
            worst_gap = max(worst_gap, float(score_gaps(latent.numpy(), codes_device, spec).max()))
    return {"tokens": total, "identical_fraction": 1.0 - differing / total, "max_gap": worst_gap,
            "all_near_ties": worst_gap <= tolerance}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_device", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="default", help="checkpoint path or name")
    add_checkpoint_arguments(parser)  # --config FILE, --no-ema (IBQ Lightning checkpoints)
    parser.add_argument("--images", required=True, nargs="+", help="image files or folders (one size for timing)")
    parser.add_argument("--device", default="cuda", help="torch device to measure (cuda, cuda:1, ...)")
    parser.add_argument("--batch-sizes", type=comma_ints, default=[1, 16], help="comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    parser.add_argument("--tie-tolerance", type=float, default=1e-6, help="largest float64 score gap allowed")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    from benchmarks.measure import missing_package

    problem = missing_package("benchmarks.torch_device", ("torch", "bench"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import torch

    from gsq_core import load_tokenizer
    from gsq_core.errors import GSQError
    from gsq_core.images import expand_image_paths, read_image

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this torch build sees no CUDA device", file=sys.stderr)
        return 2
    try:
        model_cpu = load_tokenizer(args.ckpt, config=args.config, ema=args.ema).eval()
        model_device = load_tokenizer(args.ckpt, device=device, config=args.config, ema=args.ema).eval()
        images = [torch.from_numpy(read_image(path).pixels[None]) for path in expand_image_paths(args.images)]
    except GSQError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not images:
        print("error: --images: no readable images", file=sys.stderr)
        return 2
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shape = images[0].shape
    same_size = [image for image in images if image.shape == shape]
    agreement, rows = {}, []
    numerics = ["fp32", "tf32"] if device.type == "cuda" else ["fp32"]
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for numeric in numerics:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = numeric == "tf32"
            agreement[numeric] = token_agreement(model_cpu, model_device, images, device, args.tie_tolerance)
            with torch.no_grad():
                for batch_size in args.batch_sizes:
                    batch = torch.cat([same_size[i % len(same_size)] for i in range(batch_size)]).to(device)
                    codes = model_device.encode(batch)
                    encode = device_ms(lambda batch=batch: model_device.encode(batch), synchronize, args.repeats)
                    decode = device_ms(lambda codes=codes: model_device.decode(codes), synchronize, args.repeats)
                    rows.append({"numerics": numeric, "batch": batch_size,
                                 "encode_ms": encode["median_ms"], "decode_ms": decode["median_ms"],
                                 "encode_images_per_s": 1e3 * batch_size / encode["median_ms"],
                                 "decode_images_per_s": 1e3 * batch_size / decode["median_ms"]})
    except GSQError as error:
        print(f"error: --images: {error}", file=sys.stderr)
        return 2
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    report = {"checkpoint": args.ckpt, "device": name, "torch": torch.__version__,
              "image_shape": list(shape[1:]), "agreement_vs_cpu": agreement, "timings": rows}
    print(f"{name}, images {shape[2]}x{shape[3]}, torch {torch.__version__}")
    for numeric, measured in agreement.items():
        print(f"{numeric} tokens vs CPU fp32: {measured['identical_fraction']:.6f} identical of {measured['tokens']}, "
              f"max score gap {measured['max_gap']:.2e}")
    print(f"{'numerics':>8} {'batch':>5} {'encode ms':>10} {'enc img/s':>10} {'decode ms':>10} {'dec img/s':>10}")
    for row in rows:
        print(f"{row['numerics']:>8} {row['batch']:>5} {row['encode_ms']:>10.2f} {row['encode_images_per_s']:>10.1f} "
              f"{row['decode_ms']:>10.2f} {row['decode_images_per_s']:>10.1f}")
    text = json.dumps(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.json.with_suffix(args.json.suffix + ".tmp")
        temporary.write_text(text + "\n")
        temporary.replace(args.json)
    return 0 if agreement["fp32"]["all_near_ties"] else 1


if __name__ == "__main__":
    sys.exit(main())
