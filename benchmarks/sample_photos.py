"""Write scikit-image's bundled sample photos as square PNGs (ADM centre crops), a reproducible set for compare.py.

python -m benchmarks.sample_photos --out out/bench/photos --size 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Colour photos bundled with scikit-image (no download).
PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sample_photos", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--size", type=int, default=256, help="side of the square crop, in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size {args.size} is too small (at least 8)")
    from benchmarks.measure import missing_package

    problem = missing_package("benchmarks.sample_photos", ("skimage", "bench"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from PIL import Image

    from gsq_core.images import uint8_to_float, write_image
    from gsq_core.prepare import adm_center_crop, sample_photo

    for name in PHOTOS:
        square = adm_center_crop(Image.fromarray(sample_photo(name)), args.size)
        try:
            path = write_image(args.out / f"{name}.png", uint8_to_float(square), overwrite=args.overwrite)
        except FileExistsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
