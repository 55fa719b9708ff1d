"""What an input image is: files or bytes -> float arrays [3, H, W] in [-1, 1]. numpy and Pillow only.

Every image that enters this toolkit (encode, roundtrip, compare.py, --calib-images, training data,
dataset tokenization) is decoded here, under one set of rules (docs/security.md):

- the header is read first and its size checked against a pixel budget (`max_pixels`, default
  DEFAULT_MAX_PIXELS or $GSQ_MAX_PIXELS) before any pixel is decoded;
- 8-bit images map exactly to uint8 / 127.5 - 1; 16-bit greyscale ("I;16", "I;16B", "I") is
  scaled from 0..65535 and 32-bit float greyscale ("F") from 0..1, never clipped; values outside
  those ranges are refused;
- transparency is composited on white (ALPHA_BACKGROUND), as an image viewer shows it on a page;
- an animated or multi-page file gives its first frame;
- the EXIF orientation is applied, so the pixels are the picture as it is displayed;
- each of these changes is reported as a note (LoadedImage.notes), never silently.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Decoding budget: a 8192 x 8192 image (64 MP) decodes to ~1.2 GB of working arrays at most.
DEFAULT_MAX_PIXELS = 64 * 2**20
MAX_PIXELS_ENV = "GSQ_MAX_PIXELS"
# Colour under transparent pixels (white: what an image viewer shows on a page).
ALPHA_BACKGROUND = (255, 255, 255)
# EXIF orientation tag and the numpy transform that turns stored pixels into the displayed picture.
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_SWAPS_AXES = {5, 6, 7, 8}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, and what decoding it will change (notes)."""

    name: str
    height: int  # as displayed (after the EXIF orientation)
    width: int
    mode: str
    orientation: int = 1
    notes: tuple[str, ...] = ()


@dataclass
class LoadedImage:
    """One decoded image and what was done to it on the way in."""

    path: Path  # the file, or the name given with the bytes
    pixels: np.ndarray  # float32 [3, H, W] in [-1, 1]
    converted_from: str | None = None  # original mode when it was not RGB (e.g. "L", "RGBA", "I;16")
    resized_from: tuple[int, int] | None = None  # original (H, W) when resized
    notes: list[str] = field(default_factory=list)  # every change made on the way in, one line each


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


# The range contract of model inputs: float pixels in [-1, 1] (uint8 / 127.5 - 1). Values may
# leave it by rounding only (fp16 / bf16 casts, float resizes clipped back): up to this much.
VALUE_RANGE_TOLERANCE = 1e-3


def check_value_range(low: float, high: float, all_finite: Callable[[], bool]) -> None:
    """InputError unless [low, high] (an image batch's min and max) lies in [-1, 1] up to rounding.

    all_finite is called only when the range check fails, to tell NaN / inf apart from a wrong scale.
    """
    limit = 1.0 + VALUE_RANGE_TOLERANCE
    if -limit <= low and high <= limit:  # False for NaN as well
        return
    if not all_finite():
        raise InputError("images contain NaN or infinite values")
    hint = ""
    if low >= -VALUE_RANGE_TOLERANCE and high > 2.0:
        hint = "; these look like 0..255 pixel values: divide them by 127.5 and subtract 1"
    elif low < -limit and high > limit and low > -4 and high < 4:
        hint = "; these look normalised with a mean and std: undo that, then scale uint8 / 127.5 - 1"
    raise InputError(
        f"image values lie in [{low:.4g}, {high:.4g}], outside [-1, 1]: images must be floats in [-1, 1] "
        f"(uint8 / 127.5 - 1; clamp after any resize){hint}"
    )


