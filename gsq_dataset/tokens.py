"""Reading gsq-tokenize output without torch or Ray: pyarrow and numpy only.

    for sample in read_tokens("tokens/"):
        sample.id, sample.label, sample.codes       # codes: [h, w, G] ([h, w] for plain VQ), int16/int32

The shards are plain Parquet: `pyarrow.dataset.dataset(DST, format="parquet")` and
`datasets.load_dataset("parquet", data_files=f"{DST}/*.parquet")` read them with nothing of ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.errors import InputError

MANIFEST_NAME = "_manifest.json"
TOKEN_COLUMNS = ("id", "label", "tokens", "token_height", "token_width")


@dataclass(frozen=True)
class TokenSample:
    """One tokenized image."""

    id: str
    label: int | None
    codes: np.ndarray  # [h, w, G] for grouped layouts, [h, w] for plain VQ


def token_dtype(num_embed: int) -> np.dtype:
    """The smallest integer type that holds every token id: int16 up to 32,768 codes, else int32."""
    return np.dtype(np.int16) if num_embed <= 2**15 else np.dtype(np.int32)


def token_schema(num_embed: int) -> pa.Schema:
    """The columns of every token shard."""
    import pyarrow as pa

    value_type = pa.int16() if token_dtype(num_embed) == np.int16 else pa.int32()
    return pa.schema(
        [
            ("id", pa.string()),
            ("label", pa.int64()),
            ("tokens", pa.list_(value_type)),
            ("token_height", pa.int32()),
            ("token_width", pa.int32()),
        ]
    )


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
    dtype = np.dtype(tokenizer.get("token_dtype", "int32"))
    wanted = set(ids) if ids is not None else None
    fmt = manifest.get("output_format", "ours")
    if fmt != "ours":  # flexgen / jsonl files (gsq_dataset.formats)
        from .formats import read_rows

        count = 0
        for sample_id, label, codes in read_rows(Path(folder), fmt, tokenizer.get("token_layout", "BHWG")):
            if wanted is not None and sample_id not in wanted:
                continue
            if limit is not None and count >= limit:
                return
            yield TokenSample(sample_id, label, codes.astype(dtype))
            count += 1
        return
    count = 0
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
