"""The nearest-code lookup: exact, deterministic, bounded memory, on both search paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gsq_core import lookup
from gsq_core.fidelity import LookupSpec, score_gaps
from gsq_core.lookup import build_lookup_tables, nearest_codes, normalize_vectors


def reference_codes(vectors: torch.Tensor, tables: lookup.LookupTables, block_rows: int = 128) -> np.ndarray:
    """Float64 brute force over the whole table, written independently of gsq_core.lookup.

    Scores x.w + b summed in the same order as the exact search (products of fp32 values are exact
    in float64), argmax with the lowest index on ties (np.argmax returns the first maximum).
    """
    x = normalize_vectors(vectors.float(), tables.normalization).numpy().astype(np.float64)
    weight = tables.weight.numpy().astype(np.float64)
    bias = None if tables.bias is None else tables.bias.numpy().astype(np.float64)
    codes = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], block_rows):
        rows = x[start : start + block_rows]
        scores = rows[:, None, 0] * weight[None, :, 0]
        for k in range(1, weight.shape[1]):
            scores = scores + rows[:, None, k] * weight[None, :, k]
        if bias is not None:
            scores = scores + bias[None, :]
        codes[start : start + block_rows] = scores.argmax(axis=1)
    return codes


def exact_gaps(vectors: torch.Tensor, codes: torch.Tensor, tables: lookup.LookupTables) -> np.ndarray:
    """Float64 optimal-choice gaps of codes (gsq_core.fidelity), for a distance or dot-product table."""
    spec = LookupSpec(
        codebook=tables.weight.numpy().astype(np.float64),
        num_group=1,
        normalization=tables.normalization,
        uses_distance=tables.bias is not None,
    )
    latent = vectors.float().numpy()[:, :, None, None]  # [N, d, 1, 1]: one token per vector
    return score_gaps(latent, codes.numpy(), spec)


def awkward_vectors(dim: int, count: int, generator: torch.Generator, codebook: torch.Tensor) -> torch.Tensor:
    """Random vectors plus exact codebook rows, axis points (angle +-pi) and zeros."""
    special = [codebook[:5], -codebook[:3], torch.zeros(2, dim), torch.eye(dim), -torch.eye(dim)]
    if dim == 2:
        special.append(torch.tensor([[-1.0, 0.0], [-1.0, -0.0], [-1.0, 1e-30], [-1.0, -1e-30], [1e-13, 0.0]]))
    return torch.cat([torch.randn(count, dim, generator=generator), *special])


EXACT_CASES = [
    # (num_embed, dim, normalization, distance)
    (65536, 2, "l2", True),
    (4096, 2, "l2", True),
    (4096, 2, "l2", False),
    (7, 2, "l2", True),
    (1, 2, "l2", True),
    (1000, 1, "l2", True),
    (1000, 1, "l2", False),
    (3000, 1, "clip", True),
    (3000, 1, "none", True),
]


@pytest.mark.parametrize("num_embed,dim,normalization,distance", EXACT_CASES)
def test_exact_search_equals_float64_brute_force(num_embed, dim, normalization, distance):
    generator = torch.Generator().manual_seed(num_embed + dim)
    codebook = torch.randn(num_embed, dim, generator=generator)
    if normalization == "clip":
        codebook = codebook.clamp(-1, 1)
    tables = build_lookup_tables(codebook, normalization, distance)
    vectors = awkward_vectors(dim, 600, generator, codebook)
    assert lookup._sorted_codebook(tables, torch.device("cpu")) is not None, "the exact search should apply"
    codes = nearest_codes(vectors, tables)
    assert np.array_equal(codes.numpy(), reference_codes(vectors, tables))
    # Against the float64-normalised problem (fidelity.score_gaps) only fp32 normalisation differs.
    assert exact_gaps(vectors, codes, tables).max() <= 1e-6


def test_exact_search_handles_duplicates_zero_rows_and_symmetric_ties():
    """Repeated codes, codes off the circle (zero rows, rows below the normalisation epsilon), mirror ties."""
    generator = torch.Generator().manual_seed(3)
    angles = 0.5 + torch.rand(2000, generator=generator) * (2 * math.pi - 1.0)  # none within 0.5 rad of +x
    codebook = torch.stack([angles.cos(), angles.sin()], dim=1) * 3.0
    codebook[100:110] = codebook[5]  # duplicates of code 5 at higher indices
    codebook[50] = codebook[1900]  # a duplicate below the original
    codebook[7] = 0.0  # normalises to the zero vector: off the circle
    codebook[8] = torch.tensor([1e-13, 0.0])  # below F.normalize's epsilon: a short vector
    codebook[20], codebook[21] = torch.tensor([0.6, 0.8]), torch.tensor([0.6, -0.8])  # mirror images
    codebook[30], codebook[31] = torch.tensor([0.3, 0.1]), torch.tensor([0.3, -0.1])  # mirror images, nearer +x
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.cat(
        [awkward_vectors(2, 1000, generator, codebook), codebook[[5, 1900, 109]], torch.tensor([[1.0, 0.0]])]
    )
    codes = nearest_codes(vectors, tables)
    assert np.array_equal(codes.numpy(), reference_codes(vectors, tables))
    assert codes[-4:].tolist() == [5, 50, 5, 30]  # duplicates resolve to their lowest index, the mirror tie too
    assert not set(codes.tolist()) & {100, 1900}


def test_zero_codes_win_where_every_code_on_the_circle_is_far():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.tensor([[-1.0, -1.0], [2.0, 0.1], [0.0, 0.0]])
    codes = nearest_codes(vectors, tables)
    assert codes.tolist() == [1, 0, 1] == reference_codes(vectors, tables).tolist()  # zero vector: best bias


def test_exact_search_falls_back_when_windows_are_wide(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    tables = build_lookup_tables(torch.randn(3000, 2, generator=generator), "l2", distance=True)
    vectors = awkward_vectors(2, 400, generator, tables.weight)
    monkeypatch.setattr(lookup, "EXACT_MAX_WINDOW", 2)
    assert np.array_equal(nearest_codes(vectors, tables).numpy(), reference_codes(vectors, tables))


@pytest.mark.parametrize("dim,normalization,distance", [(2, "none", True), (1, "none", False), (3, "l2", True)])
def test_exact_method_without_sorted_search_uses_brute_force(dim, normalization, distance):
    generator = torch.Generator().manual_seed(5)
    tables = build_lookup_tables(torch.randn(700, dim, generator=generator), normalization, distance)
    vectors = torch.randn(300, dim, generator=generator)
    assert lookup._sorted_codebook(tables, torch.device("cpu")) is None
    assert np.array_equal(nearest_codes(vectors, tables, method="exact").numpy(), reference_codes(vectors, tables))


@pytest.mark.parametrize("rows_per_task, chunk_entries", [(None, None), (700, 64)])
def test_exact_search_over_many_row_tasks_and_chunks(monkeypatch, rows_per_task, chunk_entries):
    """More vectors than one task takes (and, shrunk, more chunks than one): every row is searched."""
    if rows_per_task is not None:
        monkeypatch.setattr(lookup, "_EXACT_ROWS_PER_TASK", rows_per_task)
        monkeypatch.setattr(lookup, "_EXACT_CPU_CHUNK_ENTRIES", chunk_entries)
    generator = torch.Generator().manual_seed(11)
    tables = build_lookup_tables(torch.randn(4096, 2, generator=generator), "l2", distance=True)
    vectors = awkward_vectors(2, 2 * lookup._EXACT_ROWS_PER_TASK + 900, generator, tables.weight)
    assert np.array_equal(nearest_codes(vectors, tables).numpy(), reference_codes(vectors, tables))


def test_brute_force_over_several_row_and_code_blocks_keeps_the_lowest_index():
    """The float64 brute force (no sorted search for d = 3): 10,000 codes are two code blocks, 300
    vectors three row blocks, and a duplicate in the second block ties with the first's code."""
    generator = torch.Generator().manual_seed(12)
    codebook = torch.randn(10000, 3, generator=generator)
    codebook[9000] = codebook[17]
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.cat([torch.randn(299, 3, generator=generator), codebook[17:18] * 2.0])
    codes = nearest_codes(vectors, tables, method="exact")
    assert codes[-1].item() == 17
    assert np.array_equal(codes.numpy(), reference_codes(vectors, tables))


