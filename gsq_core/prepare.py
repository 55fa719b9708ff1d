"""Image preparation shared by gsq-tokenize, training validation, export calibration and the benchmarks.

    pixels = adm_center_crop(rgb_image("photo.jpg"), 256)   # uint8 [256, 256, 3], gsq-tokenize's input
    photo = sample_photo("astronaut")                        # uint8 [512, 512, 3]

- the ADM centre crop (one crop for every caller: tokenizing, validation, calibration, benchmarks);
- the sample photos bundled with installed packages (scikit-image; a few with scikit-learn and
  matplotlib), loaded as uint8 RGB.

numpy and Pillow only; scikit-image is imported when a sample photo is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Colour photos in other installed packages: name -> (package, file inside the package).
OTHER_PACKAGES: dict[str, tuple[str, str]] = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


# -- the ADM centre crop --------------------------------------------------------------------------
def adm_center_crop(image: PILImage.Image, size: int | tuple[int, int]) -> np.ndarray:
    """The ADM centre crop (guided-diffusion's center_crop_arr; LlamaGen's ImageNet input), as uint8
    [H, W, 3] for size = S (H = W = S, the square crop gsq-tokenize documents) or size = (H, W).

    1. while both sides are >= twice the target's, halve both sides (integer division) with a BOX filter;
    2. resize with BICUBIC by the smallest scale that covers the target (for a square target: the short
       side becomes S), each side round(side * scale) (Python's round: halves go to the even number);
    3. crop H x W at top = (height - H) // 2, left = (width - W) // 2.
    """
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise InputError(f"crop size {size} must be positive")
    while image.height >= 2 * height and image.width >= 2 * width:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = height / image.height if height * image.width >= width * image.height else width / image.width
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    top = (pixels.shape[0] - height) // 2
    left = (pixels.shape[1] - width) // 2
    return np.ascontiguousarray(pixels[top : top + height, left : left + width])


# -- the sample photos ----------------------------------------------------------------------------
def sample_photo(name: str) -> np.ndarray:
    """A photo bundled with an installed package as uint8 RGB [H, W, 3]: scikit-image's skimage.data.<name>
    (greyscale repeated to three channels; motorcycle_left / motorcycle_right: stereo_motorcycle's
    pair), or one of OTHER_PACKAGES."""
    pixels = np.asarray(_loader(name)())
    if pixels.dtype != np.uint8:
        raise ValueError(f"photo {name!r} is {pixels.dtype}, expected uint8")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def sample_photos(names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """(name, sample_photo(name)) for each name."""
    return [(name, sample_photo(name)) for name in names]


def _loader(name: str) -> Callable[[], np.ndarray]:
    if name in OTHER_PACKAGES:
        return _package_file(name)
    import skimage.data

    if name.startswith("motorcycle_"):
        index = 0 if name.endswith("left") else 1
        return lambda: skimage.data.stereo_motorcycle()[index]
    loader = getattr(skimage.data, name, None)
    if not callable(loader):
        raise ValueError(f"no sample photo named {name!r} in skimage.data")
    return loader


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

