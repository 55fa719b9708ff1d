"""The window lookup's proof, attacked where it is thin: cell edges, code angles, +-pi, zero and tiny
vectors, duplicate codes; d = 1 and 2; V = 1,024, 65,536 and 262,144; through the exported quantizer
graph in ONNX Runtime and OpenVINO (runtimes.onnx / runtimes.openvino, as users run them), against
an independent brute force over all V codes in numpy.

The criterion (`check_against_brute_force`). For every vector the test normalises x itself (numpy,
fp32: x / max(||x||, 1e-12) for l2, clip to [-1, 1] for clip) and scores all V codes the graph's way,
in fp32: S'_v = (u0 w0 + u1 w1) + b (no fused operations), with w, b the graph's constants (the
normalised table, `lookup_bias`). The chosen code c must satisfy max_v S'_v - S'_c <= B, where

    B = spread + 4 e + 2 delta R,
    spread = U ptp(r) + ptp(b) over the codes on the circle (d = 2), ptp(b + w^2/2) (d = 1),
    e = 2^-24 (3.02 U R + 1.02 max|b|),  U = |u'|,  R = max_v |w_v|,
    delta = 0 for clip, and for l2 vectors whose computed norm is exactly 1 in fp32 with or without a
            fused multiply-add (the graph divides by 1.0: u = x exactly); 6 * 2^-24 U otherwise.

Derivation. e bounds the rounding of one fp32 score (two products, two sums; each op relative 2^-24,
|u0 w0| + |u1 w1| <= U R by Cauchy-Schwarz), in either evaluation order, fused or not. delta bounds
|u - u'| between the graph's normalised vector u and the test's u' (each within 3 units of 2^-24 of
the exact quotient: two squares, a sum, a square root, a division). The window holds the code n
nearest to u in angle (value): the graph's choice has S_c >= S_n, so s_c >= s_n - 2e in exact
arithmetic; no code beats n by more than `spread` (its score is U r cos + b, resp. u^2/2 - (u-w)^2/2
+ gamma). Moving from u to u' costs delta R on each side and the test's own rounding e on each side.
Typical B: ~6e-7 for placed vectors, ~1.3e-6 for others, so a miss of the nearest code by more than
that is red. A window one code short misses by far more where the dropped code is the only close
one: the codebooks below have holes (cells whose window is just the codes either side) and a tight
cluster that sets the window length, with a code placed just past the cluster cell's edge.
Ties: a chosen code must be the lowest index among codes equal to it (vector and bias), and the zero
vector gets the lowest index of the best bias.

The cell-level tests check the proof's statement itself on the tables the graph gathers from: for
vectors at every cell edge (computed with the graph's own key arithmetic, `WindowLookup.cell_of`) the
nearest code in float64 is in the row the graph gathers. `test_key_rounding_across_an_edge_*` build
the case the key-rounding allowances exist for: a vector whose fp32 key rounds up onto a cell edge
while it lies just below it, with a code exactly at the vector and another between it and the edge.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from gsq_deploy.exporters.graphs import lookup_bias, lookup_plan
from gsq_deploy.exporters.lookup_graph import ANGLE_SLACK, WindowLookup, graph_normalize, plan_lookup
from gsq_core.lookup import normalize_vectors
from tests.exporters.test_lookup_graph import GROUPS, tiny_model

EPS = 2.0**-24
F32 = np.float32
SIZES = [1024, 65536, 262144]
# Vectors probed per codebook size: the brute force scores each against all V codes.
PROBES = {1024: 16000, 65536: 3000, 262144: 1200}
CLUSTER = 40  # codes in the tight cluster: the window length is W = CLUSTER + 2 at every grid
# The cluster lies inside the cell t in [1/2, 1/2 + 1/C) of octant 0 for every grid C <= 2^15 per
# octant (no grid edge splits it); the sentinel sits just past t = 5/8, the upper edge of that cell
# on the coarsest grid of V = 1,024 (C = 8), with no other code between: for u at that edge the
# sentinel is the nearest code by far, and the cluster cell is one of the longest windows.
CLUSTER_START = math.atan(0.5 + 0.25 / 2**15)
SENTINEL = math.atan(0.625) + 2e-4
HOLES = ((0.40, 0.62), (-2.6, -2.0))


# ----------------------------------------------------------------------------------------------
# Codebooks


def _unit_f32(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(F32)


def _outside_holes(values: np.ndarray, holes) -> np.ndarray:
    keep = np.ones(len(values), bool)
    for low, high in holes:
        keep &= ~((values > low) & (values < high))
    return values[keep]


def circle_codebook(size: int) -> tuple[np.ndarray, np.ndarray]:
    """d = 2 codes on the unit circle and the ids of the special ones: the 8 axis and diagonal codes,
    codes either side of +-pi, the cluster and its sentinel inside a hole, a second hole, two zero
    rows (the graph then keeps the distance bias and scores them for every vector: a vector shorter
    than 1/2 would pick them if it were not normalised), 16 exact duplicates at lower and 16 at higher
    ids; the rest random."""
    rng = np.random.default_rng(size)
    s = F32(math.sqrt(0.5))
    compass = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [s, s], [-s, s], [-s, -s], [s, -s]], F32)
    special = np.concatenate([
        compass,
        _unit_f32(np.array([math.pi - 1e-6, -math.pi + 2e-6, math.pi - 3e-4, SENTINEL])),
        _unit_f32(CLUSTER_START + np.arange(CLUSTER) * 3e-7),
        _unit_f32(np.array([hole for pair in HOLES for hole in pair])),  # the hole ends
        np.zeros((2, 2), F32),
    ])  # fmt: skip
    count = size - len(special) - 32
    angles = _outside_holes(rng.uniform(-math.pi, math.pi, 2 * count), HOLES)[:count]
    codes = np.concatenate([special, _unit_f32(angles)])
    codes = np.concatenate([codes[rng.choice(len(codes), 16, replace=False)], codes,
                            codes[rng.choice(len(codes), 16, replace=False)]])  # fmt: skip
    assert codes.shape == (size, 2)
    return codes, 16 + np.arange(len(special))


def line_codebook(size: int) -> tuple[np.ndarray, np.ndarray]:
    """d = 1 values in [-1, 1] (clip normalisation) and the special ids: both ends (so the grid's
    offset is -1 and its scale a power of two: 0.28125 and 0.296875 are edges of every grid of >= 128
    cells), 0 and -0, +-1e-30, the cluster at the bottom of the cell [0.28125, 0.296875) of the chosen
    grid for V = 1,024 (128 cells) and within one cell of the finest grid, its sentinel just past
    0.296875, two holes, duplicates."""
    rng = np.random.default_rng(size + 1)
    holes = ((-0.6, -0.4), (0.25, 0.35))
    special = np.concatenate([
        np.array([-1.0, 1.0, 0.0, -0.0, 1e-30, -1e-30, -0.6, -0.4, 0.25, 0.35, 0.296875 + 1e-4], F32),
        (0.28125 + 1e-6 + np.arange(CLUSTER) * 1.5e-7).astype(F32),
    ])  # fmt: skip
    count = size - len(special) - 32
    values = _outside_holes(rng.uniform(-1, 1, 2 * count), holes)[:count].astype(F32)
    codes = np.concatenate([special, values])
    codes = np.concatenate([codes[rng.choice(len(codes), 16)], codes, codes[rng.choice(len(codes), 16)]])
    assert codes.shape == (size,)
    return codes[:, None], 16 + np.arange(len(special))


# ----------------------------------------------------------------------------------------------
# The independent reference


def reference_normalize(x: np.ndarray, normalization: str) -> np.ndarray:
    """The lookup's normalisation written out in fp32 numpy (not the project's code)."""
    x = x.astype(F32)
    if normalization == "clip":
        return np.clip(x, F32(-1), F32(1))
    norm = np.sqrt((x * x).sum(axis=1, dtype=F32)).astype(F32)
    return (x / np.maximum(norm, F32(1e-12))[:, None]).astype(F32)


def exact_unit_norm(x: np.ndarray) -> np.ndarray:
    """Vectors whose fp32 norm is exactly 1 whether the sum of squares is rounded once or twice."""
    x = x.astype(F32)
    twice = np.sqrt((x * x).sum(axis=1, dtype=F32)).astype(F32) == 1
    once = np.sqrt(F32((x.astype(np.float64) ** 2).sum(axis=1))).astype(F32) == 1
    return twice & once


def graph_way_scores(u: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """fp32 scores [N, V] the graph's way: products, then sums, then the bias."""
    scores = u[:, 0:1] * weight[None, :, 0]
    if weight.shape[1] == 2:
        scores = scores + u[:, 1:2] * weight[None, :, 1]
    if bias is not None:
        scores = scores + bias[None, :]
    return scores


