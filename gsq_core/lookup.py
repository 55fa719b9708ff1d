"""Nearest-code search: exact for tiny groups, blocked so memory stays bounded at any codebook size.

Every quantizer's inference lookup is written in one form:
    code = argmax_v ( normalize(x) . W[v] + b[v] )
where W is the codebook after the same normalisation (computed once, a constant at inference)
and b is -|W[v]|^2 / 2 for distance-based lookup (argmin of squared distance) or absent for
cosine / inner-product lookup. Ties go to the lowest index, always.

Two ways to evaluate it, chosen by `nearest_codes(method="auto")`:
- exact search (group dim d = 1, or d = 2 with l2 normalisation, the usual GSQ settings): the
  codebook is sorted once along the line (d = 1) or by angle on the circle (d = 2); each vector
  binary-searches its position, and only the codes inside a proven bound around it are scored, in
  float64 from the fp32 operands (normalised vector, table weight and bias). The result is the
  argmax of those scores, lowest index on ties, independent of block sizes and threads. This
  matters beyond speed: with V = 65,536 codes on a circle, neighbouring codes' cosines differ by
  ~1e-9, below fp32 resolution, so an fp32 score matrix cannot tell them apart.
- blocked fp32 matmul (everything else): scores for a block of rows x codes with the bias folded
  into the matmul, a fast block max, and an index search only for rows whose best score improved.
  No N x V matrix is ever held. Its choice is optimal within fp32 rounding of the scores.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from .numerics import plain_fp32

Normalization = Literal["l2", "l1", "clip", "none"]
LookupMethod = Literal["auto", "exact", "blocked"]

# Scratch for one block of fp32 scores (rows x codes): 256K entries = 1 MiB, about a core's L2, so the
# block max reads what the matmul just wrote from cache (measured best on the 2-core dev machine
# among 64K..8M entries; 8M was 2-3x slower per score).
DEFAULT_BLOCK_ELEMENTS = 256 * 1024
DEFAULT_CODE_BLOCK = 2048
# On a GPU the small CPU blocks cost a kernel launch and a host sync (the `improved` test) per 256K
# scores: measured on an H100 while training at D = 64, V = 8192 (G = 4, d = 16; 512K vectors per
# step), that lookup held a step to 12 images/s. Accelerators take 256 MiB blocks with the whole
# codebook in each: one matmul + argmax per block and no host sync.
ACCELERATOR_BLOCK_ELEMENTS = 64 * 1024 * 1024
# Wide groups (IBQ's D = 256 in one group) make every block compute-bound: with the small blocks above,
# many small GEMMs ran 5-6x slower than one full N x V matmul (V = 262,144, d = 256, N = 256..2,048,
# 2 threads, measured under load). From LARGE_GROUP_DIM on, a CPU block is 64 MiB of fp32 scores with
# 16,384 codes (1,024 rows): as fast as the full matmul or faster, in bounded memory.
LARGE_GROUP_DIM = 64
LARGE_GROUP_BLOCK_ELEMENTS = 16 * 1024 * 1024
LARGE_GROUP_CODE_BLOCK = 16384

# Exact search limits. A vector whose candidate window holds more codes than this is scored against
# the whole codebook in float64 instead (rare: near-zero latent groups, heavily clustered codebooks).
EXACT_MAX_WINDOW = 1024
# Codes off the unit circle (d = 2: zero rows, rows below the normalisation epsilon) are scored for
# every vector; more than this many and the exact search is not used.
EXACT_MAX_OFF_CIRCLE = 64
# d = 2: a code counts as on the circle when | |w| - 1 | is at most this.
CIRCLE_RADIUS_TOLERANCE = 1e-3
# The search bound needs gamma_v = b_v + |w_v|^2 / 2 nearly constant over codes (it is, up to fp32
# rounding, for distance lookup and for l2-normalised dot-product lookup).
EXACT_MAX_GAMMA_SPREAD = 1e-3
# Float64 slack added to squared radii and angles so that rounding of the bound never drops a code.
_RADIUS_SQUARED_SLACK = 1e-12
_ANGLE_SLACK = 1e-9
# Exact search work split: rows per task, and candidate entries (rows x window) scored per op; on
# CPU both keep each op under ATen's parallel grain of 32,768 elements.
_EXACT_ROWS_PER_TASK = 2048
_EXACT_CPU_CHUNK_ENTRIES = 16384
_EXACT_DEVICE_CHUNK_ENTRIES = 1 << 22


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
    # Derived search structures, built on first use and kept with the tables (keyed by method/device).
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_embed(self) -> int:
        return self.weight.shape[0]

    @property
    def group_dim(self) -> int:
        return self.weight.shape[1]


def build_lookup_tables(codebook: torch.Tensor, normalization: Normalization, distance: bool) -> LookupTables:
    """Precompute the lookup constants from a raw codebook [V, d]."""
    weight = normalize_vectors(codebook.detach().float(), normalization).contiguous()
    bias = -0.5 * weight.pow(2).sum(dim=1) if distance else None
    return LookupTables(normalization=normalization, weight=weight, bias=bias)


@torch.no_grad()
def nearest_codes(
    vectors: torch.Tensor,
    tables: LookupTables,
    block_elements: int | None = None,
    code_block: int | None = None,
    method: LookupMethod = "auto",
) -> torch.Tensor:
    """Index of the best-scoring code for each row of vectors [N, d]; int64 [N].

    method: "auto" uses the exact sorted search where it applies (d = 1, or d = 2 with l2
    normalisation) and the blocked fp32 matmul otherwise; "blocked" always uses the blocked matmul;
    "exact" always gives the float64-exact answer (sorted search, or float64 brute force over the
    codebook where no sorted search applies, which is slow: a reference for tests and benchmarks).
    `block_elements` and `code_block` size the blocked matmul's scratch; None picks the CPU sizes
    (DEFAULT_*, LARGE_GROUP_* for d >= LARGE_GROUP_DIM) on CPU and whole-codebook blocks of
    ACCELERATOR_BLOCK_ELEMENTS elsewhere.
    """
    if method not in ("auto", "exact", "blocked"):
        raise ValueError(f"unknown lookup method {method!r}; use 'auto', 'exact' or 'blocked'")
    if vectors.dim() != 2 or vectors.shape[1] != tables.group_dim:
        raise ValueError(f"vectors must be [N, {tables.group_dim}], got {list(vectors.shape)}")
    with plain_fp32(vectors.device.type):  # tokens are decided in fp32, also under a training loop's autocast
        return _nearest_codes_fp32(vectors, tables, block_elements, code_block, method)


def _nearest_codes_fp32(vectors: torch.Tensor, tables: LookupTables, block_elements: int | None,
                        code_block: int | None, method: LookupMethod) -> torch.Tensor:
    x = normalize_vectors(vectors.float(), tables.normalization)
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    if method != "blocked":
        sorted_codebook = _sorted_codebook(tables, x.device)
        if sorted_codebook is not None:
            return _sorted_search(x, sorted_codebook)
        if method == "exact":
            return _brute_force_exact(x, _all_codes(tables, x.device))
    on_cpu = x.device.type == "cpu"
    wide = tables.group_dim >= LARGE_GROUP_DIM
    if block_elements is None:
        if not on_cpu:
            block_elements = ACCELERATOR_BLOCK_ELEMENTS
        else:
            block_elements = LARGE_GROUP_BLOCK_ELEMENTS if wide else DEFAULT_BLOCK_ELEMENTS
    if code_block is None:
        if not on_cpu:
            code_block = tables.weight.shape[0]
        else:
            code_block = LARGE_GROUP_CODE_BLOCK if wide else DEFAULT_CODE_BLOCK
    return _blocked_matmul_search(x, tables, block_elements, code_block)


# ----------------------------------------------------------------------------------------------
# Blocked fp32 matmul (general path)


def _augmented_weight_t(tables: LookupTables, device: torch.device) -> torch.Tensor:
    """[d (+1), V] float32: the codebook transposed, with the bias as an extra row when present."""
    key = ("augmented_weight_t", device)
    if key not in tables._cache:
        weight = tables.weight.to(device)
        if tables.bias is None:
            # A transposed view: the matmul reads it as is, so a large codebook (IBQ: 256 MiB at
            # V = 262,144, d = 256) is not held twice.
            tables._cache[key] = weight.T
        else:
            weight = torch.cat([weight, tables.bias.to(device)[:, None]], dim=1)
            tables._cache[key] = weight.T.contiguous()
    return tables._cache[key]


def _blocked_matmul_search(x: torch.Tensor, tables: LookupTables, block_elements: int, code_block: int) -> torch.Tensor:
    """fp32 scores block by block; a fast max per block, argmax only for rows that improved."""
    weight_t = _augmented_weight_t(tables, x.device)
    if tables.bias is not None:  # fold the bias into the matmul: [x, 1] @ [W, b]^T
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    num_rows, num_codes = x.shape[0], weight_t.shape[1]
    codes_per_block = max(1, min(num_codes, code_block))
    rows_per_block = max(1, min(num_rows, block_elements // codes_per_block))
    scratch = torch.empty(rows_per_block, codes_per_block, dtype=x.dtype, device=x.device)
    result = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    for row_start in range(0, num_rows, rows_per_block):
        rows = x[row_start : row_start + rows_per_block]
        best_score = best_index = None
        for code_start in range(0, num_codes, codes_per_block):
            block_weight_t = weight_t[:, code_start : code_start + codes_per_block]
            scores = scratch[: rows.shape[0], : block_weight_t.shape[1]]
            torch.mm(rows, block_weight_t, out=scores)
            if best_index is None:  # first block: every row's best so far is in it
                best_index = scores.argmax(dim=1)  # first maximum: lowest index on ties
                if num_codes > codes_per_block:
                    best_score = scores.gather(1, best_index[:, None]).squeeze(1)
                continue
            block_best = scores.amax(dim=1)  # vectorised, much faster than max-with-index
            improved = (block_best > best_score).nonzero().squeeze(1)  # strict: earlier blocks win ties
            if improved.numel():  # rare after the first few blocks
                best_index[improved] = scores[improved].argmax(dim=1) + code_start
                best_score = torch.maximum(best_score, block_best)
        result[row_start : row_start + rows.shape[0]] = best_index
    return result


# ----------------------------------------------------------------------------------------------
# Exact search for d = 1 (sorted line) and d = 2 with l2 normalisation (sorted circle)
#
# Why the window is enough: for any code v, x.w_v + b_v = |x|^2/2 - |x - w_v|^2/2 + gamma_v with
# gamma_v = b_v + |w_v|^2/2. Given s0, the exact score of one code (a neighbour of x in sorted
# order), any code scoring >= s0 has |x - w_v|^2 <= |x|^2 + 2 max(gamma) - 2 s0 =: R^2. On a line
# that is the interval [x - R, x + R]; on the circle (codes with |w| in [rho_min, rho_max]) it lies
# inside an angle window around x's angle. Every code inside the window is scored exactly.


def _sum_of_products(
    x_parts: list[torch.Tensor], weight_parts: list[torch.Tensor], bias: torch.Tensor | None
) -> torch.Tensor:
    """((x0 w0 + x1 w1) + ...) + b over broadcastable float64 components: the one summation order."""
    scores = x_parts[0] * weight_parts[0]
    for x_part, weight_part in zip(x_parts[1:], weight_parts[1:]):
        scores = scores + x_part * weight_part
    return scores if bias is None else scores + bias.double()


@dataclass(frozen=True)
class _CodeSet:
    """Some codes of the table as float64 copies of their fp32 values, with their original indices."""

    weight_t: torch.Tensor  # [d, M] float64, one contiguous row per component
    bias: torch.Tensor  # [M] float64, zeros when the lookup has no bias
    index: torch.Tensor  # [M] int64

    def select(self, rows: torch.Tensor) -> _CodeSet:
        return _CodeSet(
            self.weight_t[:, rows].contiguous(), self.bias[rows].contiguous(), self.index[rows].contiguous()
        )

    def scores_at(self, x_t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Exact scores of the codes at positions [..., rows] for vectors x_t [d, rows]."""
        flat = positions.reshape(-1)
        parts = [self.weight_t[k].index_select(0, flat).view(positions.shape) for k in range(x_t.shape[0])]
        return _sum_of_products(list(x_t), parts, self.bias.index_select(0, flat).view(positions.shape))


