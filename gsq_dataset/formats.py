"""What DST's committed token files look like (`--format`): ours, flexgen or jsonl.

Every run stages its shards in our schema (id, label, tokens, token_height, token_width; see
gsq_dataset.tokens), whatever the format; the commit (gsq_dataset.output.OutputFolder.commit_staging)
turns each complete staged shard, less the ids already committed, into the format's files:

    ours     DST/<staged name>.parquet, renamed as it is
    flexgen  DST/train_shard_<n>.parquet with exactly flex_gen's data_process/pretoken.py schema,
             label: int32 (-1 unknown), image_codes: list<list<int32>>: per image the token grid as
             [h * w][G] (positions row-major, each a list of G group ids; [h][w] for plain VQ).
             The ids and grid shapes ride in the file's key-value metadata (gsq.ids, gsq.grids),
             not as columns.
    jsonl    DST/pretokenized.jsonl, one line per image, as TiTok / RAR's PretoeknizedDataSetJSONL
             (bytedance/1d-tokenizer) reads it: {"class_id": int (-1 unknown), "tokens": [h][w][G]
             nested lists ([h][w] for plain VQ), "id": our id}; the file is rewritten through a
             temporary name at each commit.

Each format reads its committed ids back from its own files, so a resumed run keeps every id once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gsq_core.errors import InputError
from gsq_deploy.runtimes.token_shards import (FLEXGEN_NAME, FLEXGEN_SPLIT, GRIDS_KEY, IDS_KEY, JSONL_NAME, data_files,
                                             grids)

FORMATS = ("ours", "flexgen", "jsonl")
FLEXGEN_SCHEMA = pa.schema([pa.field("label", pa.int32()), pa.field("image_codes", pa.list_(pa.list_(pa.int32())))])


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise InputError(f"--format {name!r} is not one of {', '.join(FORMATS)}")
    return name


def describe(fmt: str, layout: str) -> dict[str, str]:
    """The manifest's record of the flexgen / jsonl files."""
    if fmt == "flexgen":
        nesting = "[h * w][G]" if layout == "BHWG" else "[h][w]"
        return {
            "files": f"{FLEXGEN_SPLIT}_shard_<n>.parquet (flex_gen data_process/pretoken.py's schema)",
            "label": "int32, -1 when unknown",
            "image_codes": f"list<list<int32>>: the token grid as {nesting}",
            "metadata": "gsq.ids: the rows' ids (JSON list); gsq.grids: their grid shapes",
        }
    nesting = "[h][w][G]" if layout == "BHWG" else "[h][w]"
    return {
        "files": f"{JSONL_NAME} (TiTok / RAR's pretokenized JSONL)",
        "class_id": "int, -1 when unknown",
        "tokens": f"the token grid as nested lists {nesting}",
        "id": "string, stable across runs",
    }


def committed_ids(folder: Path, fmt: str) -> list[str]:
    """The ids in DST's committed files, in order."""
    ids: list[str] = []
    for path in data_files(folder, fmt):
        if fmt == "ours":
            ids.extend(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        elif fmt == "flexgen":
            ids.extend(json.loads(pq.read_schema(path).metadata[IDS_KEY]))
        else:
            with open(path, encoding="utf-8") as handle:
                ids.extend(json.loads(line)["id"] for line in handle if line.strip())
    return ids


def row_count(folder: Path, fmt: str) -> int:
    if fmt == "ours" or fmt == "flexgen":
        return sum(pq.read_metadata(path).num_rows for path in data_files(folder, fmt))
    return len(committed_ids(folder, fmt))


def commit_table(folder: Path, fmt: str, table: pa.Table, layout: str) -> None:
    """Write one staged table (already free of committed ids) into DST in the format, atomically."""
    if fmt == "flexgen":
        files = data_files(folder, fmt)
        number = int(FLEXGEN_NAME.match(files[-1].name).group(1)) + 1 if files else 0
        table_grids = grids(table, layout)
        shapes = [list(grid.shape) for grid in table_grids]
        codes = [grid.reshape(-1, grid.shape[-1]) if layout == "BHWG" else grid for grid in table_grids]
        labels = [-1 if label is None else label for label in table.column("label").to_pylist()]
        out = pa.table(
            {
                "label": pa.array(labels, pa.int32()),
                "image_codes": pa.array([c.tolist() for c in codes], FLEXGEN_SCHEMA.field("image_codes").type),
            },
            schema=FLEXGEN_SCHEMA.with_metadata(
                {IDS_KEY: json.dumps(table.column("id").to_pylist()).encode(), GRIDS_KEY: json.dumps(shapes).encode()}
            ),
        )
        target = folder / f"{FLEXGEN_SPLIT}_shard_{number}.parquet"
        temporary = folder / f".{target.name}.tmp"
        pq.write_table(out, temporary)
        os.replace(temporary, target)
        return
    if fmt == "jsonl":
        target = folder / JSONL_NAME
        temporary = folder / f".{JSONL_NAME}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            if target.is_file():
                with open(target, encoding="utf-8") as before:
                    for line in before:
                        out.write(line if line.endswith("\n") else line + "\n")
            ids, labels = table.column("id").to_pylist(), table.column("label").to_pylist()
            for sample_id, label, grid in zip(ids, labels, grids(table, layout)):
                line = {"class_id": -1 if label is None else label, "tokens": grid.tolist(), "id": sample_id}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(temporary, target)
        return
    raise ValueError(f"commit_table writes flexgen or jsonl, not {fmt!r}")


