"""The codebook lookup inside exported graphs: a proven candidate window for d <= 2, dense otherwise.

The dense lookup (exporters.graphs.CodebookLookup) scores every vector against all V codes: an
[N, V] fp32 matrix and an ArgMax. For the usual GSQ groups (d = 2 with l2 normalisation, or d = 1)
the best code of a vector lies among a few codes next to it in sorted order, so the graph can do
O(N * W) work with a fixed window of W candidates instead:

- export time (float64, numpy): the codes are sorted by angle (d = 2) or value (d = 1). A fixed grid
  of cells covers the key of a normalised vector u (d = 2: the octant of u and t = min(|x|, |y|) /
  max(|x|, |y|), whose arctangent is the angle inside the octant; d = 1: u itself). A cell's window
  is the run of sorted codes from the last code at or before the cell's lower edge to the first at
  or after its upper edge: it holds the code nearest (in angle or value) to every u of the cell
  (`_circle_windows`, `_line_windows`). W is the longest run over all cells.
- in the graph (standard ONNX ops only: Abs, Min, Max, Div, Mul, Where, Floor, Cast, Gather,
  ReduceMax, ReduceMin, Equal): compute u's cell, Gather the cell's run (each run is one row of
  the window tables, so a Gather copies W contiguous values per vector), score those W codes in
  fp32 (plus any codes off the unit circle, scored for every vector), and take the best, lowest
  original index on exact ties (ReduceMax, then ReduceMin of the indices that reach it).

Why the choice is optimal: write a sorted code's score as s_v(u) = |u| r_v cos(angle to u) + b_v
(d = 2) or u^2/2 - (u - w_v)^2/2 + gamma_v with gamma_v = b_v + w_v^2/2 (d = 1). The sorted codes
are those with r_v = 1 and one bias (d = 2), or one gamma (d = 1), up to bands of ~1e-6 (`RADIUS_BAND`
...): fp32 rounding of a normalised codebook. Then no code beats the nearest one (in angle or
value) by more than the bands' spread over the sorted codes (`gap_bound`, ~2e-7 for a normalised
fp32 codebook), for any |u|. The nearest code is in the window of u's cell, because the cell
edges are widened by the worst rounding of the graph's key arithmetic. The other codes (zero rows,
rows below the normalisation epsilon; at most `EXTRA_MAX`) are scored for every vector, and the
zero vector, whose key has no angle, gets the code of the all-bias scores. The graph's fp32 argmax
over a set holding the nearest code is then within gap_bound + fp32 rounding (~3e-7) of the best
of the whole codebook, the same order as the dense graph's own rounding, far inside the 1e-5 that
validation allows. Exact ties go to the lowest original index (duplicates are dropped at export in
favour of the lowest id; codes tied at one u are both in its window). Where no window of at most
`WINDOW_MAX` codes exists, or the codes do not fit the bands (too many codes off the circle, d >= 3,
d = 2 without l2 normalisation), the plan says "dense" and why, and the graph keeps the dense
lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gsq_core.lookup import normalize_vectors

# Largest window (codes scored per vector) a plan may use; past it the dense lookup is kept. The
# windowed graph costs about as much per window code as the dense one per code (a Gather per
# channel against a MatMul column), so the window pays until W approaches V / 4; measured in
# docs/benchmarks.md ("The lookup inside the exported graphs").
WINDOW_MAX = 64
# The sorted codes must score like distances of one offset, up to these bands (fp32 rounding of
# normalised rows is ~1e-7): then the code nearest in angle (value) is within the bands' spread of
# the best, which bounds the score gap. Codes outside them (zero rows, rows below the
# normalisation epsilon) are scored for every vector, at most EXTRA_MAX of them.
RADIUS_BAND = 5e-7  # d = 2: | |w| - 1 |
BIAS_BAND = 5e-7  # d = 2: | b - median b |
GAMMA_BAND = 1e-6  # d = 1: | (b + w^2/2) - median |
EXTRA_MAX = 16
# Window tables larger than this (bytes) are stored with a stride: one row per `stride` sorted
# codes, each row `window + stride - 1` long, so the tables stay near the codebook's own size.
TABLE_BUDGET_BYTES = 16 * 2**20
MAX_CELLS = 1 << 20
# Grids are refined up to this many cells (2 MiB of int64 cell rows) while that shortens the window.
CELL_BUDGET = 1 << 18
# The float32 index channel holds code ids exactly up to 2^24.
MAX_CODES = 1 << 24
# Relative error allowed for the graph's key arithmetic (IEEE division and products round to
# 2^-24; 2^-20 also covers backends with approximate division), and float64 slack on angles.
KEY_RELATIVE_ERROR = 2.0**-20
KEY_SLACK = 2.0**-18  # d = 1: absolute key error allowed, relative to |offset| + |span|
ANGLE_SLACK = 1e-9


@dataclass(frozen=True)
class WindowTables:
    """Constants of the windowed lookup graph (numpy, ready to become graph initializers)."""

    group_dim: int
    cells: int  # number of cells of the grid
    cells_per_octant: int  # d = 2: cells per octant (a power of two); d = 1: same as cells
    key_offset: float  # d = 1: the key of cell 0's lower edge (float32 value)
    key_scale: float  # d = 1: cells per unit of u (float32 value)
    window: int  # codes scored per vector (the row length of the tables)
    stride: int  # sorted codes between consecutive table rows
    cell_row: np.ndarray  # [cells] int64: the table row of each cell
    weight: np.ndarray  # [d, rows, window] float32: the candidates' normalised code vectors
    bias: np.ndarray | None  # [rows, window] float32, or None when the lookup has no bias
    index: np.ndarray  # [rows, window] float32: the candidates' original code ids
    extra_weight: np.ndarray  # [E, d] float32: codes scored for every vector (usually E = 0)
    extra_bias: np.ndarray | None  # [E] float32
    extra_index: np.ndarray  # [E] float32
    zero_code: int  # d = 2: the code of a zero vector (all scores equal the bias)
    sorted_codes: int  # codes in the sorted (windowed) set, after dropping exact duplicates
    gap_bound: float  # proven bound on the score gap to the best code, before fp32 rounding

    @property
    def table_bytes(self) -> int:
        arrays = [self.cell_row, self.weight, self.index, self.extra_weight, self.extra_index]
        arrays += [array for array in (self.bias, self.extra_bias) if array is not None]
        return int(sum(array.nbytes for array in arrays))

    @property
    def scored_per_vector(self) -> int:
        return self.window + self.extra_weight.shape[0]


@dataclass(frozen=True)
class LookupPlan:
    """How the exported graph looks codes up: "window" (with its tables) or "dense" (and why)."""

    method: str  # "window" | "dense"
    reason: str
    num_embed: int
    code_block: int  # dense: codes per MatMul block
    window: WindowTables | None = None

    def scratch_bytes_per_vector(self) -> int:
        """Bytes of fp32 intermediates the lookup holds per looked-up vector (for batch chunking)."""
        if self.window is None:
            return 4 * min(self.num_embed, self.code_block)  # one row of the [N, code_block] score block
        channels = self.window.group_dim + 2 + (self.window.bias is not None)
        return 4 * channels * self.window.scored_per_vector  # gathered channels, scores, masked ids

    def manifest_facts(self) -> dict:
        """Plain facts for manifest["lookup"] (ints, floats, strings; each present only where it applies)."""
        facts: dict = {
            "method": self.method,
            "reason": self.reason,
            "code_block": self.code_block,
            "scratch_bytes_per_vector": self.scratch_bytes_per_vector(),
        }
        if self.window is None:
            facts["code_blocks"] = -(-self.num_embed // self.code_block)
        else:
            facts.update(
                window=self.window.window,
                cells=self.window.cells,
                extra_codes=int(self.window.extra_weight.shape[0]),
                stride=self.window.stride,
                table_bytes=self.window.table_bytes,
                gap_bound=self.window.gap_bound,
            )
        return facts


def plan_lookup(
    weight: torch.Tensor | np.ndarray,
    bias: torch.Tensor | np.ndarray | None,
    normalization: str,
    code_block: int,
    window_max: int = WINDOW_MAX,
) -> LookupPlan:
    """Decide the graph's lookup for a normalised table (score = normalize(x) . weight + bias)."""
    weight = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight, dtype=np.float32)
    if bias is not None:
        bias = np.asarray(bias.detach().cpu() if isinstance(bias, torch.Tensor) else bias, dtype=np.float32)
    num_embed, dim = weight.shape

    def dense(reason: str) -> LookupPlan:
        return LookupPlan("dense", reason, num_embed, code_block)

    if dim > 2:
        return dense(f"group dim d = {dim}: the window lookup serves d <= 2")
    if dim == 2 and normalization != "l2":
        return dense(f"d = 2 with {normalization!r} normalisation: the window lookup needs l2 (codes on a circle)")
    if num_embed > MAX_CODES:
        return dense(f"V = {num_embed} codes: more than the window tables' float32 ids hold exactly")
    if not (np.isfinite(weight).all() and (bias is None or np.isfinite(bias).all())):
        return dense("the codebook holds non-finite values")
    analysis = _circle_analysis(weight, bias) if dim == 2 else _line_analysis(weight, bias)
    if isinstance(analysis, str):
        return dense(analysis)
    best = _best_grid(analysis)
    if best.window > min(window_max, num_embed):
        return dense(
            f"no window of <= {min(window_max, num_embed)} codes is proven for every cell "
            f"(the best grid, {best.cells} cells, needs {best.window})"
        )
    tables = _window_tables(analysis, best)
    reason = (
        f"every one of {best.cells} cells has a proven window of <= {best.window} sorted codes"
        + (f" (plus {analysis.extra.size} code(s) off the circle, scored for every vector)" if analysis.extra.size else "")
    )
    return LookupPlan("window", reason, num_embed, code_block, tables)


