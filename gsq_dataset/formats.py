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
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gsq_core.errors import InputError

FORMATS = ("ours", "flexgen", "jsonl")
FLEXGEN_SPLIT = "train"
FLEXGEN_SCHEMA = pa.schema([pa.field("label", pa.int32()), pa.field("image_codes", pa.list_(pa.list_(pa.int32())))])
FLEXGEN_NAME = re.compile(rf"^{FLEXGEN_SPLIT}_shard_(\d+)\.parquet$")
JSONL_NAME = "pretokenized.jsonl"
IDS_KEY, GRIDS_KEY = b"gsq.ids", b"gsq.grids"


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


def grids(table: pa.Table, layout: str) -> list[np.ndarray]:
    """The token grids of a staged table ([h, w, G], or [h, w] for plain VQ), int32."""
    heights = table.column("token_height").to_pylist()
    widths = table.column("token_width").to_pylist()
    tokens = table.column("tokens").combine_chunks()
    values = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
    offsets = tokens.offsets.to_numpy()
    out = []
    for row, (height, width) in enumerate(zip(heights, widths)):
        flat = values[offsets[row] : offsets[row + 1]]
        out.append(flat.reshape(height, width, -1) if layout == "BHWG" else flat.reshape(height, width))
    return out


def data_files(folder: Path, fmt: str) -> list[Path]:
    """The committed token files of DST in this format, in order."""
    if fmt == "ours":
        from .tokens import shard_paths

        return shard_paths(folder)
    if fmt == "flexgen":
        found = [(int(m.group(1)), p) for p in folder.glob("*.parquet") if (m := FLEXGEN_NAME.match(p.name))]
        return [path for _, path in sorted(found)]
    path = folder / JSONL_NAME
    return [path] if path.is_file() else []


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


def read_rows(folder: Path, fmt: str, layout: str) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """(id, label or None, token grid [h, w, G] / [h, w]) of every committed row, in file order."""
    for path in data_files(folder, fmt):
        if fmt == "ours":
            table = pq.read_table(path)
            for sample_id, label, grid in zip(table.column("id").to_pylist(), table.column("label").to_pylist(), grids(table, layout)):
                yield sample_id, label, grid
        elif fmt == "flexgen":
            table = pq.read_table(path)
            metadata = table.schema.metadata
            ids, shapes = json.loads(metadata[IDS_KEY]), json.loads(metadata[GRIDS_KEY])
            for sample_id, label, codes, shape in zip(ids, table.column("label").to_pylist(), table.column("image_codes").to_pylist(), shapes):
                yield sample_id, (None if label < 0 else label), np.asarray(codes, np.int32).reshape(shape)
        else:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    entry = json.loads(line)
                    label = entry["class_id"]
                    yield entry["id"], (None if label < 0 else label), np.asarray(entry["tokens"], np.int32)
