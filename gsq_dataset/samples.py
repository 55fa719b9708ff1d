"""Encoded samples as source rows, without Ray: one row per sample with `id`, `label`, `image` (the
encoded file's bytes) and `error` (why the sample is unusable, else null); finished samples left out.

The in-process executor (gsq_dataset.local) iterates these directly; the Ray executor
(gsq_dataset.sources) wraps the same functions in its read tasks, so both read every input alike.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gsq_core.images import IMAGE_SUFFIXES

from .inputs import InputSet

ROW_SCHEMA = pa.schema(
    [("id", pa.string()), ("label", pa.int64()), ("image", pa.binary()), ("error", pa.string())]
)
IMAGE_MEMBER_SUFFIXES = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
ROWS_PER_READ_BLOCK = 256  # WebDataset samples per block a read task yields


def rows_table(ids: list[str], labels: list[int | None], images: list[bytes | None], errors: list[str | None]) -> pa.Table:
    """A block in the source schema."""
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "image": pa.array(images, pa.binary()),
            "error": pa.array(errors, pa.string()),
        },
        schema=ROW_SCHEMA,
    )


def folder_labels(inputs: InputSet) -> dict[str, int] | None:
    """Class folder name -> label, when the folder has the class layout."""
    return {name: index for index, name in enumerate(inputs.classes)} if inputs.classes else None


def sample_key(name: str) -> tuple[str | None, str | None]:
    """WebDataset's key rule (Ray's and webdataset's): (the member name up to the first dot of its
    basename, the rest), or (None, None) for a name without a dot."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else (None, None)


def walk_shard(stream: Any, shard: str, done: frozenset[str]) -> Iterator[pa.Table]:
    """A WebDataset tar stream as blocks of source rows. A truncated or corrupt shard keeps every
    sample completed before the damage, lists the one being read as failed, and lists the shard
    itself (id: the shard) as failed with the reason."""
    samples: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    complete = 0
    seen_keys: set[str] = set()
    failures: list[tuple[str, str]] = []
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*")
        for member in archive:
            if not member.isreg():
                continue
            key, suffix = sample_key(member.name)
            if key is None:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    samples.append(current)
                    complete += 1
                current = {"__key__": key}
                if key in seen_keys:
                    current["__error__"] = "this key's files are not contiguous in the shard (WebDataset needs them adjacent)"
                seen_keys.add(key)
            current[suffix] = archive.extractfile(member).read()  # a cut here fails `current`
            if len(samples) >= ROWS_PER_READ_BLOCK:
                yield webdataset_rows(samples, shard, done)
                samples = []
        if current is not None:
            samples.append(current)
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        reason = f"unreadable tar shard after {complete} complete samples (truncated or corrupt): {error}"
        if current is not None:
            failures.append((f"{shard}/{current['__key__']}", f"cut short by the damaged shard: {error}"))
        failures.append((shard, reason))
    if samples:
        yield webdataset_rows(samples, shard, done)
    failures = [(sample_id, reason) for sample_id, reason in failures if sample_id not in done]
    if failures:
        ids, reasons = zip(*failures)
        yield rows_table(list(ids), [None] * len(ids), [None] * len(ids), list(reasons))


def shard_id(path: str, root: str) -> str:
    """A shard's id part: its path relative to the input root."""
    return PurePath(path.removeprefix("local://")).relative_to(root).as_posix()


def webdataset_rows(samples: list[dict[str, Any]], shard: str, done: frozenset[str]) -> pa.Table:
    """Samples (members grouped by key) -> source rows: the first image member (jpg, png, webp...),
    `.cls` as label; a sample marked with __error__ becomes a failed row."""
    ids, labels, images, errors = [], [], [], []
    for sample in samples:
        sample_id = f"{shard}/{sample['__key__']}"
        if sample_id in done:
            continue
        members = {key: value for key, value in sample.items() if not key.startswith("__") and _present(value)}
        image_key = next((key for key in members if key.lower() in IMAGE_MEMBER_SUFFIXES), None)
        label, error = None, sample.get("__error__")
        if error is None and image_key is None:
            error = f"no image member (has: {', '.join(sorted(members)) or 'nothing'})"
        if "cls" in members:
            try:
                label = int(bytes(members["cls"]).decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                error = error or f"the .cls member {bytes(members['cls'])[:20]!r} is not an integer class index"
        ids.append(sample_id)
        labels.append(label)
        images.append(bytes(members[image_key]) if image_key is not None and error is None else None)
        errors.append(error)
    return rows_table(ids, labels, images, errors)


def _present(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))


