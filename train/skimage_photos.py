"""Write the natural photos that ship with scikit-image as PNGs: a training folder and a held-out folder.

    python -m train.skimage_photos --out data/skimage_photos [--color-only]

The held-out photos (astronaut, coffee, chelsea; `cat` is the same photo as chelsea) are never
written to the training folder. Grayscale photos are stored as RGB (three equal channels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

HELD_OUT = ("astronaut", "coffee", "chelsea")
# Photographs (colour, then grayscale). Left out: synthetic images (checkerboard, colorwheel, logo,
# binary_blobs, shepp_logan_phantom), text scans (page, text), `cat` (a copy of chelsea) and
# images that need the optional download package (pooch).
TRAINING_COLOR = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right")
TRAINING_GRAY = ("camera", "moon", "coins", "brick", "grass", "gravel", "clock", "cell")


def _loader(name: str) -> Callable[[], np.ndarray]:
    import skimage.data

    if name.startswith("motorcycle_"):
        index = 0 if name.endswith("left") else 1
        return lambda: skimage.data.stereo_motorcycle()[index]
    return getattr(skimage.data, name)


def photo(name: str) -> np.ndarray:
    """The named skimage photo as uint8 RGB [H, W, 3]."""
    pixels = np.asarray(_loader(name)())
    if pixels.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {pixels.dtype}, expected uint8")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return pixels[..., :3]


def write_photos(out: Path, overwrite: bool = False, color_only: bool = False) -> dict[str, list[Path]]:
    """Write train/ and heldout/ PNG folders under out (train/ without grayscale photos if color_only)."""
    from PIL import Image

    written: dict[str, list[Path]] = {"train": [], "heldout": []}
    training = TRAINING_COLOR if color_only else TRAINING_COLOR + TRAINING_GRAY
    for split, names in (("train", training), ("heldout", HELD_OUT)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = folder / f"{name}.png"
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
            Image.fromarray(photo(name)).save(path)
            written[split].append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to create train/ and heldout/ in")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--color-only", action="store_true", help="leave the grayscale photos out of train/")
    args = parser.parse_args(argv)
    try:
        written = write_photos(args.out, args.overwrite, args.color_only)
    except (FileExistsError, ModuleNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, paths in written.items():
        print(f"{split}: {len(paths)} photos in {args.out / split}: {', '.join(p.stem for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
