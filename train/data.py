"""Training data: image folders and WebDataset-style tar shards, streamed as deterministic batches.

Both sources yield whole batches {"images": float [B,3,S,S] in [-1,1], "skipped": int} for one
process. Batch j of process `rank` is a pure function of (seed, j, rank, world size) for folders,
and of (seed, position in the process's shard stream) for shards, so a resumed run continues with
exactly the batches it would have seen, given the batch index it stopped at.
"""

from __future__ import annotations

import hashlib
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from gsq_core.errors import InputError
from gsq_core.images import rgb_image

TRAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class DataError(InputError):
    """The dataset cannot produce images (empty folder, nothing readable)."""


def list_images(root: str | Path) -> list[Path]:
    """Image files (jpg/png/webp) under root, recursively, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TRAIN_SUFFIXES)
    if not files:
        raise DataError(f"{root}: holds no images ({', '.join(TRAIN_SUFFIXES)})")
    return files


def list_shards(root: str | Path) -> list[Path]:
    """The .tar shards in a folder, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory of .tar shards")
    shards = sorted(p for p in root.rglob("*.tar") if p.is_file())
    if not shards:
        raise DataError(f"{root}: holds no .tar shards")
    return shards


def split_validation(files: list[Path], root: Path, fraction: float, max_images: int) -> tuple[list[Path], list[Path]]:
    """(train, validation): the files whose path hashes lowest go to validation; stable as folders grow."""
    if fraction <= 0 or len(files) < 2:
        return files, []
    count = min(max_images, max(1, round(fraction * len(files))), len(files) - 1)
    ranked = sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())
    held_out = set(ranked[:count])
    return [p for p in files if p not in held_out], sorted(held_out)