@dataclass(frozen=True)
class _SortedCodebook:
    """Codes sorted along the line (d = 1) or by angle (d = 2, tiled over three turns)."""

    dim: int
    keys: torch.Tensor  # [M] float64, ascending: the value (d = 1) or the angle (d = 2)
    codes: _CodeSet  # [M] codes in key order
    gamma_max: float  # max over sorted codes of b + |w|^2 / 2
    radius_min: float  # d = 2: radius band of the sorted codes (1 for d = 1, unused)
    radius_max: float
    off_circle: _CodeSet  # codes scored for every vector (d = 2 only; usually empty)
    everything: _CodeSet  # the whole table, for the float64 brute-force fallback


def _all_codes(tables: LookupTables, device: torch.device) -> _CodeSet:
    weight = tables.weight.to(device).double()
    bias = tables.bias.to(device).double() if tables.bias is not None else torch.zeros_like(weight[:, 0])
    return _CodeSet(weight.T.contiguous(), bias.contiguous(), torch.arange(weight.shape[0], device=device))


def _sorted_codebook(tables: LookupTables, device: torch.device) -> _SortedCodebook | None:
    """Build (once) the sorted codebook, or None where the exact search does not apply."""
    key = ("sorted", device)
    if key not in tables._cache:
        tables._cache[key] = _build_sorted_codebook(tables, device)
    return tables._cache[key]


