"""Ray Data datasets of encoded samples: one row per sample with `id`, `label`, `image` (the encoded
file's bytes) and `error` (why the sample is unusable, else null). Finished samples are left out.

    folder      ray.data.read_binary_files(paths, include_paths=True); the finished files are never read
    WebDataset  Ray's WebDataset reader (tar walking, key grouping), with a truncated or corrupt shard
                ending in one failed row instead of failing the job
    Parquet     a small Datasource over pyarrow (row groups as read tasks), because ids need each row's
                position in its file and ray.data.read_parquet exposes none (its row_hash is one-way)
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

# Ray's own WebDataset reader (file listing, read tasks, streams) and its sample-key rule; they
# live in a private module of ray.data. The walk over tar members is ours (see ShardRowsDatasource).
from ray.data._internal.datasource.webdataset_datasource import WebDatasetDatasource, _base_plus_ext

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


def source_dataset(inputs: InputSet, done: frozenset[str], read_cpus: float) -> tuple[ray.data.Dataset | None, int | None]:
    """(dataset of the unfinished samples or None when nothing is left, their number when known in advance)."""
    if inputs.format == "folder":
        todo = [path for path in inputs.files if inputs.relative_id(path) not in done]
        if not todo:
            return None, 0
        dataset = ray.data.read_binary_files([str(path) for path in todo], include_paths=True, num_cpus=read_cpus)
        classes = {name: index for index, name in enumerate(inputs.classes)} if inputs.classes else None
        dataset = dataset.map_batches(
            folder_rows,
            fn_kwargs={"root": str(inputs.root), "classes": classes},
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=read_cpus,
        )
        return dataset, len(todo)
    if inputs.format == "webdataset":
        done_ref = ray.put(done) if done else None
        datasource = ShardRowsDatasource(inputs, done_ref)
        return ray.data.read_datasource(datasource, num_cpus=read_cpus), None
    if inputs.format == "parquet":
        datasource = ParquetRowsDatasource(inputs, done)
        if datasource.rows_to_read == 0:
            return None, 0
        return ray.data.read_datasource(datasource, num_cpus=read_cpus), datasource.rows_to_read
    raise ValueError(f"unknown input format {inputs.format!r}")


# -- folder ------------------------------------------------------------------------------------------
def folder_rows(batch: pa.Table, root: str, classes: dict[str, int] | None) -> pa.Table:
    """read_binary_files rows (bytes, path) -> source rows; label from the class folder when there are classes."""
    from pathlib import PurePath

    ids = [PurePath(path).relative_to(root).as_posix() for path in batch.column("path").to_pylist()]
    labels = [classes[item.split("/", 1)[0]] for item in ids] if classes else [None] * len(ids)
    return rows_table(ids, labels, batch.column("bytes").to_pylist(), [None] * len(ids))


# -- WebDataset ------------------------------------------------------------------------------------
class ShardRowsDatasource(WebDatasetDatasource):
    """Ray's WebDataset reader yielding source rows, and surviving broken shards.

    Ray's own member walk fails the read task on a truncated shard, losing the samples read since
    its last 512-row chunk, and cannot tell which sample was cut. The walk here keeps every sample
    completed before the damage, lists the one being read as failed, and lists the shard itself as
    failed (id: the shard) with the reason. Samples are grouped by Ray's key rule (_base_plus_ext)."""

    def __init__(self, inputs: InputSet, done_ref: Any):
        super().__init__([str(path) for path in inputs.files], decoder=None)
        self._root = str(inputs.root)
        self._done_ref = done_ref

    def _read_stream(self, stream: Any, path: str) -> Iterator[pa.Table]:
        shard = shard_id(path, self._root)
        done = _cached_done(self._done_ref)
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
                key, suffix = _base_plus_ext(member.name)
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
    from pathlib import PurePath

    return PurePath(path.removeprefix("local://")).relative_to(root).as_posix()


_DONE_CACHE: dict[Any, frozenset[str]] = {}


def _cached_done(done_ref: Any) -> frozenset[str]:
    """The finished ids, fetched from the object store once per worker process."""
    if done_ref is None:
        return frozenset()
    if done_ref not in _DONE_CACHE:
        import ray

        _DONE_CACHE.clear()
        _DONE_CACHE[done_ref] = ray.get(done_ref)
    return _DONE_CACHE[done_ref]


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


# -- Parquet -----------------------------------------------------------------------------------------
class ParquetRowsDatasource(Datasource):
    """Hugging Face-style Parquet files (an `image` struct column with `bytes`, or a binary `image`
    column; an optional integer `label`) as source rows, one read task per row group. Finished rows
    are skipped, and so are row groups with nothing left to do. A file whose footer cannot be read
    is one failed sample."""

    def __init__(self, inputs: InputSet, done: frozenset[str]):
        self._pieces: list[tuple[str, str, int, int, np.ndarray | None]] = []  # (path, id, group, offset, rows)
        self._broken: list[tuple[str, str]] = []  # (file id, reason)
        self.rows_to_read = 0
        for path in inputs.files:
            file_id = inputs.relative_id(path)
            try:
                metadata = pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                if file_id not in done:
                    self._broken.append((file_id, f"unreadable Parquet file: {error}"))
                    self.rows_to_read += 1
                continue
            offset = 0
            for group in range(metadata.num_row_groups):
                count = metadata.row_group(group).num_rows
                todo = [row for row in range(count) if f"{file_id}/{offset + row}" not in done]
                if todo:
                    keep = None if len(todo) == count else np.array(todo, np.int64)
                    self._pieces.append((str(path), file_id, group, offset, keep))
                    self.rows_to_read += len(todo)
                offset += count

    def get_name(self) -> str:
        return "ParquetRows"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list:
        tasks = []
        for path, file_id, group, offset, keep in self._pieces:
            metadata = BlockMetadata(
                num_rows=len(keep) if keep is not None else None, size_bytes=None, exec_stats=None, input_files=(path,)
            )
            tasks.append(
                ReadTask(lambda p=path, f=file_id, g=group, o=offset, k=keep: [read_row_group(p, f, g, o, k)], metadata)
            )
        for file_id, reason in self._broken:
            metadata = BlockMetadata(num_rows=1, size_bytes=None, exec_stats=None, input_files=None)
            tasks.append(ReadTask(lambda f=file_id, r=reason: [rows_table([f], [None], [None], [r])], metadata))
        return tasks


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