class ParquetPlan:
    """The row groups of HF-style Parquet files with rows left to do (path, file id, group, first row,
    rows to keep or None for all), and the files whose footer cannot be read (one failed sample each)."""

    def __init__(self, inputs: InputSet, done: frozenset[str]):
        self.pieces: list[tuple[str, str, int, int, np.ndarray | None]] = []  # (path, id, group, offset, rows)
        self.broken: list[tuple[str, str]] = []  # (file id, reason)
        self.rows_to_read = 0
        for path in inputs.files:
            file_id = inputs.relative_id(path)
            try:
                metadata = pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                if file_id not in done:
                    self.broken.append((file_id, f"unreadable Parquet file: {error}"))
                    self.rows_to_read += 1
                continue
            offset = 0
            for group in range(metadata.num_row_groups):
                count = metadata.row_group(group).num_rows
                todo = [row for row in range(count) if f"{file_id}/{offset + row}" not in done]
                if todo:
                    keep = None if len(todo) == count else np.array(todo, np.int64)
                    self.pieces.append((str(path), file_id, group, offset, keep))
                    self.rows_to_read += len(todo)
                offset += count


def read_row_group(path: str, file_id: str, group: int, offset: int, keep: np.ndarray | None) -> pa.Table:
    """One row group of an HF-style Parquet file as source rows (keep: row positions within the group)."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if "image" not in names:
        count = parquet.metadata.row_group(group).num_rows
        rows = keep if keep is not None else np.arange(count)
        reason = f"no 'image' column (columns: {', '.join(names)})"
        return rows_table([f"{file_id}/{offset + r}" for r in rows], [None] * len(rows), [None] * len(rows), [reason] * len(rows))
    table = parquet.read_row_group(group, columns=[c for c in ("image", "label") if c in names])
    positions = keep if keep is not None else np.arange(table.num_rows)
    if keep is not None:
        table = table.take(pa.array(keep))
    images, errors = _image_bytes(table.column("image"))
    labels = _labels(table.column("label")) if "label" in names else [None] * table.num_rows
    ids = [f"{file_id}/{offset + int(r)}" for r in positions]
    return rows_table(ids, labels, images, errors)


def _image_bytes(column: pa.ChunkedArray) -> tuple[list[bytes | None], list[str | None]]:
    column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            return [None] * len(column), ["the 'image' struct has no 'bytes' field"] * len(column)
        values = column.field("bytes").to_pylist()
        nulls = column.is_null().to_pylist()
        values = [None if null else value for value, null in zip(values, nulls)]
    elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        values = column.to_pylist()
    else:
        return [None] * len(column), [f"the 'image' column has type {column.type}, not bytes"] * len(column)
    errors = [None if value else "no image bytes in this row (null or empty)" for value in values]
    return [value if value else None for value in values], errors


def _labels(column: pa.ChunkedArray) -> list[int | None]:
    if not (pa.types.is_integer(column.type) or pa.types.is_dictionary(column.type)):
        return [None] * len(column)
    return [None if value is None else int(value) for value in column.to_pylist()]


def iter_source(inputs: InputSet, done: frozenset[str]) -> tuple[Iterator[pa.Table], int | None]:
    """(blocks of source rows of the unfinished samples, their number when known in advance)."""
    if inputs.format == "folder":
        todo = [path for path in inputs.files if inputs.relative_id(path) not in done]
        return _folder_blocks(inputs, todo), len(todo)
    if inputs.format == "webdataset":
        return _shard_blocks(inputs, done), None
    if inputs.format == "parquet":
        plan = ParquetPlan(inputs, done)
        return _parquet_blocks(plan), plan.rows_to_read
    raise ValueError(f"unknown input format {inputs.format!r}")


def _folder_blocks(inputs: InputSet, todo: list[Path], rows: int = 8) -> Iterator[pa.Table]:
    classes = folder_labels(inputs)
    for start in range(0, len(todo), rows):
        ids, images, errors = [], [], []
        for path in todo[start : start + rows]:
            ids.append(inputs.relative_id(path))
            try:
                images.append(path.read_bytes())
                errors.append(None)
            except OSError as error:
                images.append(None)
                errors.append(f"cannot read ({error.strerror or error})")
        labels = [classes[item.split("/", 1)[0]] for item in ids] if classes else [None] * len(ids)
        yield rows_table(ids, labels, images, errors)


def _shard_blocks(inputs: InputSet, done: frozenset[str]) -> Iterator[pa.Table]:
    for path in inputs.files:
        shard = shard_id(str(path), str(inputs.root))
        try:
            stream = open(path, "rb")
        except OSError as error:
            if shard not in done:
                yield rows_table([shard], [None], [None], [f"unreadable tar shard: {error.strerror or error}"])
            continue
        with stream:
            yield from walk_shard(stream, shard, done)


def _parquet_blocks(plan: ParquetPlan) -> Iterator[pa.Table]:
    for path, file_id, group, offset, keep in plan.pieces:
        yield read_row_group(path, file_id, group, offset, keep)
    for file_id, reason in plan.broken:
        yield rows_table([file_id], [None], [None], [reason])
