"""Ray Data datasets of encoded samples: one row per sample with `id`, `label`, `image` (the encoded
file's bytes) and `error` (why the sample is unusable, else null). Finished samples are left out.

    folder      ray.data.read_binary_files(paths, include_paths=True); the finished files are never read
    WebDataset  Ray's WebDataset reader (tar walking, key grouping), with a truncated or corrupt shard
                ending in one failed row instead of failing the job
    Parquet     a small Datasource over pyarrow (row groups as read tasks), because ids need each row's
                position in its file and ray.data.read_parquet exposes none (its row_hash is one-way)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

# Ray's own WebDataset reader (file listing, read tasks, streams) lives in a private module of
# ray.data. The walk over tar members is ours (samples.walk_shard).
from ray.data._internal.datasource.webdataset_datasource import WebDatasetDatasource

from .inputs import InputSet
from .samples import ParquetPlan, folder_labels, read_row_group, rows_table, shard_id, walk_shard


def source_dataset(inputs: InputSet, done: frozenset[str], read_cpus: float) -> tuple[ray.data.Dataset | None, int | None]:
    """(dataset of the unfinished samples or None when nothing is left, their number when known in advance)."""
    if inputs.format == "folder":
        todo = [path for path in inputs.files if inputs.relative_id(path) not in done]
        if not todo:
            return None, 0
        dataset = ray.data.read_binary_files([str(path) for path in todo], include_paths=True, num_cpus=read_cpus)
        classes = folder_labels(inputs)
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
    failed (id: the shard) with the reason. Samples are grouped by Ray's key rule (samples.sample_key)."""

    def __init__(self, inputs: InputSet, done_ref: Any):
        super().__init__([str(path) for path in inputs.files], decoder=None)
        self._root = str(inputs.root)
        self._done_ref = done_ref

    def _read_stream(self, stream: Any, path: str) -> Iterator[pa.Table]:
        yield from walk_shard(stream, shard_id(path, self._root), _cached_done(self._done_ref))


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


# -- Parquet -----------------------------------------------------------------------------------------
class ParquetRowsDatasource(Datasource):
    """Hugging Face-style Parquet files (an `image` struct column with `bytes`, or a binary `image`
    column; an optional integer `label`) as source rows, one read task per row group. Finished rows
    are skipped, and so are row groups with nothing left to do. A file whose footer cannot be read
    is one failed sample."""

    def __init__(self, inputs: InputSet, done: frozenset[str]):
        plan = ParquetPlan(inputs, done)
        self._pieces, self._broken, self.rows_to_read = plan.pieces, plan.broken, plan.rows_to_read

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


