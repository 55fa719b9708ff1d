"""gsq_dataset: tokenize whole datasets into token shards (gsq-tokenize, in-process or on Ray Data) and read them back.

    gsq-tokenize --model default --input photos/ --output tokens/       # or python -m gsq_dataset

    from gsq_dataset import read_tokens
    for sample in read_tokens("tokens/"):                 # torch-free: id, label, codes [h, w, G]
        ...
    from gsq_dataset.torch_data import TokenDataset        # a PyTorch Dataset for AR training
    from gsq_dataset.preprocess import preprocess_file      # the exact input of any token grid

Only the reading side is imported here; Ray is needed by gsq-tokenize alone.
"""

from __future__ import annotations

from .tokens import TokenSample, read_manifest, read_tokens

__all__ = ["TokenSample", "read_manifest", "read_tokens"]
