"""gsq-tokenize's token shards: the writing side (dtype and Parquet schema of the shards).

The reading side (read_tokens, read_manifest, shard_paths, ...) lives in runtimes.token_shards, which
the runtimes' decode command uses too; it is re-exported here for `from gsq_dataset.tokens import ...`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gsq_deploy.runtimes.token_shards import (MANIFEST_NAME, TOKEN_COLUMNS, TokenSample, read_manifest, read_tokens,
                                             shard_paths)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MANIFEST_NAME",
    "TOKEN_COLUMNS",
    "TokenSample",
    "read_manifest",
    "read_tokens",
    "shard_paths",
    "token_dtype",
    "token_schema",
]


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