# ----------------------------------------------------------------------------------------------
# Export-time analysis (float64 on the float32 table values)


@dataclass(frozen=True)
class _Analysis:
    """The sorted code set of a table and how to compute its windows for a grid size."""

    group_dim: int
    weight: np.ndarray  # [V, d] float64 (exact copies of the float32 values)
    bias: np.ndarray | None  # [V] float64
    order: np.ndarray  # [M] original ids of the sorted codes
    keys: np.ndarray  # [M] float64 angle (d = 2) or value (d = 1), ascending
    extra: np.ndarray  # [E] original ids of the codes scored for every vector
    zero_code: int
    spread: float  # d = 2: radius + bias spread of the sorted codes; d = 1: gamma spread (the score gap bound)


@dataclass(frozen=True)
class _Grid:
    cells_per_octant: int
    cells: int
    key_offset: float
    key_scale: float
    start: np.ndarray  # [cells] first sorted position of each cell's window
    count: np.ndarray  # [cells] codes in each cell's window
    window: int


def _dedup(ids: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Drop codes identical (vector and bias) to a lower id: they can never be chosen (ties go low)."""
    columns = [weight[ids, k] for k in range(weight.shape[1])] + ([bias[ids]] if bias is not None else [])
    order = np.lexsort([ids] + columns[::-1])  # by columns, then by id
    sorted_columns = np.stack([column[order] for column in columns])
    first = np.ones(order.size, dtype=bool)
    first[1:] = (sorted_columns[:, 1:] != sorted_columns[:, :-1]).any(axis=0)
    return np.sort(ids[order[first]])


def _circle_analysis(weight32: np.ndarray, bias32: np.ndarray | None) -> _Analysis | str:
    """d = 2: unit-circle codes of one bias (the bands) sorted by angle; the other codes are extra."""
    weight = weight32.astype(np.float64)
    bias = bias32.astype(np.float64) if bias32 is not None else None
    radius = np.hypot(weight[:, 0], weight[:, 1])
    main = np.abs(radius - 1.0) <= RADIUS_BAND
    if bias is not None and main.any():
        main &= np.abs(bias - np.median(bias[main])) <= BIAS_BAND
    if not main.any():
        return "no code lies on the unit circle"
    extra = np.flatnonzero(~main)
    if extra.size > EXTRA_MAX:
        return (
            f"{extra.size} codes lie off the unit circle (or off the common bias); the window lookup "
            f"scores at most {EXTRA_MAX} such codes"
        )
    ids = _dedup(np.flatnonzero(main), weight, bias)
    angle = np.arctan2(weight[ids, 1], weight[ids, 0])
    order = np.lexsort([ids, angle])
    spread = float(np.ptp(radius[ids])) + (float(np.ptp(bias[ids])) if bias is not None else 0.0)
    zero_scores = bias32 if bias32 is not None else np.zeros(weight.shape[0], np.float32)
    zero_code = int(np.flatnonzero(zero_scores == zero_scores.max())[0])
    return _Analysis(2, weight, bias, ids[order], angle[order], extra, zero_code, spread)


def _line_analysis(weight32: np.ndarray, bias32: np.ndarray | None) -> _Analysis | str:
    """d = 1: codes of one gamma = b + w^2/2 (the band) sorted by value; the other codes are extra.

    Among codes of equal value only the best bias (then the lowest id) can win, so one is kept.
    """
    weight = weight32.astype(np.float64)
    bias = bias32.astype(np.float64) if bias32 is not None else np.zeros(weight.shape[0])
    values = weight[:, 0]
    gamma = bias + 0.5 * values**2
    main = np.abs(gamma - np.median(gamma)) <= GAMMA_BAND
    extra = np.flatnonzero(~main)
    if extra.size > EXTRA_MAX:
        return (
            f"{extra.size} codes' scores are not distances of one offset (b + w^2/2 varies by "
            f"{np.ptp(gamma):.3g}); the window lookup scores at most {EXTRA_MAX} such codes"
        )
    candidates = np.flatnonzero(main)
    by_bias = candidates[np.argsort(-bias[candidates], kind="stable")]
    by_value = by_bias[np.argsort(values[by_bias], kind="stable")]
    first = np.ones(by_value.size, dtype=bool)
    first[1:] = values[by_value[1:]] != values[by_value[:-1]]
    ids = by_value[first]
    return _Analysis(
        1, weight, bias if bias32 is not None else None, ids, values[ids], extra, 0, float(np.ptp(gamma[ids]))
    )


def _grid_sizes(analysis: _Analysis) -> list[int]:
    """Cells per octant (d = 2) or cells (d = 1) to try: powers of two from ~M/16 cells to MAX_CELLS."""
    codes = analysis.keys.size
    per_unit = 8 if analysis.group_dim == 2 else 1
    size = 1 << max(0, math.ceil(math.log2(max(1.0, codes / 16 / per_unit))))
    sizes = [size]
    while sizes[-1] * 2 * per_unit <= MAX_CELLS:
        sizes.append(sizes[-1] * 2)
    return sizes


def _best_grid(analysis: _Analysis) -> _Grid:
    """The grid with the shortest longest-window among those of at most CELL_BUDGET cells (the
    smallest such grid on ties); grids are refined up to ~4 cells per code, and past that while
    they still shorten the window."""
    best: _Grid | None = None
    stale = 0
    for size in _grid_sizes(analysis):
        grid = _circle_windows(analysis, size) if analysis.group_dim == 2 else _line_windows(analysis, size)
        if best is None or grid.window < best.window:
            best, stale = grid, 0
        else:
            stale += 1
        if grid.cells >= CELL_BUDGET or (stale >= 2 and grid.cells >= 4 * analysis.keys.size):
            break
    assert best is not None
    return best


def _circle_windows(analysis: _Analysis, per_octant: int) -> _Grid:
    """Windows of the 8 * per_octant cells of the circle grid.

    Cell (octant o, j) holds the u whose fp32 t = min(|x|,|y|) / max(|x|,|y|) lies in
    [j, j + 1) / C; their angles form an interval [lo, hi] (t widened by KEY_RELATIVE_ERROR, so the
    graph's rounding cannot put a u outside its cell's interval). The code nearest in angle to any
    angle of [lo, hi] is one of the codes from the last code at or before lo to the first code at
    or after hi: that run is the cell's window.
    """
    keys = analysis.keys
    codes = keys.size
    j = np.arange(per_octant, dtype=np.float64)
    t_lo = j / per_octant * (1.0 - KEY_RELATIVE_ERROR)
    t_hi = np.minimum(1.0, (j + 1.0) / per_octant * (1.0 + KEY_RELATIVE_ERROR))
    psi = np.stack([np.arctan(t_lo), np.arctan(t_hi)])  # angle inside the first octant
    intervals = []
    for octant in range(8):
        x_negative, y_negative, swapped = octant >> 2 & 1, octant >> 1 & 1, octant & 1
        angle = math.pi / 2 - psi if swapped else psi  # first-quadrant angle
        if x_negative:
            angle = math.pi - angle
        if y_negative:
            angle = -angle
        intervals.append(np.sort(angle, axis=0))
    lo, hi = np.concatenate(intervals, axis=1)  # [cells] each
    lo, hi = lo - ANGLE_SLACK, hi + ANGLE_SLACK
    tiled = np.concatenate([keys - 2 * math.pi, keys, keys + 2 * math.pi])
    first = np.searchsorted(tiled, lo, side="right") - 1  # last code at or before lo
    last = np.searchsorted(tiled, hi, side="left")  # first code at or after hi
    count = np.minimum(last - first + 1, codes)
    return _Grid(per_octant, 8 * per_octant, 0.0, 0.0, (first % codes).astype(np.int64), count, int(count.max()))


def _line_windows(analysis: _Analysis, cells: int) -> _Grid:
    """Windows of a grid of `cells` over the sorted values (d = 1), the end cells open to +-infinity.

    Cell j holds the u whose fp32 z = (u - offset) * scale lies in [j, j + 1) (cell 0 also all
    below, the last cell all above), widened by KEY_SLACK for rounding. The value nearest to any u
    of [a, b] is one of the codes from the last code at or below a to the first at or above b.
    """
    keys = analysis.keys
    codes = keys.size
    offset = np.float32(keys[0])
    span = float(keys[-1]) - float(offset)
    scale = np.float32(cells / span) if span > 0 else np.float32(0.0)
    if scale == 0.0:
        cells = 1
    j = np.arange(cells, dtype=np.float64)
    # The graph computes z = fl(fl(u - offset) * scale) (or a backend's reassociated u * scale -
    # offset * scale); either is within a few float32 ulps of |offset| + |u|, covered by `slack`.
    slack = (abs(float(offset)) + abs(span)) * KEY_SLACK
    a = float(offset) + j / float(scale) - slack if scale > 0 else np.full(cells, -np.inf)
    b = float(offset) + (j + 1.0) / float(scale) + slack if scale > 0 else np.full(cells, np.inf)
    a[0], b[-1] = -np.inf, np.inf
    first = np.maximum(np.searchsorted(keys, a, side="right") - 1, 0)
    last = np.minimum(np.searchsorted(keys, b, side="left"), codes - 1)
    count = last - first + 1
    return _Grid(cells, cells, float(offset), float(scale), first.astype(np.int64), count, int(count.max()))


def _window_tables(analysis: _Analysis, grid: _Grid) -> WindowTables:
    """Lay the windows out as rows: row r holds the sorted codes from r * stride on (wrapping on the circle)."""
    codes = analysis.keys.size
    window, bias = grid.window, analysis.bias
    channels = analysis.group_dim + 1 + (bias is not None)
    stride = 1
    while codes // stride * (window + stride - 1) * channels * 4 > TABLE_BUDGET_BYTES and stride < window:
        stride *= 2
    width = window + stride - 1
    rows = -(-codes // stride)
    positions = np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
    if analysis.group_dim == 2:
        positions = positions % codes  # the circle wraps
    else:
        positions = np.minimum(positions, codes - 1)  # past the top: repeat the last code (harmless)
    ids = analysis.order[positions]  # [rows, width]
    weight = np.stack([analysis.weight[ids, k] for k in range(analysis.group_dim)]).astype(np.float32)
    return WindowTables(
        group_dim=analysis.group_dim,
        cells=grid.cells,
        cells_per_octant=grid.cells_per_octant,
        key_offset=grid.key_offset,
        key_scale=grid.key_scale,
        window=width,
        stride=stride,
        cell_row=(grid.start // stride).astype(np.int64),
        weight=weight,
        bias=bias[ids].astype(np.float32) if bias is not None else None,
        index=ids.astype(np.float32),
        extra_weight=analysis.weight[analysis.extra].astype(np.float32).reshape(-1, analysis.group_dim),
        extra_bias=bias[analysis.extra].astype(np.float32) if bias is not None else None,
        extra_index=analysis.extra.astype(np.float32),
        zero_code=analysis.zero_code,
        sorted_codes=codes,
        gap_bound=analysis.spread,
    )


# ----------------------------------------------------------------------------------------------
# The graph


class WindowLookup(nn.Module):
    """Nearest code for each row of vectors [N, d] (d <= 2) -> int64 [N], from a proven window plan."""

    def __init__(self, tables: WindowTables, normalization: str, num_embed: int):
        super().__init__()
        self.normalization = normalization
        self.group_dim = tables.group_dim
        self.cells_per_octant = tables.cells_per_octant
        self.cells = tables.cells
        self.key_offset = float(tables.key_offset)
        self.key_scale = float(tables.key_scale)
        self.num_embed = num_embed
        self.zero_code = tables.zero_code
        self.has_bias = tables.bias is not None
        self.has_extra = tables.extra_weight.shape[0] > 0
        self.register_buffer("cell_row", torch.from_numpy(tables.cell_row.copy()))
        for k in range(tables.group_dim):
            self.register_buffer(f"window_weight_{k}", torch.from_numpy(tables.weight[k].copy()))
        if tables.bias is not None:
            self.register_buffer("window_bias", torch.from_numpy(tables.bias.copy()))
        self.register_buffer("window_index", torch.from_numpy(tables.index.copy()))
        if self.has_extra:
            self.register_buffer("extra_weight_t", torch.from_numpy(tables.extra_weight.T.copy()))
            if tables.extra_bias is not None:
                self.register_buffer("extra_bias", torch.from_numpy(tables.extra_bias.copy()))
            self.register_buffer("extra_index", torch.from_numpy(tables.extra_index.copy()))

    def cell_of(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cell id of each normalised vector (its components [N] each), int64 [N]; for d = 2 also
        the mask of zero vectors."""
        if self.group_dim == 1:
            z = (parts[0] - self.key_offset) * self.key_scale
            z = torch.where(z > 0, z, 0.0)  # also NaN -> 0
            z = torch.where(z < self.cells - 1, z, float(self.cells - 1))
            return z.floor().long(), None
        ux, uy = parts
        ax, ay = ux.abs(), uy.abs()
        smaller, larger = torch.minimum(ax, ay), torch.maximum(ax, ay)
        t = torch.where(larger > 0, smaller / larger, 0.0)
        z = t * float(self.cells_per_octant)  # a power of two: exact
        z = torch.where(z < self.cells_per_octant - 1, z, float(self.cells_per_octant - 1))  # t = 1, NaN
        # The octant's first cell, in float (exact: cell ids < 2^24), so that the only integer op is
        # the final Cast: no bool -> int casts or int64 arithmetic for backends that handle int64 partly.
        per_octant = float(self.cells_per_octant)
        first = torch.where(ux < 0, 4.0 * per_octant, 0.0) + torch.where(uy < 0, 2.0 * per_octant, 0.0)
        first = first + torch.where(ay > ax, per_octant, 0.0)
        return (first + z.floor()).long(), larger == 0

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        x = graph_normalize(vectors, self.normalization)
        parts = [x[:, k] for k in range(self.group_dim)]
        cell, is_zero = self.cell_of(parts)
        row = self.cell_row[cell]
        scores = parts[0].unsqueeze(1) * self.window_weight_0[row]
        if self.group_dim == 2:
            scores = scores + parts[1].unsqueeze(1) * self.window_weight_1[row]
        if self.has_bias:
            scores = scores + self.window_bias[row]
        index = self.window_index[row]
        if self.has_extra:
            extra = x @ self.extra_weight_t
            if self.has_bias:
                extra = extra + self.extra_bias
            scores = torch.cat([scores, extra], dim=1)
            index = torch.cat([index, self.extra_index.expand(x.shape[0], -1)], dim=1)
        best = scores.amax(dim=1, keepdim=True)
        code = torch.where(scores == best, index, float(self.num_embed)).amin(dim=1)
        code = torch.where(code < self.num_embed, code, 0.0)  # NaN vectors: code 0, in range
        if is_zero is not None:
            code = torch.where(is_zero, float(self.zero_code), code)
        return code.long()


def graph_normalize(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """gsq_core.lookup.normalize_vectors, written without F.normalize's expand_as (one graph op less;
    the same values: x / max(||x||, 1e-12), broadcast)."""
    if normalization == "l2":
        return x / torch.linalg.vector_norm(x, ord=2, dim=-1, keepdim=True).clamp_min(1e-12)
    if normalization == "l1":
        return x / torch.linalg.vector_norm(x, ord=1, dim=-1, keepdim=True).clamp_min(1e-12)
    return normalize_vectors(x, normalization)