def _build_sorted_codebook(tables: LookupTables, device: torch.device) -> _SortedCodebook | None:
    dim = tables.group_dim
    if dim > 2 or (dim == 2 and tables.normalization != "l2"):
        return None
    everything = _all_codes(tables, device)
    if dim == 1:
        # Among codes with equal value only the largest bias, then the lowest index, can win: sort by
        # bias (descending), then stably by value, and keep the first code of each run of equal values.
        by_bias = everything.bias.argsort(descending=True, stable=True)
        keys, by_value = everything.weight_t[0, by_bias].sort(stable=True)
        first_of_run = torch.ones_like(keys, dtype=torch.bool)
        first_of_run[1:] = keys[1:] != keys[:-1]
        keys, codes = keys[first_of_run], everything.select(by_bias[by_value[first_of_run]])
        off_circle = everything.select(torch.zeros(0, dtype=torch.int64, device=device))
    else:
        radius = torch.linalg.vector_norm(everything.weight_t, dim=0)
        on_circle = (radius - 1.0).abs() <= CIRCLE_RADIUS_TOLERANCE
        off_circle = everything.select(~on_circle)
        if not on_circle.any() or off_circle.index.numel() > EXACT_MAX_OFF_CIRCLE:
            return None
        codes = everything.select(on_circle)
        keys, order = torch.atan2(codes.weight_t[1], codes.weight_t[0]).sort(stable=True)
        codes = codes.select(order)
    gamma = codes.bias + 0.5 * (codes.weight_t**2).sum(dim=0)
    if float(gamma.max() - gamma.min()) > EXACT_MAX_GAMMA_SPREAD:
        return None
    radius_min = radius_max = 1.0
    if dim == 2:  # tile one turn before and after, so a window never wraps around
        radius = torch.linalg.vector_norm(codes.weight_t, dim=0)
        radius_min, radius_max = float(radius.min()) - 1e-12, float(radius.max()) + 1e-12
        keys = torch.cat([keys - 2 * math.pi, keys, keys + 2 * math.pi])
        codes = codes.select(torch.arange(keys.shape[0], device=device) % codes.index.shape[0])
    return _SortedCodebook(
        dim=dim,
        keys=keys.contiguous(),
        codes=codes,
        gamma_max=float(gamma.max()),
        radius_min=radius_min,
        radius_max=radius_max,
        off_circle=off_circle,
        everything=everything,
    )