def default_max_pixels() -> int:
    """The decoding budget in pixels: $GSQ_MAX_PIXELS when set, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"${MAX_PIXELS_ENV}={text!r} must be a number of pixels, e.g. 100000000") from None
    if value < 1:
        raise InputError(f"${MAX_PIXELS_ENV}={text!r} must be positive")
    return value


# -- opening ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def opened_image(source: str | Path | bytes, name: str | None = None) -> Iterator[PILImage.Image]:
    """PIL's Image.open on a path or encoded bytes; a missing, corrupt or truncated file, here or while
    the caller reads it, becomes one InputError that names it (`name`, else the path)."""
    from PIL import Image, UnidentifiedImageError

    label = name if name is not None else str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>"
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # Our own pixel budget decides (see _check_pixels); PIL's size warning and its palette
            # transparency advice are about conversions done here properly.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(handle) as image:
                yield image
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, not an image") from None
    except Image.DecompressionBombError as error:
        found = _BOMB_PIXELS.search(str(error))
        claimed = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
        raise InputError(
            f"{label}: its header claims an image of {claimed}, over the decoding limit of "
            f"{_limit_text()}; refusing to decode it (a decompression bomb, or an image too large for this machine)"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image in a format Pillow reads (corrupt, truncated or another kind of file)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InputError(f"{label}: cannot decode image (corrupt, truncated or not an image): {error}") from None
    except MemoryError:
        raise InputError(f"{label}: decoding ran out of memory") from None


def inspect_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> ImageHeader:
    """Read only the header: size as displayed, mode and notes; InputError when it is over max_pixels."""
    with opened_image(source, name) as image:
        return _header(image, _label(source, name), _budget(max_pixels))


def read_image(path: str | Path, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> LoadedImage:
    """Decode one image file to float [3, H, W] in [-1, 1]; with size=(H, W), resize (bicubic) when it differs."""
    path = Path(path)
    with opened_image(path) as image:
        return _decode(image, path, str(path), size, _budget(max_pixels))


def decode_image(
    data: bytes, name: str, size: tuple[int, int] | None = None, max_pixels: int | None = None
) -> LoadedImage:
    """read_image for encoded bytes in memory (a dataset row, a tar member); `name` labels messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name}: image data must be bytes, got {type(data).__name__}")
    with opened_image(bytes(data), name) as image:
        return _decode(image, Path(name), name, size, _budget(max_pixels))


def rgb_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> PILImage.Image:
    """An 8-bit RGB PIL image under the same rules, for PIL pipelines (training crops, gsq-tokenize's
    ADM crop). 8-bit sources skip the float round trip (exactly the same pixels, a third of the time)."""
    from PIL import Image

    label = _label(source, name)
    handle = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    with opened_image(handle, label) as image:
        pixels, _ = _rgb_pixels(image, label, _budget(max_pixels))
    if pixels.dtype != np.uint8:  # 16-bit and float sources: scaled as decode_image scales them
        pixels = float_to_uint8(_float_pixels(pixels))
    return Image.fromarray(pixels)


# -- the rules ----------------------------------------------------------------------------------------
def _header(image: PILImage.Image, label: str, max_pixels: int) -> ImageHeader:
    width, height = image.size
    orientation = _orientation(image)
    if orientation in _ORIENTATION_SWAPS_AXES:
        width, height = height, width
    _check_pixels(label, height, width, max_pixels)
    notes = []
    if getattr(image, "is_animated", False):  # GIF, APNG, WebP, multi-page TIFF, MPO
        notes.append(f"{label}: has several frames or pages; using the first")
    if image.mode != "RGB":
        notes.append(f"{label}: {_conversion_text(image)}")
    if orientation != 1:
        notes.append(f"{label}: EXIF orientation {orientation} applied (pixels as the picture is displayed)")
    return ImageHeader(label, height, width, image.mode, orientation, tuple(notes))


def _decode(
    image: PILImage.Image, path: Path, label: str, size: tuple[int, int] | None, max_pixels: int
) -> LoadedImage:
    pixels, header = _rgb_pixels(image, label, max_pixels)
    notes = list(header.notes)
    resized_from = None
    if size is not None and pixels.shape[:2] != tuple(size):
        resized_from = (int(pixels.shape[0]), int(pixels.shape[1]))
        pixels = _resize(pixels, size)
        notes.append(f"{label}: resized {resized_from[0]}x{resized_from[1]} to {size[0]}x{size[1]} (bicubic)")
    converted = None if header.mode == "RGB" else header.mode
    return LoadedImage(path, _float_pixels(pixels), converted, resized_from, notes)


def _rgb_pixels(image: PILImage.Image, label: str, max_pixels: int) -> tuple[np.ndarray, ImageHeader]:
    """The rules up to the pixels as displayed: header and budget, decoding, conversion, orientation.
    uint8 [H, W, 3] for 8-bit sources, float32 [H, W, 3] in [0, 1] for 16-bit and float ones."""
    header = _header(image, label, max_pixels)
    try:
        image.load()
        pixels = _to_rgb_array(image, label)
    except MemoryError:
        raise InputError(f"{label}: decoding ran out of memory ({header.width}x{header.height})") from None
    if header.orientation != 1:
        pixels = _apply_orientation(pixels, header.orientation)
    return pixels, header


def _float_pixels(pixels: np.ndarray) -> np.ndarray:
    """_rgb_pixels' output as the model input: float32 [3, H, W] in [-1, 1]."""
    if pixels.dtype == np.uint8:
        return uint8_to_float(pixels)
    return (pixels * np.float32(2.0) - np.float32(1.0)).transpose(2, 0, 1).copy()  # float32 in [0, 1]


