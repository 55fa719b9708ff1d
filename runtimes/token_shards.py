"""Reading gsq-tokenize output folders (Parquet token shards + _manifest.json) without torch or
Ray: pyarrow and numpy only. The runtimes own this reading side (`python -m runtimes.<backend>
decode --tokens DST`); gsq_dataset writes the shards and re-exports these names.

    for sample in read_tokens("tokens/"):
        sample.id, sample.label, sample.codes       # codes: [h, w, G] ([h, w] for plain VQ), int16/int32

The shards are plain Parquet: `pyarrow.dataset.dataset(DST, format="parquet")` and
`datasets.load_dataset("parquet", data_files=f"{DST}/*.parquet")` read them with nothing of ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gsq_core.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "_manifest.json"
TOKEN_COLUMNS = ("id", "label", "tokens", "token_height", "token_width")
# the other --format files (gsq_dataset.formats writes them; the layouts are described there)
FLEXGEN_SPLIT = "train"
FLEXGEN_NAME = re.compile(rf"^{FLEXGEN_SPLIT}_shard_(\d+)\.parquet$")
JSONL_NAME = "pretokenized.jsonl"
IDS_KEY, GRIDS_KEY = b"gsq.ids", b"gsq.grids"


@dataclass(frozen=True)
class TokenSample:
    """One tokenized image."""

    id: str
    label: int | None
    codes: np.ndarray  # [h, w, G] for grouped layouts, [h, w] for plain VQ


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """DST/_manifest.json, or InputError when folder is not a gsq-tokenize output."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of token shards")
    if not path.is_file():
        raise InputError(f"{folder}: has no {MANIFEST_NAME}, so it is not a gsq-tokenize output")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or "tokenizer" not in manifest:
        raise InputError(f"{path}: not a gsq-tokenize manifest")
    return manifest


def shard_paths(folder: str | Path) -> list[Path]:
    """The token shards of DST, sorted by name (files starting with '_' or '.' are not shards)."""
    return sorted(p for p in Path(folder).glob("*.parquet") if p.is_file() and not p.name.startswith(("_", ".")))


def read_tokens(
    folder: str | Path, ids: Iterable[str] | None = None, limit: int | None = None, batch_rows: int = 1024
) -> Iterator[TokenSample]:
    """Every token grid in DST in shard order (only `ids` when given, at most `limit`), memory-bounded."""
    import pyarrow.parquet as pq

    manifest = read_manifest(folder)
    tokenizer = manifest["tokenizer"]
    grouped = tokenizer.get("token_layout", "BHWG") == "BHWG"
    groups = int(tokenizer["num_group"]) if grouped else 1
    wanted = set(ids) if ids is not None else None
    dtype = np.dtype(tokenizer.get("token_dtype", "int32"))
    fmt = manifest.get("output_format", "ours")
    count = 0
    if fmt != "ours":  # gsq-tokenize --format flexgen / jsonl
        for sample_id, label, codes in read_rows(Path(folder), fmt, tokenizer.get("token_layout", "BHWG")):
            if wanted is not None and sample_id not in wanted:
                continue
            if limit is not None and count >= limit:
                return
            yield TokenSample(sample_id, label, codes.astype(dtype))
            count += 1
        return
    for shard in shard_paths(folder):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows):
            columns = batch.to_pydict() if wanted is None else None
            if columns is None:
                keep = [i for i, value in enumerate(batch.column("id").to_pylist()) if value in wanted]
                if not keep:
                    continue
                columns = batch.take(keep).to_pydict()
            for sample_id, label, tokens, height, width in zip(
                columns["id"], columns["label"], columns["tokens"], columns["token_height"], columns["token_width"]
            ):
                if limit is not None and count >= limit:
                    return
                shape = (height, width, groups) if grouped else (height, width)
                codes = np.asarray(tokens, dtype=dtype)
                if codes.size != int(np.prod(shape)):
                    raise InputError(f"{shard}: {sample_id}: {codes.size} tokens for a {'x'.join(map(str, shape))} grid")
                yield TokenSample(sample_id, label, codes.reshape(shape))
                count += 1


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
    """The committed token files of DST in this format (ours, flexgen or jsonl), in order."""
    if fmt == "ours":
        return shard_paths(folder)
    if fmt == "flexgen":
        found = [(int(m.group(1)), p) for p in folder.glob("*.parquet") if (m := FLEXGEN_NAME.match(p.name))]
        return [path for _, path in sorted(found)]
    path = folder / JSONL_NAME
    return [path] if path.is_file() else []


def read_rows(folder: Path, fmt: str, layout: str) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """(id, label or None, token grid [h, w, G] / [h, w]) of every committed row, in file order."""
    import pyarrow.parquet as pq

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