def _sorted_search(x: torch.Tensor, codebook: _SortedCodebook) -> torch.Tensor:
    """Exact argmax (lowest index on ties) for normalised fp32 vectors x [N, d].

    On CPU the rows go in tasks small enough that every op stays under ATen's parallel grain
    (32,768 elements, so it runs on the calling thread), and the tasks share torch's thread count
    through a thread pool: no OpenMP barrier per op, which matters when cores are oversubscribed.
    """
    result = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    on_cpu = x.device.type == "cpu"
    rows_per_task = _EXACT_ROWS_PER_TASK if on_cpu else x.shape[0]
    chunk_entries = _EXACT_CPU_CHUNK_ENTRIES if on_cpu else _EXACT_DEVICE_CHUNK_ENTRIES

    def search(start: int) -> None:
        rows = slice(start, start + rows_per_task)
        result[rows] = _search_rows(x[rows], codebook, chunk_entries)

    starts = range(0, x.shape[0], rows_per_task)
    workers = min(len(starts), torch.get_num_threads()) if on_cpu else 1
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(search, starts))
    else:
        for start in starts:
            search(start)
    return result


def _search_rows(x: torch.Tensor, codebook: _SortedCodebook, chunk_entries: int) -> torch.Tensor:
    """One task of the exact search: windows, then exact scores inside them (or brute force)."""
    result = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    x_t = x.double().T.contiguous()  # [d, rows]
    lo, count = _candidate_windows(x_t, codebook)
    too_wide = count > EXACT_MAX_WINDOW
    rows = torch.arange(x.shape[0], device=x.device)
    if bool(too_wide.any()):
        result[too_wide] = _brute_force_exact(x[too_wide], codebook.everything)
        rows = rows[~too_wide]
        x_t, lo, count = x_t[:, rows], lo[rows], count[rows]
    if rows.numel():
        window = int(count.max())
        chunk = max(1, chunk_entries // max(1, window + codebook.off_circle.index.numel()))
        for start in range(0, rows.numel(), chunk):
            part = slice(start, start + chunk)
            result[rows[part]] = _best_in_windows(x_t[:, part], lo[part], count[part], window, codebook)
    return result


def _candidate_windows(x_t: torch.Tensor, codebook: _SortedCodebook) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and length of each vector's window in the sorted codes; length > max means fallback."""
    num_sorted = codebook.keys.shape[0]
    position = x_t[0] if codebook.dim == 1 else torch.atan2(x_t[1], x_t[0])
    # A lower bound on the best score: the better of the two sorted neighbours of x.
    right = torch.searchsorted(codebook.keys, position).clamp_max(num_sorted - 1)
    neighbours = torch.stack([(right - 1).clamp_min(0), right])  # [2, rows]
    s0 = codebook.codes.scores_at(x_t, neighbours).amax(dim=0)
    norm_squared = _sum_of_products(list(x_t), list(x_t), None)
    radius_squared = (norm_squared + 2.0 * codebook.gamma_max - 2.0 * s0).clamp_min(0.0) + _RADIUS_SQUARED_SLACK
    if codebook.dim == 1:
        half_width, no_window = radius_squared.sqrt(), None
    else:
        half_width, no_window = _angle_half_width(norm_squared, radius_squared, codebook)
    lo = torch.searchsorted(codebook.keys, position - half_width, side="left")
    hi = torch.searchsorted(codebook.keys, position + half_width, side="right")
    count = hi - lo
    if no_window is not None:
        count = count.masked_fill(no_window, EXACT_MAX_WINDOW + 1)
    return lo, count


def _angle_half_width(
    norm_squared: torch.Tensor, radius_squared: torch.Tensor, codebook: _SortedCodebook
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest angle phi between x and a code w (|w| in the band) with |x - w|^2 <= R^2.

    |x - w|^2 = r^2 + rho^2 - 2 r rho cos(phi) <= R^2 gives cos(phi) >= (r^2 - R^2) / (2 r rho) + rho / (2 r),
    whose minimum over the band is at rho = sqrt(r^2 - R^2) clamped into it.
    Returns the half-width and a mask of vectors where no window applies (|x| small, or whole circle).
    """
    norm = norm_squared.sqrt()
    degenerate = norm < 0.5  # zero latent groups: every code is equally far, score them all
    safe_norm = norm.clamp_min(0.5)
    rho = (norm_squared - radius_squared).clamp_min(0.0).sqrt().clamp(codebook.radius_min, codebook.radius_max)
    cos_min = (norm_squared - radius_squared + rho * rho) / (2.0 * safe_norm * rho)
    whole_circle = cos_min <= -1.0
    half_width = torch.acos(cos_min.clamp(-1.0, 1.0)) + _ANGLE_SLACK
    return half_width, degenerate | whole_circle


def _best_in_windows(
    x_t: torch.Tensor, lo: torch.Tensor, count: torch.Tensor, window: int, codebook: _SortedCodebook
) -> torch.Tensor:
    """Score every code in each vector's window (and the off-circle codes); lowest index among the best.

    Layout [window, rows]: reductions run over the leading axis, vectorised across rows.
    """
    offsets = torch.arange(window, device=x_t.device)[:, None]
    positions = (lo + offsets).clamp_max(codebook.keys.shape[0] - 1)
    scores = codebook.codes.scores_at(x_t, positions).masked_fill(offsets >= count, -math.inf)
    indices = codebook.codes.index.index_select(0, positions.reshape(-1)).view(positions.shape)
    extra = codebook.off_circle
    if extra.index.numel():
        extra_scores = _sum_of_products(list(x_t[:, None, :]), list(extra.weight_t[:, :, None]), extra.bias[:, None])
        scores = torch.cat([scores, extra_scores])
        indices = torch.cat([indices, extra.index[:, None].expand(-1, x_t.shape[1])])
    return _lowest_index_of_best(scores, indices, dim=0)


def _lowest_index_of_best(scores: torch.Tensor, indices: torch.Tensor, dim: int) -> torch.Tensor:
    best = scores.amax(dim=dim, keepdim=True)
    return indices.masked_fill(scores < best, torch.iinfo(torch.int64).max).amin(dim=dim)


def _brute_force_exact(x: torch.Tensor, codebook: _CodeSet, block_entries: int = 1 << 20) -> torch.Tensor:
    """Float64 scores against every code of the set, in blocks; lowest index among the best."""
    x_t = x.double().T.contiguous()  # [d, rows]
    num_codes = codebook.index.numel()
    code_block = min(num_codes, 8192)
    row_block = max(1, block_entries // code_block)
    result = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for row_start in range(0, x.shape[0], row_block):
        rows = x_t[:, row_start : row_start + row_block]
        best_score = best_index = None
        for code_start in range(0, num_codes, code_block):
            part = slice(code_start, code_start + code_block)
            weight_parts = list(codebook.weight_t[:, part, None])  # d x [codes, 1]
            scores = _sum_of_products(list(rows[:, None, :]), weight_parts, codebook.bias[part, None])
            block_best = scores.amax(dim=0)
            block_index = _lowest_index_of_best(scores, codebook.index[part, None].expand_as(scores), dim=0)
            if best_score is None:
                best_score, best_index = block_best, block_index
                continue
            tied = block_best == best_score
            best_index = torch.where(block_best > best_score, block_index, best_index)
            best_index = torch.where(tied, torch.minimum(best_index, block_index), best_index)
            best_score = torch.maximum(best_score, block_best)
        result[row_start : row_start + rows.shape[1]] = best_index
    return result
