"""The work Ray runs: decoding + preprocessing (CPU tasks), tokenizing (an actor per worker, the
runtime loaded once per actor), and the side records of failed samples and progress."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from gsq_core.errors import GSQError

from .preprocess import model_input, preprocess_bytes
from .resources import WorkerPlan
from .tokens import token_dtype, token_schema

# -- failures and progress ---------------------------------------------------------------------------
@ray.remote(num_cpus=0)
class ProgressCounter:
    """Counts tokenized and failed samples as the work reports them (read by the driver's progress
    line), and times the tokenizer calls with the workers' own clocks (reports may arrive late)."""

    def __init__(self) -> None:
        self.tokenized = 0
        self.failed = 0
        self.first_call: tuple[float, float, int] | None = None  # (started, finished, images) of the first call
        self.last_finished = 0.0
        self.busy_seconds = 0.0

    def add(self, tokenized: int = 0, failed: int = 0, started: float | None = None, finished: float | None = None) -> None:
        self.tokenized += tokenized
        self.failed += failed
        if started is not None and finished is not None and tokenized:
            self.busy_seconds += finished - started
            if self.first_call is None or finished < self.first_call[1]:
                self.first_call = (started, finished, tokenized)
            self.last_finished = max(self.last_finished, finished)

    def totals(self) -> tuple[int, int]:
        return self.tokenized, self.failed

    def timings(self, workers: int) -> dict[str, float | None]:
        """steady_images_per_s: images after the first tokenizer call over the time from its end to the
        last call's end (start-up excluded); tokenizer_busy: share of that span the workers spent in encode."""
        if self.first_call is None or self.last_finished <= self.first_call[1]:
            return {"steady_images_per_s": None, "tokenizer_busy": None}
        started, finished, images = self.first_call
        steady = (self.tokenized - images) / (self.last_finished - finished)
        busy = self.busy_seconds / (workers * (self.last_finished - started))
        return {"steady_images_per_s": round(steady, 3), "tokenizer_busy": round(min(1.0, busy), 3)}


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


# -- decode + preprocess (CPU tasks) -----------------------------------------------------------------
def prepare_batch(
    batch: pa.Table, size: int | str, factor: int, failed_dir: str, counter: Any
) -> dict[str, np.ndarray]:
    """Source rows -> id, label, pixels (uint8 [H, W, 3]); failed samples are recorded and dropped."""
    ids = batch.column("id").to_pylist()
    labels = batch.column("label").to_pylist()
    images = batch.column("image").to_pylist()
    errors = batch.column("error").to_pylist()
    kept_ids, kept_labels, kept_pixels = [], [], []
    failed_ids, failed_reasons = [], []
    for sample_id, label, image, error in zip(ids, labels, images, errors, strict=True):
        if error is None:
            try:
                kept_pixels.append(preprocess_bytes(image, size, factor, sample_id))
                kept_ids.append(sample_id)
                kept_labels.append(label)
                continue
            except Exception as problem:  # any undecodable sample is skipped and listed, never fatal
                error = one_line(problem)
        failed_ids.append(sample_id)
        failed_reasons.append(error if error.startswith(sample_id) else f"{sample_id}: {error}")
    record_failures(failed_dir, failed_ids, failed_reasons)
    if failed_ids:
        counter.add.remote(failed=len(failed_ids))
    return {
        "id": np.array(kept_ids, dtype=object),
        "label": np.array([-1 if label is None else label for label in kept_labels], dtype=np.int64),
        "pixels": _stack(kept_pixels),
    }


def _stack(pixels: list[np.ndarray]) -> np.ndarray:
    """One uint8 [N, H, W, 3] array when all share a size, else an object array of [H, W, 3] arrays."""
    if pixels and all(item.shape == pixels[0].shape for item in pixels):
        return np.stack(pixels)
    stacked = np.empty(len(pixels), dtype=object)
    stacked[:] = pixels
    return stacked


