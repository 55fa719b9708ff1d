"""The input of every token grid, reproducible: decode, then `--size S` or `--size native`.

    pixels = preprocess_file("photo.jpg", size=256)        # uint8 [256, 256, 3]
    images = model_input(pixels[None])                      # float32 [1, 3, 256, 256] in [-1, 1]
    codes = load_tokenizer("default").encode(torch.from_numpy(images))

Decoding goes through gsq_core.images (one definition of what an input image is: 16-bit and float
images scaled, alpha composited on white, first frame, EXIF orientation, a pixel budget checked
from the header; and its one-line errors);
the ADM crop is gsq_core.prepare.adm_center_crop (re-exported here); the uint8 -> [-1, 1] step is
gsq_core.images.uint8_to_float. numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gsq_core.errors import InputError
from gsq_core.images import rgb_image, uint8_to_float
from gsq_core.prepare import adm_center_crop  # the one ADM crop, importable from here too

if TYPE_CHECKING:
    from PIL import Image as PILImage

NATIVE = "native"


def preprocess_image(image: PILImage.Image, size: int | str, factor: int, name: str = "image") -> np.ndarray:
    """An RGB image as the tokenizer sees it, uint8 [H, W, 3]: the ADM crop to size x size, or,
    with size="native", the image as it is when both sides are multiples of the downsampling factor."""
    if size == NATIVE:
        if image.height % factor or image.width % factor:
            raise InputError(
                f"{name}: size {image.height}x{image.width} is not a multiple of the downsampling factor {factor} "
                f"(--size native takes images as they are; use --size S to crop)"
            )
        return np.asarray(image, dtype=np.uint8)
    return adm_center_crop(image, int(size))


def preprocess_bytes(data: bytes, size: int | str, factor: int, name: str) -> np.ndarray:
    """Decode an encoded image under gsq_core.images' rules (8-bit RGB, pixel budget, one-line errors;
    gsq_core.images.rgb_image) and preprocess it."""
    return preprocess_image(rgb_image(bytes(data), name), size, factor, name)


def preprocess_file(path: str | Path, size: int | str, factor: int = 1) -> np.ndarray:
    """preprocess_bytes for a file: the uint8 pixels gsq-tokenize tokenized for it (factor: the model's)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return preprocess_bytes(data, size, factor, str(path))


def model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1], exactly uint8 / 127.5 - 1 (gsq_core.images)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"pixels must be uint8 [B, H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    return np.stack([uint8_to_float(item) for item in pixels]) if len(pixels) else np.zeros((0, 3, *pixels.shape[1:3]), np.float32)


def parse_size(text: str | int) -> int | str:
    """--size: a positive integer S (the ADM crop to S x S) or 'native'."""
    if str(text).strip().lower() == NATIVE:
        return NATIVE
    try:
        size = int(text)
    except ValueError:
        raise InputError(f"--size {text!r} must be a positive integer (e.g. 256) or 'native'") from None
    if size < 1:
        raise InputError(f"--size {size} must be positive")
    return size


def describe(size: int | str) -> dict[str, object]:
    """The manifest's record of the preprocessing."""
    if size == NATIVE:
        steps = "decode to 8-bit RGB; keep the image as it is (sides must be multiples of the downsampling factor)"
    else:
        steps = (
            f"decode to 8-bit RGB; BOX-halve while the short side >= {2 * int(size)}; BICUBIC-resize the short side "
            f"to {size} (long side rounded); centre crop {size}x{size} at floor offsets"
        )
    return {
        "size": size,
        "method": "native" if size == NATIVE else "adm_center_crop",
        "steps": steps,
        "function": "gsq_dataset.preprocess.preprocess_bytes",
        "model_input": "uint8 / 127.5 - 1, channels first (gsq_core.images.uint8_to_float)",
    }