def decode_rgb(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a file path or encoded bytes to an 8-bit RGB PIL image under gsq_core.images' rules
    (16-bit scaling, transparency, frames, pixel budget); InputError (a ValueError) when unreadable."""
    return rgb_image(source, name)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W] in [-1, 1] (uint8 / 127.5 - 1)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class CropSpec:
    """How a training crop is cut from an image."""

    size: int
    min_scale: float = 1.0
    hflip: bool = True
    vflip: bool = False
    color_jitter: float = 0.0  # > 0: permute RGB channels and scale each by a factor in [1 - color_jitter, 1]


def random_crop(image: Image.Image, spec: CropSpec, rng: np.random.Generator) -> torch.Tensor:
    """A random (optionally downscaled, flipped) square crop as float [3, S, S]."""
    scale = rng.uniform(spec.min_scale, 1.0) if spec.min_scale < 1.0 else 1.0
    window = min(round(spec.size / scale), image.width, image.height)
    left = int(rng.integers(0, image.width - window + 1))
    top = int(rng.integers(0, image.height - window + 1))
    crop = image.crop((left, top, left + window, top + window))
    if window != spec.size:
        crop = crop.resize((spec.size, spec.size), Image.Resampling.BICUBIC)
    if spec.hflip and rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if spec.vflip and rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    pixels = pil_to_tensor(crop)
    if spec.color_jitter > 0:  # new colours for a tokenizer to reproduce (also tints grayscale photos)
        gains = torch.from_numpy(rng.uniform(1.0 - spec.color_jitter, 1.0, 3)).float().view(3, 1, 1)
        pixels = (pixels[torch.from_numpy(rng.permutation(3))] + 1.0) * gains - 1.0
    return pixels


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _warn_skip(what: str, error: Exception) -> None:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    warnings.warn(f"skipping unreadable image {reason if reason.startswith(what) else f'{what}: {reason}'}")


class FolderStream(IterableDataset):
    """Endless batches from a list of image files: per-epoch permutation, random crops."""

    def __init__(self, files: list[Path], crop: CropSpec, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, cache_images: bool = False):
        if not files:
            raise DataError("no training images")
        self.files, self.crop, self.batch_size, self.seed = files, crop, batch_size, seed
        self.rank, self.world_size, self.start_batch, self.cache_images = rank, world_size, start_batch, cache_images
        self._cache: dict[int, Image.Image] = {}
        self._bad: set[int] = set()
        self._permutation: tuple[int, np.ndarray] | None = None

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        batch_index = self.start_batch + worker
        while True:
            yield self.batch(batch_index)
            batch_index += workers

    def batch(self, batch_index: int) -> dict:
        """Batch number `batch_index` of this process."""
        first = (batch_index * self.world_size + self.rank) * self.batch_size
        images, skipped = [], 0
        for sample in range(first, first + self.batch_size):
            image, misses = self._sample(sample)
            images.append(image)
            skipped += misses
        return {"images": torch.stack(images), "skipped": skipped}

    def _order(self, epoch: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.files)))
        return self._permutation[1]

    def _sample(self, sample: int) -> tuple[torch.Tensor, int]:
        count = len(self.files)
        order = self._order(sample // count)
        misses = 0
        for offset in range(count):
            index = int(order[(sample + offset) % count])
            if index in self._bad:
                misses += 1
                continue
            try:
                image = self._cache.get(index) or decode_rgb(self.files[index])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                self._bad.add(index)
                _warn_skip(str(self.files[index]), error)
                misses += 1
                continue
            if self.cache_images:
                self._cache[index] = image
            return random_crop(image, self.crop, np.random.default_rng([self.seed, 1, sample])), misses
        raise DataError(f"none of the {count} training images could be read")


def iter_tar_images(shard: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, encoded bytes) for every image member of a tar shard, in archive order."""
    with tarfile.open(shard, "r") as archive:
        for member in archive:
            if member.isfile() and Path(member.name).suffix.lower() in TRAIN_SUFFIXES:
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()


class ShardStream(IterableDataset):
    """Endless batches streamed from tar shards (WebDataset layout: one image member per sample).

    Shards are dealt to (process, worker residue) slots; each slot reads its shards in a
    per-epoch order through a seeded shuffle buffer. Resuming skips the already-seen samples
    without decoding them (the position is exact unless unreadable samples were met before it).
    """

    def __init__(self, shards: list[Path], crop: CropSpec, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, shuffle_buffer: int = 256):
        if not shards:
            raise DataError("no training shards")
        self.shards, self.crop, self.batch_size, self.seed = shards, crop, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.shuffle_buffer = max(1, shuffle_buffer)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        first_batch = self.start_batch + worker
        residue = first_batch % workers
        slot = self.rank * workers + residue
        already_seen = (first_batch // workers) * self.batch_size  # this residue's batches before start
        samples = self._slot_samples(slot, self.world_size * workers, already_seen)
        while True:
            images, skipped = [], 0
            while len(images) < self.batch_size:
                image, misses = next(samples)
                skipped += misses
                if image is not None:
                    images.append(image)
            yield {"images": torch.stack(images), "skipped": skipped}

    def _slot_samples(self, slot: int, slots: int, skip: int) -> Iterator[tuple[torch.Tensor | None, int]]:
        if len(self.shards) >= slots:
            mine = self.shards[slot::slots]
        else:  # fewer shards than readers: readers share shards (with their own crops and order)
            mine = [self.shards[slot % len(self.shards)]]
        position = 0  # items of this slot's stream so far, readable or not
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, 2, slot, epoch])
            buffer: list[tuple[str, bytes]] = []
            usable = 0
            for shard_index in rng.permutation(len(mine)):
                shard = mine[int(shard_index)]
                items = iter_tar_images(shard)
                while True:
                    try:
                        item = next(items, None)
                    except (tarfile.TarError, OSError, EOFError) as error:
                        warnings.warn(f"skipping the rest of unreadable shard {shard}: not a readable tar archive "
                                      f"({type(error).__name__}: {' '.join(str(error).split())[-120:]})")
                        yield None, 1
                        break
                    if item is None:
                        break
                    buffer.append(item)
                    if len(buffer) >= self.shuffle_buffer:
                        result = self._emit(buffer.pop(int(rng.integers(len(buffer)))), position, skip, slot)
                        position += 1
                        if result is not None:
                            usable += result[0] is not None
                            yield result
            while buffer:
                result = self._emit(buffer.pop(int(rng.integers(len(buffer)))), position, skip, slot)
                position += 1
                if result is not None:
                    usable += result[0] is not None
                    yield result
            if position <= skip:
                pass  # still skipping towards the resume point
            elif usable == 0:
                raise DataError(f"shards {', '.join(map(str, mine))} hold no readable images")
            epoch += 1

    def _emit(self, item: tuple[str, bytes], index: int, skip: int, slot: int) -> tuple[torch.Tensor | None, int] | None:
        if index < skip:  # consumed before the resume point: advance without decoding
            return None
        name, payload = item
        try:
            image = decode_rgb(payload, name)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            _warn_skip(name, error)
            return None, 1
        return random_crop(image, self.crop, np.random.default_rng([self.seed, 3, slot, index])), 0
