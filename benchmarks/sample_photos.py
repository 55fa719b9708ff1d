"""Write scikit-image's bundled sample photos as square PNGs, a reproducible image set for compare.py.

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
    import numpy as np
    import skimage.data
    from PIL import Image

    from gsq_core.images import uint8_to_float, write_image

    for name in PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())[..., :3]
        side = min(pixels.shape[:2])
        top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
        square = Image.fromarray(pixels[top : top + side, left : left + side])
        resized = np.asarray(square.resize((args.size, args.size), Image.Resampling.BICUBIC))
        try:
            path = write_image(args.out / f"{name}.png", uint8_to_float(resized), overwrite=args.overwrite)
        except FileExistsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
