"""Measure a tokenizer on image files: PSNR, SSIM, codebook usage and perplexity of encode -> decode.

    python -m train.evaluate --ckpt default --size 256 runs/skimage_photos/heldout

Each image is ADM centre-cropped to size x size (gsq-tokenize's crop: gsq_core.prepare.adm_center_crop).
Prints a table per image and the JSON summary (also written with --json PATH).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gsq_core.checkpoint import atomic_write
from gsq_core.checkpoint_options import add_checkpoint_arguments
from gsq_core.errors import GSQError
from gsq_core.images import expand_image_paths
from gsq_core.outputs import check_output_file

from .validation import evaluate, load_validation_images


def measure(checkpoint: str, inputs: list[str], size: int, config: str | None = None, ema: bool = True) -> dict:
    """Per-image and mean metrics of a checkpoint on the centre crops of the given images."""
    from gsq_core import load_tokenizer

    model = load_tokenizer(checkpoint, config=config, ema=ema)
    paths = expand_image_paths(inputs)
    images, names = load_validation_images(paths, size)
    if not names:
        raise GSQError("none of the images could be read")
    per_image = []
    for index, name in enumerate(names):
        metrics, _ = evaluate(model, images[index : index + 1])
        per_image.append({"image": name, **metrics})
    overall, _ = evaluate(model, images)
    return {"checkpoint": checkpoint, "crop": f"{size}x{size} ADM centre", "images": per_image, "mean": overall}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="default", help="checkpoint path or name (default: the packaged model)")
    add_checkpoint_arguments(parser)  # --config FILE, --no-ema (IBQ Lightning checkpoints)
    parser.add_argument("--size", type=int, default=256, help="centre-crop side in pixels")
    parser.add_argument("--json", type=Path, help="also write the summary JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("images", nargs="+", help="image files or folders")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.json:  # checked before the model loads: an unwritable path must not cost the whole run
            check_output_file(args.json, args.overwrite)
        report = measure(args.ckpt, args.images, args.size, args.config, args.ema)
    except (GSQError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{'image':<40} {'PSNR dB':>8} {'SSIM':>7} {'usage':>7} {'perplexity':>10}")
    rows = [{**row, "image": Path(row["image"]).name} for row in report["images"]]
    for row in rows + [{"image": "mean (usage, perplexity: all tokens)", **report["mean"]}]:
        print(f"{row['image']:<40} {row['psnr']:8.2f} {row['ssim']:7.4f} {row['codebook_usage']:7.4f} {row['perplexity']:10.1f}")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(text + "\n"), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
