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
from typing import Callable

import numpy as np

HELD_OUT = ("astronaut", "coffee", "chelsea")
# Photographs (colour, then grayscale). Left out: synthetic images (checkerboard, colorwheel, logo,
# binary_blobs, shepp_logan_phantom), text scans (page, text), `cat` (a copy of chelsea) and
# images that need the optional download package (pooch).
TRAINING_COLOR = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right")
TRAINING_GRAY = ("camera", "moon", "coins", "brick", "grass", "gravel", "clock", "cell")
# Colour photos in other installed packages: name -> (package, file inside the package).
OTHER_PACKAGES = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def _package_file(name: str) -> Callable[[], np.ndarray]:
    """Loader of a photo stored as a file inside another package (OTHER_PACKAGES)."""
    import importlib.util

    from PIL import Image

    package, relative = OTHER_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"photo {name!r} ships with {package}, which is not installed "
                                  f"(pip install {'scikit-learn' if package == 'sklearn' else package})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return lambda: np.asarray(Image.open(path).convert("RGB"))


def _loader(name: str) -> Callable[[], np.ndarray]:
    import skimage.data

    if name in OTHER_PACKAGES:
        return _package_file(name)

    if name.startswith("motorcycle_"):
        index = 0 if name.endswith("left") else 1
        return lambda: skimage.data.stereo_motorcycle()[index]
    return getattr(skimage.data, name)


def photo(name: str) -> np.ndarray:
    """The named photo (scikit-image, or OTHER_PACKAGES) as uint8 RGB [H, W, 3]."""
    pixels = np.asarray(_loader(name)())
    if pixels.dtype != np.uint8:
        raise ValueError(f"photo {name!r} is {pixels.dtype}, expected uint8")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return pixels[..., :3]


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
            Image.fromarray(photo(name)).save(path)
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