def test_many_codes_off_the_circle_use_the_blocked_path():
    codebook = torch.randn(500, 2)
    codebook[: lookup.EXACT_MAX_OFF_CIRCLE + 1] = 0.0
    tables = build_lookup_tables(codebook, "l2", distance=True)
    assert lookup._sorted_codebook(tables, torch.device("cpu")) is None
    vectors = torch.randn(200, 2)
    assert np.array_equal(nearest_codes(vectors, tables, method="exact").numpy(), reference_codes(vectors, tables))


@pytest.mark.parametrize("normalization,distance", [("l2", True), ("none", True), ("none", False), ("l1", True)])
@pytest.mark.parametrize("dim", [2, 3, 8])
def test_blocked_lookup_is_an_optimal_choice(normalization, distance, dim):
    """fp32 blocked matmul: near-ties may go either way; everywhere else it equals the exact answer."""
    generator = torch.Generator().manual_seed(dim)
    tables = build_lookup_tables(torch.randn(3000, dim, generator=generator), normalization, distance)
    vectors = torch.randn(1000, dim, generator=generator)
    blocked = nearest_codes(vectors, tables, block_elements=1 << 15, code_block=700, method="blocked")
    gaps = exact_gaps(vectors, blocked, tables)
    assert gaps.max() <= 1e-5
    expected = reference_codes(vectors, tables)
    differing = blocked.numpy() != expected
    assert exact_gaps(vectors, torch.from_numpy(expected), tables).max() <= 1e-6
    assert np.all(gaps[differing] <= 1e-5)  # every disagreement is a near-tie


