"""Real images for export validation: scikit-image's bundled sample photos, or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gsq_core import prepare
from gsq_core.errors import InputError
from gsq_core.images import IMAGE_SUFFIXES, float_to_uint8, inspect_image, read_image, uint8_to_float

# Colour photos bundled with scikit-image (no download): portrait, food, animal, outdoor scene.
SAMPLE_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket")
MAX_CALIBRATION_IMAGES = 8


def photos_for(calib_images: str | Path | None) -> list[tuple[str, np.ndarray]]:
    """The images of folder calib_images, or scikit-image's sample photos when it is None."""
    return folder_images(calib_images) if calib_images is not None else sample_photos()


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image sample photos as (name, uint8 [H, W, 3])."""
    return prepare.sample_photos(SAMPLE_PHOTOS)


def folder_images(folder: str | Path, limit: int = MAX_CALIBRATION_IMAGES) -> list[tuple[str, np.ndarray]]:
    """Up to `limit` images of a folder (sorted), as (file name, uint8 [H, W, 3])."""
    paths = check_calibration_folder(folder, limit)
    # gsq_core.images decides what an image is (modes, budgets, one-line errors), as for every input
    return [(path.name, float_to_uint8(read_image(path).pixels)) for path in paths]


def check_calibration_folder(folder: str | Path, limit: int = MAX_CALIBRATION_IMAGES) -> list[Path]:
    """The images folder_images would read, their headers checked (InputError): run before any work."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: calibration image folder does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) to validate with")
    for path in paths:
        inspect_image(path)
    return paths


def fit_to_size(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float [3, height, width]: the ADM centre crop (gsq_core.prepare, gsq-tokenize's)."""
    from PIL import Image

    return uint8_to_float(prepare.adm_center_crop(Image.fromarray(pixels), (height, width)))


def multiple_of(value: int, factor: int) -> int:
    """value rounded to a multiple of factor, at least 2 * factor (a token grid of >= 2 per side)."""
    return max(2 * factor, round(value / factor) * factor)


def validation_batches(
    photos: list[tuple[str, np.ndarray]],
    factor: int,
    batch_size: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Float32 batches [B, 3, H, W] to validate with.

    Fixed shape (static export): one batch of exactly batch_size images of image_size, photos
    repeated when there are fewer. Dynamic export: all photos at a square size, then one photo at a
    non-square size, so batch, height and width all differ from the shapes the graph was traced at.
    """
    if image_size is not None:
        count = batch_size or 1
        chosen = [photos[i % len(photos)][1] for i in range(count)]
        return [np.stack([fit_to_size(p, *image_size) for p in chosen])]
    square = multiple_of(96, factor)
    wide = (multiple_of(80, factor), multiple_of(144, factor))
    return [
        np.stack([fit_to_size(p, square, square) for _, p in photos]),
        fit_to_size(photos[0][1], *wide)[None],
    ]
