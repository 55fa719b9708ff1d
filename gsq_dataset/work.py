"""The stages every executor runs, without Ray: decode + ADM crop of source rows, tokenizing batches of
pixels into token rows, the failure records, and the per-stage clocks.

Both executors call these: the in-process one (gsq_dataset.local) from its decoder threads and its
tokenizer loop, the Ray one (gsq_dataset.stages) from its tasks and actors.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from gsq_core.errors import GSQError
from gsq_core.images import rgb_image

from .preprocess import model_input, preprocess_image
from .tokens import token_dtype, token_schema

STAGES = ("decode", "crop", "tokenize", "write")


# -- clocks --------------------------------------------------------------------------------------------
@dataclass
class StageClock:
    """Seconds spent in each stage and images through it (thread-safe; merged across workers)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float, images: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.images[stage] += images

    def merge(self, seconds: dict[str, float], images: dict[str, int]) -> None:
        for stage in STAGES:
            self.add(stage, seconds.get(stage, 0.0), images.get(stage, 0))

    def report(self, parallel: dict[str, int]) -> dict[str, Any]:
        """Per stage: seconds per image and the rate its workers sustain (parallel[stage] of them at
        once); decode and crop run in the same workers, so they share one rate. `bound` names the
        slowest stage and `bound_images_per_s` its rate: what the pipeline can reach at best."""
        per_image = {s: (self.seconds[s] / self.images[s] if self.images[s] else None) for s in STAGES}
        rates: dict[str, float | None] = {}
        decode_crop = (per_image["decode"] or 0.0) + (per_image["crop"] or 0.0)
        rates["decode+crop"] = parallel["decode"] / decode_crop if decode_crop > 0 else None
        for stage in ("tokenize", "write"):
            value = per_image[stage]
            rates[stage] = parallel[stage] / value if value else None
        known = {stage: rate for stage, rate in rates.items() if rate is not None}
        bound = min(known, key=known.__getitem__) if known else None
        return {
            "seconds_per_image": {s: (round(v, 5) if v is not None else None) for s, v in per_image.items()},
            "parallel": dict(parallel),
            "images_per_s": {s: (round(v, 2) if v is not None else None) for s, v in rates.items()},
            "bound": bound,
            "bound_images_per_s": round(known[bound], 2) if bound else None,
        }


# -- failures ------------------------------------------------------------------------------------------
def record_failures(failed_dir: str, ids: list[str], reasons: list[str]) -> None:
    """Write (id, reason) lines to a new file in failed_dir, atomically (temporary name, then rename)."""
    if not ids:
        return
    os.makedirs(failed_dir, exist_ok=True)
    name = f"{uuid.uuid4().hex}.jsonl"
    temporary = os.path.join(failed_dir, f".{name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for sample_id, reason in zip(ids, reasons, strict=True):
            handle.write(json.dumps({"id": sample_id, "reason": reason}, ensure_ascii=False) + "\n")
    os.replace(temporary, os.path.join(failed_dir, name))


def one_line(error: BaseException) -> str:
    """An exception as one line: a GSQError's own message, else its type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, GSQError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- decode + crop ---------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Decoded samples (pixels uint8 [H, W, 3]) and the samples that failed, with their reasons."""

    ids: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    failed_reasons: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "crop": 0.0})


def prepare_rows(
    ids: list[str], labels: list[int | None], images: list[bytes | None], errors: list[str | None], size: int | str, factor: int
) -> Prepared:
    """Source rows -> pixels; an undecodable sample is listed as failed, never fatal. Times decode and crop."""
    out = Prepared()
    for sample_id, label, image, error in zip(ids, labels, images, errors, strict=True):
        if error is None:
            try:
                started = time.perf_counter()
                decoded = rgb_image(bytes(image), sample_id)
                decoded_at = time.perf_counter()
                pixels = preprocess_image(decoded, size, factor, sample_id)
                out.seconds["decode"] += decoded_at - started
                out.seconds["crop"] += time.perf_counter() - decoded_at
                out.pixels.append(pixels)
                out.ids.append(sample_id)
                out.labels.append(label)
                continue
            except Exception as problem:  # any undecodable sample is skipped and listed, never fatal
                error = one_line(problem)
        out.failed_ids.append(sample_id)
        out.failed_reasons.append(error if error.startswith(sample_id) else f"{sample_id}: {error}")
    return out


# -- tokenize ------------------------------------------------------------------------------------------
def load_tokenizer_runtime(backend: str, model: str, options: dict[str, Any], torch_threads: int | None = None) -> Any:
    """The backend's runtime, loaded once per worker (torch's intra-op threads set first)."""
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    from gsq_deploy.runtimes import load_runtime

    return load_runtime(backend, model, **options)


@dataclass
class Encoded:
    """A batch's token rows (shards' schema) and the samples the runtime refused."""

    table: pa.Table
    failed_ids: list[str]
    failed_reasons: list[str]
    seconds: float  # in the runtime's encode


def encode_batch(runtime: Any, num_embed: int, ids: list[str], labels: list[int | None], items: list[np.ndarray]) -> Encoded:
    """Encode a batch of pixels; images of one size go in one call (split by the runtime's memory
    budget); when the runtime refuses a call, each sample is tried alone and the culprit listed."""
    codes: list[np.ndarray | None] = [None] * len(ids)
    failed_ids: list[str] = []
    failed_reasons: list[str] = []
    started = time.perf_counter()
    for group in _same_shape_groups(items):
        height, width = items[group[0]].shape[:2]
        try:  # the runtime's memory budget (gsq_core.budgets): how many such images one call takes
            limit = max(1, runtime.work_limit(height, width, "encode"))
        except GSQError as error:
            failed_ids.extend(ids[i] for i in group)
            failed_reasons.extend(f"{ids[i]}: {one_line(error)}" for i in group)
            continue
        for start in range(0, len(group), limit):
            _encode(runtime, group[start : start + limit], items, ids, codes, failed_ids, failed_reasons)
    seconds = time.perf_counter() - started
    kept = [i for i in range(len(ids)) if codes[i] is not None]
    table = token_table([ids[i] for i in kept], [labels[i] for i in kept], [codes[i] for i in kept], num_embed)
    return Encoded(table, failed_ids, failed_reasons, seconds)


def _encode(
    runtime: Any,
    indices: list[int],
    items: list[np.ndarray],
    ids: list[str],
    codes: list[np.ndarray | None],
    failed_ids: list[str],
    failed_reasons: list[str],
) -> None:
    try:
        encoded = runtime.encode(model_input(np.stack([items[i] for i in indices])))
        for position, index in enumerate(indices):
            codes[index] = encoded[position]
    except GSQError:
        for index in indices:
            try:
                codes[index] = runtime.encode(model_input(items[index][None]))[0]
            except GSQError as error:
                failed_ids.append(ids[index])
                failed_reasons.append(f"{ids[index]}: {one_line(error)}")


def token_table(ids: list[str], labels: list[int | None], codes: list[np.ndarray], num_embed: int) -> pa.Table:
    """Token rows in the shards' schema (gsq_dataset.tokens.token_schema)."""
    dtype = token_dtype(num_embed)
    flat = [np.ascontiguousarray(grid, dtype=dtype).reshape(-1) for grid in codes]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([item.size for item in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, dtype)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "tokens": tokens,
            "token_height": pa.array([grid.shape[0] for grid in codes], pa.int32()),
            "token_width": pa.array([grid.shape[1] for grid in codes], pa.int32()),
        },
        schema=token_schema(num_embed),
    )


def _same_shape_groups(items: list[np.ndarray]) -> list[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    return list(groups.values())