def _to_rgb_array(image: PILImage.Image, label: str) -> np.ndarray:
    """uint8 [H, W, 3] for 8-bit sources, float32 [H, W, 3] in [0, 1] for 16-bit and float ones."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise InputError(
                f"{label}: {mode} image holds values in [{low}, {high}], outside the 16-bit range 0..65535 this "
                "toolkit scales from; convert it to 8 or 16 bits per channel first"
            )
        grey = values.astype(np.float32) / np.float32(65535.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{label}: float image holds NaN or infinite values")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < -1e-6 or high > 1 + 1e-6:
            raise InputError(
                f"{label}: 32-bit float image holds values in [{low:.4g}, {high:.4g}]; float images must lie in "
                "[0, 1] (scaled to [-1, 1] here); rescale it or save it as 8/16-bit"
            )
        grey = np.clip(values, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    try:
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info) or (
            mode in ("L", "RGB", "I;16") and "transparency" in image.info
        ):
            return _composite_on_background(np.asarray(image.convert("RGBA"), dtype=np.uint8))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:
        raise InputError(f"{label}: cannot convert a {mode} image to RGB: {error}") from None


def _composite_on_background(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA [H, W, 4] -> uint8 RGB over ALPHA_BACKGROUND (exactly the RGB when fully opaque)."""
    alpha = rgba[..., 3:4]
    if (alpha == 255).all():
        return np.ascontiguousarray(rgba[..., :3])
    weight = alpha.astype(np.float32) / np.float32(255.0)
    background = np.asarray(ALPHA_BACKGROUND, dtype=np.float32)
    mixed = rgba[..., :3].astype(np.float32) * weight + background * (1.0 - weight)
    return np.rint(mixed).astype(np.uint8)


def _conversion_text(image: PILImage.Image) -> str:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return f"{mode} (16-bit greyscale) scaled from 0..65535 to [-1, 1] and repeated to RGB"
    if mode == "F":
        return "F (32-bit float greyscale) scaled from [0, 1] to [-1, 1] and repeated to RGB"
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return f"converted {mode} to RGB; transparent pixels composited on white"
    return f"converted {mode} to RGB"


def _orientation(image: PILImage.Image) -> int:
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block: keep the stored orientation  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored [H, W, 3] -> displayed, for EXIF orientations 2..8 (as PIL.ImageOps.exif_transpose)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(transforms[orientation](pixels))


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize to (H, W): 8-bit RGB in PIL's RGB mode; float channels one by one, clipped to [0, 1]."""
    from PIL import Image

    height, width = size
    if pixels.dtype == np.uint8:
        resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(resized, dtype=np.uint8)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize((width, height), Image.Resampling.BICUBIC))
        for c in range(pixels.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)


def _check_pixels(label: str, height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise InputError(f"{label}: its header claims an empty {width}x{height} image")
    if height * width > max_pixels:
        raise InputError(
            f"{label}: {width}x{height} image ({height * width / 1e6:,.1f} MP) is over the decoding limit of "
            f"{max_pixels / 1e6:,.1f} MP; if you trust the file and have about {_decode_bytes(height * width)} of "
            f"memory, raise it (--max-pixels {height * width} or ${MAX_PIXELS_ENV}); otherwise downscale the file first"
        )


def _decode_bytes(pixels: int) -> str:
    return f"{pixels * 20 / 2**30:.1f} GiB"  # PIL's 4 B/px + uint8 copy 3 B/px + float32 [3,H,W] 12 B/px


def _budget(max_pixels: int | None) -> int:
    """The pixel budget to apply; Pillow's own bomb limit is raised to match when a caller raises ours."""
    if max_pixels is None:
        return default_max_pixels()
    if max_pixels < 1:
        raise InputError(f"max_pixels={max_pixels} must be positive")
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # explicitly asked for: Pillow must not refuse below our limit
    return max_pixels


def _limit_text() -> str:
    from PIL import Image

    ours = default_max_pixels()
    theirs = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else ours
    return f"{min(ours, theirs) / 1e6:,.1f} MP (--max-pixels / ${MAX_PIXELS_ENV})"


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


# -- files --------------------------------------------------------------------------------------------
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


def read_batch(
    paths: Sequence[str | Path], size: tuple[int, int] | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, list[LoadedImage]]:
    """Decode images into one float32 batch [N, 3, H, W]; all must share a size unless size is given."""
    loaded = [read_image(p, size, max_pixels) for p in paths]
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
