"""Write the natural photos that ship with scikit-image as PNGs: a training folder and a held-out folder.

    python -m train.skimage_photos --out data/skimage_photos [--color-only] [--other-packages]

The held-out photos (astronaut, coffee, chelsea; `cat` is the same photo as chelsea) are never
written to the training folder. Grayscale photos are stored as RGB (three equal channels).
--other-packages adds the colour photos that ship with scikit-learn (china, flower) and
matplotlib (grace_hopper) to the training folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gsq_core.prepare import OTHER_PACKAGES, sample_photo

HELD_OUT = ("astronaut", "coffee", "chelsea")
# Photographs (colour, then grayscale). Left out: synthetic images (checkerboard, colorwheel, logo,
# binary_blobs, shepp_logan_phantom), text scans (page, text), `cat` (a copy of chelsea) and
# images that need the optional download package (pooch).
TRAINING_COLOR = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right")
TRAINING_GRAY = ("camera", "moon", "coins", "brick", "grass", "gravel", "clock", "cell")


def training_names(color_only: bool = False, other_packages: bool = False) -> tuple[str, ...]:
    """Names of the training photos for the given options."""
    names = TRAINING_COLOR if color_only else TRAINING_COLOR + TRAINING_GRAY
    return names + tuple(OTHER_PACKAGES) if other_packages else names


def write_photos(out: Path, overwrite: bool = False, color_only: bool = False,
                 other_packages: bool = False) -> dict[str, list[Path]]:
    """Write train/ and heldout/ PNG folders under out (see training_names for train/)."""
    from PIL import Image

    written: dict[str, list[Path]] = {"train": [], "heldout": []}
    training = training_names(color_only, other_packages)
    for split, names in (("train", training), ("heldout", HELD_OUT)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = folder / f"{name}.png"
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
            Image.fromarray(sample_photo(name)).save(path)
            written[split].append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to create train/ and heldout/ in")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--color-only", action="store_true", help="leave the grayscale photos out of train/")
    parser.add_argument("--other-packages", action="store_true",
                        help="add the colour photos of scikit-learn and matplotlib to train/")
    args = parser.parse_args(argv)
    try:
        written = write_photos(args.out, args.overwrite, args.color_only, args.other_packages)
    except (FileExistsError, ModuleNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, paths in written.items():
        print(f"{split}: {len(paths)} photos in {args.out / split}: {', '.join(p.stem for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
