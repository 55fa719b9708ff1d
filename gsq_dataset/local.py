"""The in-process executor: the Ray path's stages (read, decode, ADM crop, tokenize, write) in one
process, without a cluster's start-up.

    source rows (main thread) -> decoder threads (decode + crop; PIL releases the GIL)
        -> the tokenizer (main thread; ONNX Runtime / torch release the GIL) -> a writer thread

Decoding runs ahead of the tokenizer through a bounded window of decode jobs, so on N cores the
steady rate approaches the slower of the decoders and the tokenizer. Output, staging, failure records
and resume are the Ray path's: staged shards (our schema) in DST/_staging/<run>/shards written
through a temporary name and a rename, failure records in DST/_staging/<run>/failed, committed by
OutputFolder.commit_staging.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .samples import iter_source
from .work import Encoded, Prepared, StageClock, encode_batch, load_tokenizer_runtime, prepare_rows, record_failures

DECODE_JOB_ROWS = 4  # samples per decode job: small, so the decoders share the work evenly


@dataclass
class LocalPlan:
    """What the in-process executor runs with."""

    decoders: int  # decode + crop threads
    threads: int | None  # the runtime's threads (per call)
    batch_size: int
    rows_per_shard: int
    tokenizer_calls: int = 1  # encode calls in flight at once (runtimes that declare concurrent_calls)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "decoders": self.decoders, "threads": self.threads, "tokenizer_calls": self.tokenizer_calls}


def run_local(
    plan: LocalPlan,
    runtime_args: tuple[str, str, dict[str, Any], int | None],
    num_embed: int,
    size: int | str,
    factor: int,
    inputs: Any,
    done: frozenset[str],
    run_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize the unfinished samples into run_dir (shards/, failed/); returns the run's timings."""
    backend, model, options, torch_threads = runtime_args
    blocks, todo = iter_source(inputs, done)
    clock = StageClock()
    if todo == 0:  # nothing left: no model to load
        return {"steady_images_per_s": None, "stages": None}
    failed_dir = str(run_dir / "failed")
    runtime: Any = None
    bar = _bar(todo, progress)
    counts = {"tokenized": 0, "failed": 0}
    first_batch: tuple[float, int] | None = None  # (finished, images) of the first tokenizer call
    last_finished = 0.0
    try:
        with ThreadPoolExecutor(plan.decoders, thread_name_prefix="gsq-decode") as decoders, ThreadPoolExecutor(
            plan.tokenizer_calls, thread_name_prefix="gsq-tokenize"
        ) as tokenizers, ThreadPoolExecutor(1, thread_name_prefix="gsq-write") as writer:
            jobs: deque[Future[Prepared]] = deque()
            calls: deque[Future[tuple[Encoded, float]]] = deque()
            window = max(2 * plan.decoders, 2 * -(-plan.batch_size // DECODE_JOB_ROWS))
            rows = _source_rows(blocks)
            exhausted = False
            pending = Prepared()
            shard = _ShardWriter(run_dir / "shards", plan.rows_per_shard, clock, writer)

            def top_up() -> None:
                nonlocal exhausted
                while not exhausted and len(jobs) < window:
                    chunk = [row for _, row in zip(range(DECODE_JOB_ROWS), rows)]
                    if not chunk:
                        exhausted = True
                        return
                    ids, labels, images, errors = (list(column) for column in zip(*chunk))
                    jobs.append(decoders.submit(prepare_rows, ids, labels, images, errors, size, factor))

            def encode(batch: Prepared) -> tuple[Encoded, float]:
                encoded = encode_batch(runtime, num_embed, batch.ids, batch.labels, batch.pixels)
                return encoded, time.time()  # wall clock: start-up is measured against the process start

            def tokenize(batch: Prepared) -> None:
                """Hand a batch to the tokenizer; with all its calls in flight, first take the oldest's rows."""
                top_up()  # the decoders work while the tokenizer does
                if len(calls) >= plan.tokenizer_calls:
                    finish(calls.popleft())
                calls.append(tokenizers.submit(encode, batch))

            def finish(call: Future[tuple[Encoded, float]]) -> None:
                nonlocal first_batch, last_finished
                encoded, finished = call.result()
                images = encoded.table.num_rows + len(encoded.failed_ids)
                clock.add("tokenize", encoded.seconds, images)
                record_failures(failed_dir, encoded.failed_ids, encoded.failed_reasons)
                counts["tokenized"] += encoded.table.num_rows
                counts["failed"] += len(encoded.failed_ids)
                bar.update(images)
                if encoded.table.num_rows:
                    if first_batch is None:
                        first_batch = (finished, encoded.table.num_rows)
                    last_finished = finished
                shard.add(encoded.table)

            top_up()  # the decoders start on the first batch while the model loads
            runtime = load_tokenizer_runtime(backend, model, options, torch_threads)
            while jobs:
                prepared = jobs.popleft().result()
                top_up()
                clock.add("decode", prepared.seconds["decode"], len(prepared.ids))
                clock.add("crop", prepared.seconds["crop"], len(prepared.ids))
                record_failures(failed_dir, prepared.failed_ids, prepared.failed_reasons)
                counts["failed"] += len(prepared.failed_ids)
                bar.update(len(prepared.failed_ids))
                _extend(pending, prepared)
                while len(pending.ids) >= plan.batch_size:
                    tokenize(_take(pending, plan.batch_size))
            if pending.ids:
                tokenize(pending)
            while calls:
                finish(calls.popleft())
            shard.close()
    finally:
        bar.close()
        close = getattr(runtime, "close", None) if runtime is not None else None
        if close is not None:
            close()
    steady = None
    if first_batch is not None and last_finished > first_batch[0]:
        steady = round((counts["tokenized"] - first_batch[1]) / (last_finished - first_batch[0]), 3)
    return {
        "steady_images_per_s": steady,
        "first_batch_at": first_batch[0] if first_batch else None,
        "last_batch_at": last_finished or None,
        "stages": clock.report({"decode": plan.decoders, "tokenize": plan.tokenizer_calls, "write": 1}),
    }


def _source_rows(blocks: Any) -> Any:
    for block in blocks:
        yield from zip(
            block.column("id").to_pylist(),
            block.column("label").to_pylist(),
            block.column("image").to_pylist(),
            block.column("error").to_pylist(),
        )


def _extend(into: Prepared, more: Prepared) -> None:
    into.ids.extend(more.ids)
    into.labels.extend(more.labels)
    into.pixels.extend(more.pixels)


def _take(pending: Prepared, count: int) -> Prepared:
    batch = Prepared(pending.ids[:count], pending.labels[:count], pending.pixels[:count])
    del pending.ids[:count], pending.labels[:count], pending.pixels[:count]
    return batch


class _ShardWriter:
    """Token rows gathered into staged shards of at least rows_per_shard rows, each written by the
    writer thread through a temporary name and a rename (a killed run leaves only complete shards)."""

    def __init__(self, folder: Path, rows_per_shard: int, clock: StageClock, writer: ThreadPoolExecutor):
        self.folder, self.rows_per_shard, self.clock, self.writer = folder, rows_per_shard, clock, writer
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.number = 0
        self.written: list[Future[None]] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.rows += table.num_rows
        if self.rows >= self.rows_per_shard:
            self._flush()

    def close(self) -> None:
        if self.rows:
            self._flush()
        for future in self.written:
            future.result()  # a failed write fails the run

    def _flush(self) -> None:
        table = pa.concat_tables(self.tables)
        path = self.folder / f"{self.folder.parent.name}-{self.number:06d}.parquet"  # unique across runs
        self.tables, self.rows, self.number = [], 0, self.number + 1
        self.written.append(self.writer.submit(self._write, table, path))

    def _write(self, table: pa.Table, path: Path) -> None:
        started = time.perf_counter()
        temporary = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, path)
        self.clock.add("write", time.perf_counter() - started, table.num_rows)


def _bar(total: int | None, enabled: bool) -> Any:
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        unit="img",
        desc="tokenize",
        file=sys.stderr,
        disable=not enabled,
        mininterval=1.0 if interactive else 10.0,
        dynamic_ncols=True,
    )