@lru_cache(maxsize=None)
def planned(dim: int, size: int):
    """The model, its window tables, the probes and their fp32 best scores over all V codes."""
    codebook, special = circle_codebook(size) if dim == 2 else line_codebook(size)
    model = tiny_model(codebook, "l2" if dim == 2 else "clip")
    plan = lookup_plan(model)
    assert plan.window is not None, plan.reason
    rng = np.random.default_rng(size * dim)
    vectors, placed = (circle_probes if dim == 2 else line_probes)(model, plan.window, special, PROBES[size], rng)
    extra = (-len(vectors)) % GROUPS
    vectors, placed = np.concatenate([vectors, vectors[:extra]]), np.concatenate([placed, placed[:extra]])
    tables = model.quantizer.lookup_tables()
    weight = tables.weight.numpy().astype(F32)
    graph_bias = lookup_bias(model)
    bias = graph_bias.numpy().astype(F32) if graph_bias is not None else None
    u = reference_normalize(vectors, tables.normalization)
    best = np.concatenate([graph_way_scores(u[start : start + 64], weight, bias).max(axis=1)
                           for start in range(0, len(u), 64)])  # fmt: skip
    return model, plan.window, vectors, placed, u, best


def check_against_brute_force(dim: int, size: int, codes: np.ndarray) -> None:
    """The criterion of the module docstring for the probes of planned(dim, size) and the codes
    [N] (any shape) the graph chose for them."""
    model, _, x, placed, u, best = planned(dim, size)
    weight = model.quantizer.lookup_tables().weight.numpy().astype(F32)
    graph_bias = lookup_bias(model)
    bias = graph_bias.numpy().astype(F32) if graph_bias is not None else None
    chosen = codes.reshape(-1)
    assert codes.dtype == np.int64 and len(chosen) == len(u) and chosen.min() >= 0 and chosen.max() < len(weight)
    big_u = np.linalg.norm(u.astype(np.float64), axis=1)
    radius = np.linalg.norm(weight.astype(np.float64), axis=1)
    b64 = bias.astype(np.float64) if bias is not None else np.zeros(len(weight))
    if dim == 2:
        circle = (radius > 0.5) & (radius < 2.0)
        spread = big_u * np.ptp(radius[circle]) + np.ptp(b64[circle])
        delta = np.where(placed & exact_unit_norm(x), 0.0, 6 * EPS * big_u)
    else:
        spread = np.full(len(u), np.ptp(b64 + weight[:, 0].astype(np.float64) ** 2 / 2))
        delta = np.zeros(len(u))
    rounding = EPS * (3.02 * big_u * radius.max() + 1.02 * np.abs(b64).max())
    bound = spread + 4 * rounding + 2 * delta * radius.max()
    picked = u[:, 0] * weight[chosen, 0]
    if dim == 2:
        picked = picked + u[:, 1] * weight[chosen, 1]
    if bias is not None:
        picked = picked + bias[chosen]
    gaps = best - picked.astype(np.float64)
    worst = int(np.argmax(gaps - bound))
    assert (gaps <= bound).all(), (
        f"{int((gaps > bound).sum())} of {len(u)} codes miss the fp32 best by more than the bound: "
        f"vector {x[worst].tolist()} chose {chosen[worst]}, gap {gaps[worst]:.3g} > bound {bound[worst]:.3g}"
    )
    # exact ties: the lowest index among equal codes; the zero vector: the lowest index of the best bias
    rows = np.concatenate([weight, (bias if bias is not None else np.zeros(len(weight), F32))[:, None]], axis=1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    lowest = np.full(inverse.max() + 1, len(rows))
    np.minimum.at(lowest, inverse, np.arange(len(rows)))
    assert (lowest[inverse[chosen]] == chosen).all(), "a code chosen over an equal code of lower index"
    zero = ~u.any(axis=1)
    assert zero.any() and (chosen[zero] == int(np.argmax(b64))).all()


# ----------------------------------------------------------------------------------------------
# Probes placed with the graph's own grid


def _ulps(values: np.ndarray, steps: int) -> np.ndarray:
    """values moved by `steps` fp32 ulps (toward +inf for steps > 0)."""
    out = np.asarray(values).astype(F32)
    for _ in range(abs(steps)):
        out = np.nextafter(out, F32(np.inf) if steps > 0 else F32(-np.inf))
    return out


def circle_edge_vectors(keys: np.ndarray) -> np.ndarray:
    """First-octant fp32 vectors (x >= y >= 0) with graph key t = fl(y / x) equal to each key and an
    fp32 norm of exactly 1 (searched among a few ulps around the exact point); keys without one are left out."""
    keys = keys.astype(F32)
    x0 = (1 / np.sqrt(1 + keys.astype(np.float64) ** 2)).astype(F32)
    y0 = (keys.astype(np.float64) * x0).astype(F32)
    found = np.zeros((len(keys), 2), F32)
    done = np.zeros(len(keys), bool)
    for dx in (0, -1, 1, -2, 2, -3, 3):
        for dy in (0, -1, 1, -2, 2, -3, 3):
            x, y = _ulps(x0, dx), np.where(keys == 0, F32(0), _ulps(y0, dy))
            with np.errstate(invalid="ignore", divide="ignore"):
                ok = ((y / x).astype(F32) == keys) & exact_unit_norm(np.stack([x, y], axis=1)) & (y <= x) & ~done
            found[ok] = np.stack([x, y], axis=1)[ok]
            done |= ok
    assert done.mean() > 0.8, f"only {done.mean():.0%} of the edge keys got a unit vector"
    return found[done]


def octants(first: np.ndarray) -> np.ndarray:
    """The 8 sign / swap images of first-octant vectors [N, 2] -> [8N, 2]."""
    images = []
    for swap in (False, True):
        base = first[:, ::-1] if swap else first
        for sx in (1, -1):
            for sy in (1, -1):
                images.append(base * np.array([sx, sy], F32))
    return np.concatenate(images).astype(F32)


def _graph_cells(tables, vectors: np.ndarray) -> np.ndarray:
    """Cell ids [N] the graph's key arithmetic gives (WindowLookup.cell_of, fp32 torch)."""
    module = WindowLookup(tables, "l2" if tables.group_dim == 2 else "clip", 1)
    with torch.no_grad():
        parts = [torch.from_numpy(np.ascontiguousarray(vectors[:, k])) for k in range(tables.group_dim)]
        return module.cell_of(parts)[0].numpy()


TINY = np.array(
    [[0, 0], [-0.0, -0.0], [0, -0.0], [1e-38, 0], [0, -1e-38], [1e-30, -1e-30], [3e-13, -4e-13],
     [-6e-13, 8e-14], [1e-12, 1e-12], [-1e-6, 2e-6], [-1, 0], [-1, -0.0], [-1, 1e-38], [-1, -1e-38],
     [-1, 1e-7], [-1, -1e-7], [-1, 5e-7], [-1, -1.5e-6], [-2, 3e-6], [-3, -4e-6], [1e6, -1e6]], F32
)  # fmt: skip


def circle_probes(model, tables, special, budget, rng) -> tuple[np.ndarray, np.ndarray]:
    """d = 2 probes [N, 2] and the mask of those placed with a unit norm: cell edges of the graph's
    grid (all of them, or a sample plus the edges of the special codes' cells) at their key and one
    ulp either side, in all 8 octants; code directions and bisectors; +-pi, zero and tiny vectors; noise."""
    per_octant = tables.cells_per_octant
    weight = model.quantizer.lookup_tables().weight.numpy().astype(F32)
    special_cells = _graph_cells(tables, weight[special]) % per_octant
    edges = np.unique(np.concatenate([special_cells, special_cells + 1, [0, per_octant]]))
    others_budget = budget // 3
    free = max(0, (budget - others_budget) // 24 - len(edges))
    edges = np.unique(np.concatenate([edges, rng.choice(per_octant + 1, min(free, per_octant + 1), replace=False)]))
    keys = (edges / per_octant).astype(F32)
    keys = np.unique(np.concatenate([keys, _ulps(keys, -1), _ulps(keys, 1)]))
    placed = octants(circle_edge_vectors(keys[(keys >= 0) & (keys <= 1)]))
    sample = np.unique(np.concatenate([special, rng.choice(len(weight), min(len(weight), others_budget // 8))]))
    angle = np.arctan2(weight[sample, 1].astype(np.float64), weight[sample, 0].astype(np.float64))
    sorted_angles = np.sort(np.arctan2(weight[:, 1].astype(np.float64), weight[:, 0].astype(np.float64)))
    following = sorted_angles[np.searchsorted(sorted_angles, angle, side="right") % len(sorted_angles)]
    following = np.where(following < angle, following + 2 * math.pi, following)
    directions = np.concatenate([weight[sample], _unit_f32((angle + following) / 2)])
    directions = np.concatenate([directions, directions * F32(3.5)] + [
        np.stack([directions[:, 0], _ulps(directions[:, 1], k)], axis=1) for k in (-1, 1)
    ])  # fmt: skip
    noise = rng.standard_normal((max(0, others_budget - len(directions) - len(TINY)), 2)).astype(F32)
    noise[::2] *= F32(0.2)  # half of them shorter than 1/2
    others = np.concatenate([directions, TINY, noise]).astype(F32)
    return np.concatenate([placed, others]), np.concatenate([np.ones(len(placed), bool), np.zeros(len(others), bool)])


def line_probes(model, tables, special, budget, rng) -> tuple[np.ndarray, np.ndarray]:
    """d = 1 probes [N, 1]: cell edges offset + j / scale of the graph's grid (all, or a sample plus the
    special codes' cells) and 2 ulps either side; code values and midpoints; 0, -0, +-1, beyond."""
    cells = tables.cells
    values = model.quantizer.lookup_tables().weight.numpy().astype(F32)[:, 0]
    special_cells = _graph_cells(tables, values[special, None])
    edges = np.unique(np.concatenate([special_cells, special_cells + 1, [0, cells]]))
    others_budget = budget // 3
    free = max(0, (budget - others_budget) // 5 - len(edges))
    edges = np.unique(np.concatenate([edges, rng.choice(cells + 1, min(free, cells + 1), replace=False)]))
    at = (tables.key_offset + edges / np.float64(tables.key_scale)).astype(F32)
    placed = np.concatenate([_ulps(at, k) for k in range(-2, 3)])
    sample = np.sort(values[np.unique(np.concatenate([special, rng.choice(len(values), others_budget // 3)]))])
    fixed = np.array([0, -0.0, 1, -1, 1.5, -7, 1e-38, -1e-38, 0.3, 0.296875, 0.3125, -0.5, -0.4, 1e-30], F32)
    noise = rng.uniform(-1.2, 1.2, max(0, others_budget - 2 * len(sample) - len(fixed))).astype(F32)
    others = np.concatenate([sample, ((sample[1:] + sample[:-1]) / 2).astype(F32), fixed, noise])
    vectors = np.concatenate([placed, others])[:, None].astype(F32)
    return vectors, np.zeros(len(vectors), bool)


# ----------------------------------------------------------------------------------------------
# Cell level: the proof's statement on the tables the graph gathers from


def _window_rows(tables, cells: np.ndarray) -> np.ndarray:
    return tables.index[tables.cell_row[cells]].astype(np.int64)


def nearest_in_window(tables, weight: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """For each vector (already normalised, fp32): whether the row its graph key selects holds a code
    nearest to it in float64 (angle for d = 2, value for d = 1; the nearest found from the vector's
    two neighbours among all V codes sorted by key), or a code scored for every vector."""
    rows = _window_rows(tables, _graph_cells(tables, vectors))
    w64 = weight.astype(np.float64)
    if tables.group_dim == 2:
        key = np.arctan2(w64[:, 1], w64[:, 0])
        probe = np.arctan2(vectors[:, 1].astype(np.float64), vectors[:, 0].astype(np.float64))

        def distance(a, b):
            return np.abs(np.mod(a - b + math.pi, 2 * math.pi) - math.pi)
    else:
        key, probe = w64[:, 0], vectors[:, 0].astype(np.float64)

        def distance(a, b):
            return np.abs(a - b)
    ordered = np.sort(key)
    position = np.searchsorted(ordered, probe)
    neighbours = ordered[np.stack([(position - 1) % len(ordered), position % len(ordered)], axis=1)]
    nearest = distance(neighbours, probe[:, None]).min(axis=1)
    held = (distance(key[rows], probe[:, None]) == nearest[:, None]).any(axis=1)
    return held | np.isin(rows, tables.extra_index.astype(np.int64)).any(axis=1)



@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dim", [2, 1])
def test_every_probe_has_its_nearest_code_in_the_row_the_graph_gathers(dim, size):
    model, tables, _, _, u, _ = planned(dim, size)
    weight = model.quantizer.lookup_tables().weight.numpy().astype(F32)
    u = u[u.any(axis=1)]
    ok = nearest_in_window(tables, weight, u)
    assert ok.all(), f"{int((~ok).sum())} vectors' nearest code is not in their row, e.g. {u[~ok][:3].tolist()}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dim", [2, 1])
def test_window_module_matches_the_fp32_brute_force(dim, size):
    """The torch module the graph is traced from, run eagerly on the probes (fp32, the graph's ops)."""
    model, tables, vectors, _, _, _ = planned(dim, size)
    module = WindowLookup(tables, "l2" if dim == 2 else "clip", model.num_embed)
    with torch.no_grad():
        codes = module(torch.from_numpy(vectors)).numpy()
    check_against_brute_force(dim, size, codes)


# ----------------------------------------------------------------------------------------------
# Key rounding across an edge: the allowances KEY_RELATIVE_ERROR (d = 2) and KEY_SLACK (d = 1)


def _sliver_circle_case() -> tuple[np.ndarray, np.ndarray]:
    """Codes and a probe for t = 5/8, an edge of every grid of >= 8 cells per octant: a vector u just
    below the edge (exact t < 5/8) whose fp32 key fl(y / x) is exactly 5/8, a code B = u, and a code A
    strictly between u and the edge (more than ANGLE_SLACK inside): without the key allowance the
    edge cell's window starts at A and leaves out B, the nearest code (distance 0)."""
    edge_t = 0.625
    edge = math.atan(edge_t)
    best: tuple[float, np.ndarray] | None = None
    x0 = F32(1 / math.sqrt(1 + edge_t**2))
    for dx in range(-4, 5):  # B = u stays within the radius band of the circle
        x = _ulps(np.array([x0]), dx)[0]
        y = F32(edge_t * np.float64(x))
        if np.float64(y) >= edge_t * np.float64(x):  # the largest fp32 below the exact point
            y = np.nextafter(y, F32(0))
        if not (np.float64(y) < edge_t * np.float64(x) and F32(y / x) == F32(edge_t)):
            continue
        vector = np.array([[x, y]], F32)
        deficit = edge - math.atan2(float(y), float(x))
        if best is None or deficit > best[0]:
            best = (deficit, vector[0])
    assert best is not None and best[0] > 4 * ANGLE_SLACK, best
    probe = best[1]
    probe_angle = math.atan2(float(probe[1]), float(probe[0]))
    # A: an fp32 point within the radius band whose angle lies in (probe, edge - 2 * ANGLE_SLACK)
    cx, cy = F32(math.cos(edge)), F32(math.sin(edge))
    between = None
    for a in range(-12, 13):
        for b in range(-12, 13):
            x, y = _ulps(np.array([cx]), a)[0], _ulps(np.array([cy]), b)[0]
            angle = math.atan2(float(y), float(x))
            if abs(math.hypot(float(x), float(y)) - 1) < 3e-7 and probe_angle + 2e-10 < angle < edge - 2 * ANGLE_SLACK:
                between = np.array([x, y], F32)
                break
        if between is not None:
            break
    assert between is not None
    base = _unit_f32(np.linspace(-math.pi, math.pi, 1024, endpoint=False) + 1e-3)
    base = base[np.abs(np.arctan2(base[:, 1], base[:, 0]) - edge) > 1e-2]
    return np.concatenate([base, [between, probe]]).astype(F32), probe[None, :]


def _sliver_line_case() -> tuple[np.ndarray, np.ndarray]:
    """d = 1 with codes from -1 to 1 (offset -1, scale a power of two: u = 0 is an edge of every grid):
    u = -2^-26 has fl(fl(u + 1) * scale) on the edge, a code B = u and a code A = 0 between u and the
    edge: without KEY_SLACK the edge cell's window starts at A and leaves out B."""
    base = np.linspace(-1, 1, 1025).astype(F32)
    base = base[np.abs(base) > 1e-2]
    probe = F32(-(2.0**-26))
    assert F32(F32(probe + F32(1)) * F32(512)) == F32(512)  # the key rounds up onto the edge
    return np.concatenate([base, [F32(0.0), probe]])[:, None].astype(F32), np.array([[probe]], F32)


@pytest.mark.parametrize("dim", [2, 1])
def test_key_rounding_across_an_edge_keeps_the_nearest_code(dim):
    codes, probe = _sliver_circle_case() if dim == 2 else _sliver_line_case()
    bias = None if dim == 2 else (F32(-0.5) * codes[:, 0] * codes[:, 0]).astype(F32)
    plan = plan_lookup(codes, bias, "l2" if dim == 2 else "clip", 65536)
    assert plan.method == "window", plan.reason
    assert nearest_in_window(plan.window, codes, probe).all(), "the probe's own code is not in its cell's window"


def test_plan_facts_are_the_tables_sizes():
    """The manifest's lookup facts: window, cells, stride, table bytes and scratch per vector are those
    of the tables; a dense plan states its code blocks and a score row's scratch."""
    model, tables, _, _, _, _ = planned(2, 1024)
    plan = lookup_plan(model)
    facts = plan.manifest_facts()
    arrays = [tables.cell_row, tables.weight, tables.index, tables.extra_weight, tables.extra_index,
              tables.bias, tables.extra_bias]  # fmt: skip
    assert facts["method"] == "window" and facts["window"] == tables.window == tables.weight.shape[2]
    assert facts["cells"] == tables.cells == 8 * tables.cells_per_octant and facts["stride"] == tables.stride
    # rows start every `stride` sorted codes and the rows hold every sorted code (the circle wraps)
    assert isinstance(tables.stride, int) and tables.index.shape[0] == -(-tables.sorted_codes // tables.stride)
    assert tables.sorted_codes == len(np.unique(tables.index)) > 900  # 1,024 less duplicates and zero rows
    assert facts["table_bytes"] == tables.table_bytes == sum(array.nbytes for array in arrays)
    # the graph's constants are fp32 (the scores the proof bounds are fp32), the cell rows int64
    assert all(array.dtype == np.float32 for array in arrays[1:]) and tables.cell_row.dtype == np.int64
    zero_rows = int((~model.quantizer.lookup_tables().weight.numpy().any(axis=1)).sum())  # 2, and copies
    assert facts["extra_codes"] == zero_rows >= 2 and tables.scored_per_vector == tables.window + zero_rows
    # x, y, bias, score and id per candidate
    assert facts["scratch_bytes_per_vector"] == 4 * (2 + 2 + 1) * (tables.window + zero_rows)
    assert 0 < facts["gap_bound"] < 1e-6 and facts["gap_bound"] == tables.gap_bound
    assert facts["reason"] == plan.reason and facts["code_block"] == plan.code_block == 65536
    assert set(facts) == {"method", "reason", "code_block", "scratch_bytes_per_vector", "window", "cells",
                          "extra_codes", "stride", "table_bytes", "gap_bound"}  # fmt: skip
    line_model, line_tables, _, _, _, _ = planned(1, 1024)
    assert line_tables.bias is not None  # d = 1 distance scores: value, bias, score, id per candidate
    assert lookup_plan(line_model).scratch_bytes_per_vector() == 4 * (1 + 2 + 1) * line_tables.window
    codes = model.quantizer.lookup_tables().weight.numpy()
    dense = plan_lookup(np.concatenate([codes, np.zeros((20, 2), F32)]), None, "l2", 300)
    assert dense.method == "dense" and "off the unit circle" in dense.reason
    assert dense.manifest_facts() == {"method": "dense", "reason": dense.reason, "code_block": 300, "code_blocks": 4,
                                      "scratch_bytes_per_vector": 4 * 300}  # fmt: skip


def test_window_module_far_from_every_code_and_on_nan():
    """Codes at 0 and pi and a zero row (the bias is kept, the zero row scored for every vector): a
    vector 61.5 degrees from both unit codes scores cos - 1/2 < 0 against them once normalised to
    length 1, so it picks the zero row; at 50 degrees the code at 0 wins; a NaN vector gets code 0."""
    codes = np.array([[1, 0], [-1, 0], [0, 0]], F32)
    plan = plan_lookup(codes, (F32(-0.5) * (codes * codes).sum(axis=1)).astype(F32), "l2", 65536)
    assert plan.method == "window" and plan.window.extra_index.tolist() == [2.0]
    module = WindowLookup(plan.window, "l2", 3)
    far, near = math.radians(61.5), math.radians(50)
    vectors = np.array([[2 * math.cos(far), 2 * math.sin(far)], [math.nan, math.nan],
                        [3 * math.cos(near), 3 * math.sin(near)], [0.1 * math.cos(near), 0.1 * math.sin(near)]], F32)
    with torch.no_grad():
        assert module(torch.from_numpy(vectors)).tolist() == [2, 0, 0, 0]


def test_line_plan_keeps_one_code_per_value_and_counts_codes_off_the_band():
    """d = 1 planning rules: without a bias, codes of one magnitude are distances of one offset (a
    window); of equal values the best bias is kept, then the lowest id (also among 300 copies each);
    up to 16 codes off the band are scored for every vector, 17 make the lookup dense."""
    plan = plan_lookup(np.array([[0.5], [-0.5], [0.5]], F32), None, "none", 65536)
    assert plan.method == "window" and sorted(set(plan.window.index.reshape(-1).tolist())) == [0.0, 1.0]
    values = np.repeat(np.array([-0.75, -0.25, 0.25, 0.75], F32), 300)
    order = np.random.default_rng(0).permutation(len(values))
    values = values[order]
    plan = plan_lookup(values[:, None], F32(-0.5) * values * values, "clip", 65536)
    kept = sorted(set(plan.window.index.reshape(-1).astype(int).tolist()))
    assert kept == sorted(int(np.flatnonzero(values == value)[0]) for value in (-0.75, -0.25, 0.25, 0.75))
    better = plan_lookup(np.array([[0.5], [0.5], [-0.5]], F32), np.array([-0.125, -0.125 + 4e-7, -0.125], F32), "clip", 65536)
    assert sorted(set(better.window.index.reshape(-1).tolist())) == [1.0, 2.0]  # 0.5 with the better bias
    base = np.linspace(-1, 1, 64).astype(F32)
    for off_band, method in ((16, "window"), (17, "dense")):
        codes = np.concatenate([base, np.linspace(0.1, 0.9, off_band).astype(F32)])
        bias = np.concatenate([F32(-0.5) * base * base, np.zeros(off_band, F32)]).astype(F32)
        plan = plan_lookup(codes[:, None], bias, "clip", 65536)
        assert plan.method == method, plan.reason
        if method == "window":
            assert sorted(plan.window.extra_index.astype(int).tolist()) == list(range(64, 64 + off_band))
        else:
            assert "17 codes' scores are not distances of one offset" in plan.reason and "varies by 0.405" in plan.reason


def test_line_plan_of_one_distinct_value_is_one_open_cell():
    """All codes one value: scale 0, one cell open to both sides, every vector gets the lowest id."""
    plan = plan_lookup(np.full((8, 1), 0.25, F32), np.full(8, -0.03125, F32), "clip", 65536)
    tables = plan.window
    assert plan.method == "window" and tables.cells == 1 and tables.window == 1 and tables.key_scale == 0.0
    assert tables.index.tolist() == [[0.0]] and tables.cell_row.tolist() == [0]
    module = WindowLookup(tables, "clip", 8)
    with torch.no_grad():
        codes = module(torch.tensor([[-5.0], [0.0], [0.25], [0.3], [7.0]]))
    assert codes.tolist() == [0, 0, 0, 0, 0]


def _brute_force_codes(codes: np.ndarray, bias: np.ndarray | None, u: np.ndarray) -> np.ndarray:
    """float64 argmax of u . w + b over all codes (lowest index on ties), u already normalised."""
    return np.argmax(_scores64(codes, bias, u), axis=1)


def _scores64(codes: np.ndarray, bias: np.ndarray | None, u: np.ndarray) -> np.ndarray:
    scores = u.astype(np.float64) @ codes.astype(np.float64).T
    return scores + bias.astype(np.float64)[None, :] if bias is not None else scores


def _assert_near_best(codes: np.ndarray, bias: np.ndarray, u: np.ndarray, chosen: np.ndarray) -> None:
    """The chosen codes' float64 scores are the best within the fp32 rounding of one score (4 e of
    the module docstring, e = 2^-24 (3.02 |u| R + 1.02 max|b|))."""
    scores = _scores64(codes, bias, u)
    rounding = EPS * (3.02 * np.abs(u[:, 0]) * np.abs(codes).max() + 1.02 * np.abs(bias).max())
    gaps = scores.max(axis=1) - scores[np.arange(len(u)), chosen]
    assert (gaps <= 4 * rounding).all(), f"{int((gaps > 4 * rounding).sum())} vectors miss their best code"


def test_line_plan_window_reaches_the_first_code_past_its_upper_edge():
    """d = 1, codes from -1 to 1 (u = 0 is an edge of every grid): u = -1e-7 lies below the edge,
    a code C = 1e-7 just above it is its nearest, and a code A = -5e-6 lies between u's cell's lower
    codes and the edge (within KEY_SLACK of it): the window must run past A to the first code at or
    above the edge widened by the slack, or it misses C."""
    base = np.linspace(-1, 1, 1025).astype(F32)
    base = base[np.abs(base) > 1e-2]
    codes = np.concatenate([base, np.array([-5e-6, 1e-7], F32)])[:, None]
    bias = (F32(-0.5) * codes[:, 0] * codes[:, 0]).astype(F32)
    plan = plan_lookup(codes, bias, "clip", 65536)
    assert plan.method == "window", plan.reason
    probe = np.array([[-1e-7]], F32)
    assert nearest_in_window(plan.window, codes, probe).all(), "the code just past the edge is not in the window"
    module = WindowLookup(plan.window, "clip", len(codes))
    with torch.no_grad():
        assert module(torch.from_numpy(probe)).tolist() == [len(codes) - 1]


def test_line_plan_of_narrow_and_of_wide_value_ranges():
    """Grids whose scale is not > 1: 200 values in [0.25, 0.75] (span < 1) still get a window of a few
    codes; a wide codebook (span 2^18, codes 1,024 apart, bias -w^2/2 exact) has scale <= 1 on every
    grid tried and still gets one; codes 0, 64 and i + 1/2 (i < 64) have the shortest window (3) first
    on the grid of 64 cells, scale exactly 1 (one code per cell; 32 cells hold two each: 4). Every
    probe's nearest code is in its row, and the module's choices are the best within fp32 rounding."""
    narrow = np.linspace(0.25, 0.75, 200).astype(F32)[:, None]
    wide = (np.arange(-128, 129, dtype=np.float64) * 1024).astype(F32)[:, None]
    unit = np.concatenate([[0.0, 64.0], np.arange(64) + 0.5]).astype(F32)[:, None]
    rng = np.random.default_rng(5)
    for codes, normalization, probes in (
        (narrow, "clip", rng.uniform(-1.5, 1.5, 3000)),
        (wide, "none", rng.uniform(-140000, 140000, 3000)),
        (unit, "none", rng.uniform(-2, 66, 3000)),
    ):
        bias = (F32(-0.5) * codes[:, 0] * codes[:, 0]).astype(F32)
        plan = plan_lookup(codes, bias, normalization, 65536)
        assert plan.method == "window" and plan.window.window <= 4, plan.reason
        facts = plan.manifest_facts()
        assert isinstance(facts["gap_bound"], float) and 0 <= facts["gap_bound"] < 1e-6
        vectors = probes.astype(F32)[:, None]
        u = np.clip(vectors, -1, 1) if normalization == "clip" else vectors
        assert nearest_in_window(plan.window, codes, u).all()
        module = WindowLookup(plan.window, normalization, len(codes))
        with torch.no_grad():
            chosen = module(torch.from_numpy(vectors)).numpy()
        _assert_near_best(codes, bias, u, chosen)
    assert plan.window.cells == 64 and plan.window.key_scale == 1.0 and plan.window.window == 3


def test_line_plan_scores_off_band_codes_with_their_bias_and_keeps_no_bias_absent():
    """An off-band code (w = 0.5, b = -0.5: scored for every vector) must lose to the band's code at
    0.5 (score 0.125 against -0.25), which needs its bias added, not subtracted; a table without a
    bias keeps none (value, score and id per candidate)."""
    base = np.linspace(-1, 1, 64).astype(F32)
    codes = np.concatenate([base, [F32(0.5)]])[:, None]
    bias = np.concatenate([F32(-0.5) * base * base, [F32(-0.5)]]).astype(F32)
    plan = plan_lookup(codes, bias, "clip", 65536)
    assert plan.method == "window" and plan.window.extra_index.tolist() == [64.0]
    vectors = np.linspace(-1, 1, 257).astype(F32)[:, None]
    with torch.no_grad():
        chosen = WindowLookup(plan.window, "clip", len(codes))(torch.from_numpy(vectors)).numpy()
    assert (chosen == _brute_force_codes(codes, bias, vectors)).all() and 64 not in chosen
    plain = plan_lookup(np.array([[0.5], [-0.5]], F32), None, "none", 65536)
    assert plain.window.bias is None and plain.window.extra_bias is None
    assert plain.scratch_bytes_per_vector() == 4 * (1 + 1 + 1) * plain.window.window


def test_duplicate_codes_on_a_1024_circle_keep_the_better_bias():
    """d = 2 with a bias: a code repeated with a bias 8 fp32 ulps (~2.4e-7) higher, inside the bias
    band, must be kept and chosen, not the lower id."""
    angles = np.linspace(-math.pi, math.pi, 1024, endpoint=False) + 1e-3
    codes = _unit_f32(angles)
    bias = np.full(1024, F32(-0.25))
    codes = np.concatenate([codes, codes[100:101]])
    bias = np.concatenate([bias, _ulps(np.array([-0.25]), 8)]).astype(F32)
    plan = plan_lookup(codes, bias, "l2", 65536)
    assert plan.method == "window", plan.reason
    vectors = np.concatenate([codes[100:101] * 3, _unit_f32(angles[95:106] + 1e-4)])
    with torch.no_grad():
        chosen = WindowLookup(plan.window, "l2", len(codes))(torch.from_numpy(vectors)).numpy()
    u = reference_normalize(vectors, "l2")
    assert (chosen == _brute_force_codes(codes, bias, u)).all() and chosen[0] == 1024


@pytest.mark.parametrize("normalization", ["l2", "l1", "clip", "none"])
def test_graph_normalize_is_normalize_vectors_on_1024_vectors(normalization):
    """The graph's normalisation equals gsq_core.lookup.normalize_vectors exactly, along the last
    axis of a [2, 512, 2] batch that holds zero, tiny, short and long vectors."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1024, 2)) * rng.choice([1e-14, 1e-3, 0.3, 1.0, 40.0], (1024, 1))).astype(F32)
    x[:8] = 0.0
    x = torch.from_numpy(x.reshape(2, 512, 2))
    expected = normalize_vectors(x, normalization)
    got = graph_normalize(x, normalization)
    assert got.shape == x.shape and torch.equal(got, expected)
    if normalization != "none":
        assert not torch.equal(got, x)


def test_plan_facts_say_why_a_lookup_is_dense_or_windowed():
    """Each dense reason names its cause; a window's reason counts the codes off the circle only when
    there are some; torch parameters (with grad) are read like arrays."""
    circle = _unit_f32(np.linspace(-math.pi, math.pi, 64, endpoint=False))
    cases = [
        (np.zeros((8, 3), F32), None, "l2", "group dim d = 3: the window lookup serves d <= 2"),
        (circle, None, "clip", "d = 2 with 'clip' normalisation: the window lookup needs l2 (codes on a circle)"),
        (np.where(np.arange(64)[:, None] == 5, np.nan, circle).astype(F32), None, "l2", "the codebook holds non-finite values"),
        (circle, np.where(np.arange(64) == 5, np.inf, 0.0).astype(F32), "l2", "the codebook holds non-finite values"),
    ]
    for weight, bias, normalization, reason in cases:
        plan = plan_lookup(weight, bias, normalization, 65536)
        assert plan.method == "dense" and plan.reason == reason and plan.num_embed == len(weight), plan.reason
    parameter = torch.nn.Parameter(torch.from_numpy(circle))
    bias = torch.nn.Parameter(torch.zeros(64))
    plain = plan_lookup(parameter, bias, "l2", 65536)
    assert plain.method == "window" and plain.num_embed == 64 and "off the circle" not in plain.reason
    assert plain.reason == f"every one of {plain.window.cells} cells has a proven window of <= {plain.window.window} sorted codes"
    with_extra = plan_lookup(np.concatenate([circle, np.zeros((2, 2), F32)]), None, "l2", 65536)
    assert with_extra.reason.endswith(" (plus 2 code(s) off the circle, scored for every vector)")
    assert with_extra.manifest_facts()["reason"] == with_extra.reason
    assert with_extra.window.gap_bound < 1e-6  # no bias: the radius spread alone
    sixteen = plan_lookup(np.concatenate([circle, np.zeros((16, 2), F32)]), None, "l2", 65536)
    assert sixteen.method == "window" and sixteen.reason.endswith("(plus 16 code(s) off the circle, scored for every vector)")
    off = plan_lookup(2 * circle, None, "l2", 65536)
    assert off.method == "dense" and off.reason == "no code lies on the unit circle"
    # a bias: codes off the circle stay extra whatever their bias; the bias spread counts in the gap
    # bound; a zero vector gets the lowest id of the best bias
    biased = np.where(np.arange(66) % 2 == 1, F32(2e-7), F32(0)).astype(F32)
    biased[7] = F32(3e-7)
    plan = plan_lookup(np.concatenate([circle, np.zeros((2, 2), F32)]), biased, "l2", 65536)
    assert plan.method == "window" and plan.window.extra_index.tolist() == [64.0, 65.0]
    assert plan.window.gap_bound >= float(np.ptp(biased[:64].astype(np.float64))) and plan.window.zero_code == 7
    capped = plan_lookup(circle, None, "l2", 65536, window_max=2)
    uncapped = plan_lookup(circle, None, "l2", 65536).window
    assert capped.method == "dense" and capped.reason == (
        f"no window of <= 2 codes is proven for every cell (the best grid, {uncapped.cells} cells, needs {uncapped.window})"
    )
