"""The work Ray runs: decoding + preprocessing (CPU tasks), tokenizing (an actor per worker, the
runtime loaded once per actor), and the side records of failed samples and progress."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from .resources import WorkerPlan
from .work import StageClock, encode_batch, load_tokenizer_runtime, prepare_rows, record_failures

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
        self.clock = StageClock()

    def add(
        self,
        tokenized: int = 0,
        failed: int = 0,
        started: float | None = None,
        finished: float | None = None,
        stage_seconds: dict[str, float] | None = None,
        stage_images: int = 0,
    ) -> None:
        self.tokenized += tokenized
        self.failed += failed
        if stage_seconds is not None:  # a decode task: decode and crop seconds of stage_images images
            self.clock.merge(stage_seconds, dict.fromkeys(stage_seconds, stage_images))
        if started is not None and finished is not None and tokenized:
            self.clock.add("tokenize", finished - started, tokenized)
            self.busy_seconds += finished - started
            if self.first_call is None or finished < self.first_call[1]:
                self.first_call = (started, finished, tokenized)
            self.last_finished = max(self.last_finished, finished)

    def totals(self) -> tuple[int, int]:
        return self.tokenized, self.failed

    def timings(self, workers: int, decoders: int) -> dict[str, Any]:
        """steady_images_per_s: images after the first tokenizer call over the time from its end to the
        last call's end (start-up excluded); tokenizer_busy: share of that span the workers spent in
        encode; stages: per-stage seconds per image and the bound (write is Ray's own, not timed)."""
        stages = self.clock.report({"decode": decoders, "tokenize": workers, "write": 1})
        if self.first_call is None or self.last_finished <= self.first_call[1]:
            return {"steady_images_per_s": None, "tokenizer_busy": None, "stages": stages}
        started, finished, images = self.first_call
        steady = (self.tokenized - images) / (self.last_finished - finished)
        busy = self.busy_seconds / (workers * (self.last_finished - started))
        return {
            "steady_images_per_s": round(steady, 3),
            "tokenizer_busy": round(min(1.0, busy), 3),
            "stages": stages,
            "first_batch_at": finished,
            "last_batch_at": self.last_finished,
        }


# -- decode + preprocess (CPU tasks) -----------------------------------------------------------------
def prepare_batch(
    batch: pa.Table, size: int | str, factor: int, failed_dir: str, counter: Any
) -> dict[str, np.ndarray]:
    """Source rows -> id, label, pixels (uint8 [H, W, 3]); failed samples are recorded and dropped."""
    prepared = prepare_rows(
        batch.column("id").to_pylist(),
        batch.column("label").to_pylist(),
        batch.column("image").to_pylist(),
        batch.column("error").to_pylist(),
        size,
        factor,
    )
    record_failures(failed_dir, prepared.failed_ids, prepared.failed_reasons)
    counter.add.remote(failed=len(prepared.failed_ids), stage_seconds=prepared.seconds, stage_images=len(prepared.ids))
    return {
        "id": np.array(prepared.ids, dtype=object),
        "label": np.array([-1 if label is None else label for label in prepared.labels], dtype=np.int64),
        "pixels": _stack(prepared.pixels),
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
        self.runtime = load_tokenizer_runtime(backend, model, options, torch_threads)
        self.num_embed = num_embed
        self.failed_dir = failed_dir
        self.counter = counter

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = list(batch["id"])
        labels = [None if label < 0 else int(label) for label in batch["label"]]
        pixels = batch["pixels"]
        started = time.time()  # wall clock: comparable across workers on one machine
        encoded = encode_batch(self.runtime, self.num_embed, ids, labels, [pixels[i] for i in range(len(ids))])
        finished = time.time()
        record_failures(self.failed_dir, encoded.failed_ids, encoded.failed_reasons)
        self.counter.add.remote(
            tokenized=encoded.table.num_rows, failed=len(encoded.failed_ids), started=started, finished=finished
        )
        return encoded.table


def failed_dir_of(run_dir: Path) -> str:
    """Where a run's workers record failed samples."""
    return str(run_dir / "failed")