def test_blocked_lookup_equals_one_full_fp32_matrix_away_from_ties():
    generator = torch.Generator().manual_seed(6)
    tables = build_lookup_tables(torch.randn(3000, 4, generator=generator), "l2", distance=True)
    vectors = torch.randn(1000, 4, generator=generator)
    x = normalize_vectors(vectors, "l2")
    full = x @ tables.weight.T + tables.bias
    top2 = full.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5
    accelerator_blocks = (lookup.ACCELERATOR_BLOCK_ELEMENTS, 3000)  # what a GPU uses: the whole codebook per block
    for block_elements, code_block in [(1 << 16, 700), (1 << 20, 3000), (4096, 64), accelerator_blocks]:
        blocked = nearest_codes(vectors, tables, block_elements=block_elements, code_block=code_block, method="blocked")
        assert torch.equal(blocked[clear], full.argmax(dim=1)[clear])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("dim", [2, 16])
def test_cuda_lookup_is_an_optimal_choice_with_its_default_blocks(dim):
    generator = torch.Generator().manual_seed(dim)
    tables = build_lookup_tables(torch.randn(8192, dim, generator=generator), "l2", distance=True)
    vectors = torch.randn(20000, dim, generator=generator)
    codes = nearest_codes(vectors.cuda(), tables).cpu()
    assert exact_gaps(vectors, codes, tables).max() <= 1e-5
    differing = codes.numpy() != reference_codes(vectors, tables)
    assert differing.mean() < 1e-3


@pytest.mark.parametrize("method", ["auto", "blocked", "exact"])
def test_exact_ties_choose_lowest_index_across_blocks(method):
    codebook = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    for code_block in (1, 2, 5):
        assert nearest_codes(vectors, tables, code_block=code_block, method=method).tolist() == [1, 0]


@pytest.mark.parametrize("method", ["auto", "blocked"])
def test_large_vocabulary_stays_in_bounded_memory(method):
    """V = 262,144 with d = 1: exact ties everywhere; lowest index among the best must win."""
    codebook = torch.from_numpy(np.repeat([[-1.0], [1.0]], 131072, axis=0).astype(np.float32))
    tables = build_lookup_tables(codebook, "l2", distance=True)
    vectors = torch.tensor([[0.3], [-2.0], [0.0]])
    assert nearest_codes(vectors, tables, method=method).tolist() == [131072, 0, 0]


def test_bad_arguments_are_refused():
    tables = build_lookup_tables(torch.randn(10, 2), "l2", distance=True)
    with pytest.raises(ValueError, match="vectors must be"):
        nearest_codes(torch.randn(4, 3), tables)
    with pytest.raises(ValueError, match="unknown lookup method"):
        nearest_codes(torch.randn(4, 2), tables, method="fast")
    assert nearest_codes(torch.empty(0, 2), tables).shape == (0,)
