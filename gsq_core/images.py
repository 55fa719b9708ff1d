"""Image files <-> float arrays [3, H, W] in [-1, 1] (uint8 / 127.5 - 1). numpy and Pillow only."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class LoadedImage:
    """One decoded image and what was done to it on the way in."""

    path: Path
    pixels: np.ndarray  # float32 [3, H, W] in [-1, 1]
    converted_from: str | None = None  # original mode when it was not RGB (e.g. "L", "RGBA")
    resized_from: tuple[int, int] | None = None  # original (H, W) when resized


def uint8_to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1], exactly uint8 / 127.5 - 1."""
    return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """float [3, H, W] in [-1, 1] -> uint8 [H, W, 3], rounded and clipped."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise InputError(f"an image array must have shape [3, H, W], got {list(image.shape)}")
    scaled = np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5)
    return scaled.astype(np.uint8).transpose(1, 2, 0)


@contextlib.contextmanager
def opened_image(path: Path) -> Iterator[PILImage.Image]:
    """PIL's Image.open(path); a missing, corrupt or truncated file, here or while the caller
    reads it, becomes one InputError that names the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{path}: cannot decode image (corrupt, truncated or not an image): {error}") from None


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> LoadedImage:
    """Decode one file to RGB; with size=(H, W), resize (bicubic) when it differs."""
    from PIL import Image

    path = Path(path)
    with opened_image(path) as image:
        image.load()
        mode = image.mode
        rgb = image.convert("RGB") if mode != "RGB" else image.copy()
    resized_from = None
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        resized_from = (rgb.height, rgb.width)
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    pixels = uint8_to_float(np.asarray(rgb, dtype=np.uint8))
    return LoadedImage(path, pixels, None if mode == "RGB" else mode, resized_from)


def expand_image_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files inside given directories (sorted, recursive)."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{item}: directory holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(item)
    if not paths:
        raise InputError("no input images given")
    return paths


def read_batch(paths: Sequence[str | Path], size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[LoadedImage]]:
    """Decode images into one float32 batch [N, 3, H, W]; all must share a size unless size is given."""
    loaded = [read_image(p, size) for p in paths]
    first = loaded[0]
    for item in loaded[1:]:
        if item.pixels.shape != first.pixels.shape:
            raise InputError(
                f"{item.path}: size {item.pixels.shape[1]}x{item.pixels.shape[2]} differs from "
                f"{first.path} ({first.pixels.shape[1]}x{first.pixels.shape[2]}); pass a common size (--resize HxW)"
            )
    return np.stack([item.pixels for item in loaded]), loaded


def write_image(path: str | Path, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write float [3, H, W] in [-1, 1] as an 8-bit image file, atomically."""
    from PIL import Image

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".png", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(float_to_uint8(image)).save(tmp, format=_format_for(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix, "PNG"
    )


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size {text!r} must look like HxW, e.g. 256x256") from None
    if height <= 0 or width <= 0:
        raise InputError(f"size {text!r} must be positive")
    return height, width