# -- tokenize (an actor per worker) ------------------------------------------------------------------
def actor_pool_args(plan: WorkerPlan, batch_size: int) -> dict[str, Any]:
    """map_batches arguments of the tokenizer stage: a fixed pool of plan.workers actors, each asking
    Ray for the plan's CPUs and GPUs (one GPU per actor for GPU backends)."""
    return {
        "compute": ray.data.ActorPoolStrategy(size=plan.workers),
        "num_cpus": plan.cpus_per_worker,
        "num_gpus": plan.gpus_per_worker or None,
        "batch_size": batch_size,
        "batch_format": "numpy",
    }


class Tokenizer:
    """Loads the runtime once; turns batches of pixels into token rows (shards' schema)."""

    def __init__(
        self,
        backend: str,
        model: str,
        options: dict[str, Any],
        num_embed: int,
        failed_dir: str,
        counter: Any,
        torch_threads: int | None = None,
    ):
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        from runtimes import load_runtime

        self.runtime = load_runtime(backend, model, **options)
        self.schema = token_schema(num_embed)
        self.dtype = token_dtype(num_embed)
        self.failed_dir = failed_dir
        self.counter = counter

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = list(batch["id"])
        labels = [None if label < 0 else int(label) for label in batch["label"]]
        pixels = batch["pixels"]
        items = [pixels[i] for i in range(len(ids))]
        codes: list[np.ndarray | None] = [None] * len(ids)
        failed_ids, failed_reasons = [], []
        started = time.time()  # wall clock: comparable across workers on one machine
        for group in _same_shape_groups(items):
            height, width = items[group[0]].shape[:2]
            try:  # the runtime's memory budget (gsq_core.budgets): how many such images one call takes
                limit = max(1, self.runtime.work_limit(height, width, "encode"))
            except GSQError as error:
                failed_ids.extend(ids[i] for i in group)
                failed_reasons.extend(f"{ids[i]}: {one_line(error)}" for i in group)
                continue
            for start in range(0, len(group), limit):
                self._encode(group[start : start + limit], items, ids, codes, failed_ids, failed_reasons)
        finished = time.time()
        record_failures(self.failed_dir, failed_ids, failed_reasons)
        kept = [i for i in range(len(ids)) if codes[i] is not None]
        self.counter.add.remote(tokenized=len(kept), failed=len(failed_ids), started=started, finished=finished)
        return self._table([ids[i] for i in kept], [labels[i] for i in kept], [codes[i] for i in kept])

    def _encode(
        self,
        indices: list[int],
        items: list[np.ndarray],
        ids: list[str],
        codes: list[np.ndarray | None],
        failed_ids: list[str],
        failed_reasons: list[str],
    ) -> None:
        """Encode same-size images in one call; when the runtime refuses, find the sample one at a time."""
        try:
            encoded = self.runtime.encode(model_input(np.stack([items[i] for i in indices])))
            for position, index in enumerate(indices):
                codes[index] = encoded[position]
        except GSQError:
            for index in indices:
                try:
                    codes[index] = self.runtime.encode(model_input(items[index][None]))[0]
                except GSQError as error:
                    failed_ids.append(ids[index])
                    failed_reasons.append(f"{ids[index]}: {one_line(error)}")

    def _table(self, ids: list[str], labels: list[int | None], codes: list[np.ndarray]) -> pa.Table:
        flat = [np.ascontiguousarray(grid, dtype=self.dtype).reshape(-1) for grid in codes]
        offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        np.cumsum([item.size for item in flat], out=offsets[1:])
        values = np.concatenate(flat) if flat else np.zeros(0, self.dtype)
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        return pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "label": pa.array(labels, pa.int64()),
                "tokens": tokens,
                "token_height": pa.array([grid.shape[0] for grid in codes], pa.int32()),
                "token_width": pa.array([grid.shape[1] for grid in codes], pa.int32()),
            },
            schema=self.schema,
        )


def _same_shape_groups(items: list[np.ndarray]) -> list[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    return list(groups.values())


def failed_dir_of(run_dir: Path) -> str:
    """Where a run's workers record failed samples."""
    return str(run_dir / "failed")
