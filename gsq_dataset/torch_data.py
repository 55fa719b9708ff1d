"""A PyTorch Dataset over gsq-tokenize output, for training an autoregressive model on the tokens.

    dataset = TokenDataset("tokens/")
    item = dataset[0]   # {"id": str, "label": int (-1 when unknown), "codes": int64 [h, w, G]}
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True)  # one grid size per batch

Holds every token in memory as one flat array in the shards' integer type (2 bytes per token up to
32,768 codes): ImageNet at 16x16 tokens x 1 group is 0.6 GiB. Random access, so any sampler works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gsq_core.errors import InputError
from gsq_core.extras import require_torch

torch = require_torch("gsq_dataset.torch_data")
from torch.utils.data import Dataset  # noqa: E402

from .tokens import read_manifest, shard_paths


class TokenDataset(Dataset):
    """Map-style dataset of every token grid in DST, in shard order."""

    def __init__(self, folder: str | Path):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        manifest = read_manifest(folder)
        tokenizer = manifest["tokenizer"]
        self.grouped = tokenizer.get("token_layout", "BHWG") == "BHWG"
        self.num_group = int(tokenizer["num_group"]) if self.grouped else 1
        self.num_embed = int(tokenizer["num_embed"])
        ids: list[str] = []
        labels, heights, widths, values, lengths = [], [], [], [], []
        for shard in shard_paths(folder):
            table = pq.read_table(shard)
            ids.extend(table.column("id").to_pylist())
            labels.append(table.column("label").fill_null(-1).to_numpy())
            heights.append(table.column("token_height").to_numpy())
            widths.append(table.column("token_width").to_numpy())
            tokens = table.column("tokens").combine_chunks()
            values.append(tokens.flatten().to_numpy())
            lengths.append(pc.list_value_length(tokens).to_numpy())
        if not ids:
            raise InputError(f"{folder}: holds no token rows")
        self.ids = ids
        self.labels = np.concatenate(labels).astype(np.int64)
        self.heights = np.concatenate(heights).astype(np.int64)
        self.widths = np.concatenate(widths).astype(np.int64)
        self.values = np.concatenate(values)
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, object]:
        start, end = self.offsets[index], self.offsets[index + 1]
        shape = (int(self.heights[index]), int(self.widths[index]))
        if self.grouped:
            shape = (*shape, self.num_group)
        codes = torch.from_numpy(self.values[start:end].astype(np.int64)).reshape(shape)
        return {"id": self.ids[index], "label": int(self.labels[index]), "codes": codes}
