"""The blocked nearest-code lookup: exact, deterministic, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsq_core.lookup import build_lookup_tables, nearest_codes, normalize_vectors


@pytest.mark.parametrize("normalization,distance", [("l2", True), ("none", True), ("none", False), ("l1", True)])
def test_blocked_lookup_equals_full_matrix(normalization, distance):
    torch.manual_seed(0)
    codebook = torch.randn(5000, 3)
    vectors = torch.randn(3000, 3)
    tables = build_lookup_tables(codebook, normalization, distance)
    x = normalize_vectors(vectors, normalization)
    full = x @ tables.weight.T + (tables.bias if tables.bias is not None else 0)
    expected = full.argmax(dim=1)
    blocked = nearest_codes(vectors, tables, block_elements=4096, code_block=700)
    assert torch.equal(blocked, expected)


def test_exact_ties_choose_lowest_index_across_blocks():
    codebook = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    for code_block in (1, 2, 5):
        assert nearest_codes(vectors, tables, code_block=code_block).tolist() == [1, 0]


def test_large_vocabulary_stays_in_bounded_memory():
    """V = 262,144 with d = 1: exact ties everywhere; lowest index among the best must win."""
    codebook = torch.from_numpy(np.repeat([[-1.0], [1.0]], 131072, axis=0).astype(np.float32))
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.tensor([[0.3], [-2.0]])
    assert nearest_codes(vectors, tables).tolist() == [131072, 0]
