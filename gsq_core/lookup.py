"""Nearest-code search, blocked so memory stays bounded at any codebook size.

Every quantizer's inference lookup is written in one form:
    code = argmax_v ( normalize(x) . W[v] + b[v] )
where W is the codebook after the same normalisation (computed once, a constant at inference)
and b is -|W[v]|^2 / 2 for distance-based lookup (argmin of squared distance) or absent for
cosine / inner-product lookup. Ties go to the lowest index, always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Normalization = Literal["l2", "l1", "clip", "none"]

# Scratch for one block of scores (rows x codes, fp32); 8M entries = 32 MiB.
DEFAULT_BLOCK_ELEMENTS = 8 * 1024 * 1024
DEFAULT_CODE_BLOCK = 8192


def normalize_vectors(x: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Apply the quantizer's lookup normalisation along the last axis."""
    if normalization == "l2":
        return F.normalize(x, p=2, dim=-1)
    if normalization == "l1":
        return F.normalize(x, p=1, dim=-1)
    if normalization == "clip":
        return x.clamp(-1.0, 1.0)
    return x


@dataclass(frozen=True)
class LookupTables:
    """Constants of the lookup: score(x) = normalize(x) @ weight.T + bias."""

    normalization: Normalization
    weight: torch.Tensor  # [V, d] float32, codebook after normalisation
    bias: torch.Tensor | None  # [V] float32, or None for cosine / inner-product scores

    @property
    def num_embed(self) -> int:
        return self.weight.shape[0]


def build_lookup_tables(codebook: torch.Tensor, normalization: Normalization, distance: bool) -> LookupTables:
    """Precompute the lookup constants from a raw codebook [V, d]."""
    weight = normalize_vectors(codebook.detach().float(), normalization).contiguous()
    bias = -0.5 * weight.pow(2).sum(dim=1) if distance else None
    return LookupTables(normalization=normalization, weight=weight, bias=bias)


@torch.no_grad()
def nearest_codes(
    vectors: torch.Tensor,
    tables: LookupTables,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    code_block: int = DEFAULT_CODE_BLOCK,
) -> torch.Tensor:
    """Index of the best-scoring code for each row of vectors [N, d]; int64 [N].

    Scores are computed in fp32 in blocks of at most `block_elements` entries, keeping a running
    max/argmax, so no N x V matrix is ever held when V is large.
    """
    x = normalize_vectors(vectors.float(), tables.normalization)
    weight = tables.weight.to(x.device)
    bias = tables.bias.to(x.device) if tables.bias is not None else None
    num_rows, num_codes = x.shape[0], weight.shape[0]
    codes_per_block = min(num_codes, code_block)
    rows_per_block = max(1, block_elements // codes_per_block)

    result = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    for row_start in range(0, num_rows, rows_per_block):
        rows = x[row_start : row_start + rows_per_block]
        best_score = best_index = None
        for code_start in range(0, num_codes, codes_per_block):
            block_weight = weight[code_start : code_start + codes_per_block]
            if bias is None:
                scores = rows @ block_weight.T
            else:
                scores = torch.addmm(bias[code_start : code_start + codes_per_block], rows, block_weight.T)
            block_score, block_index = scores.max(dim=1)
            if best_score is None:
                best_score, best_index = block_score, block_index
                continue
            better = block_score > best_score  # strict: an earlier block wins ties
            best_score = torch.where(better, block_score, best_score)
            best_index = torch.where(better, block_index + code_start, best_index)
        result[row_start : row_start + rows.shape[0]] = best_index
    return result
