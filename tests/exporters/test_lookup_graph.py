"""The window lookup inside the exported graphs (exporters.lookup_graph), run in real ONNX Runtime and
OpenVINO sessions: optimal codes against a float64 brute force on hostile codebooks, lowest index on
exact ties, the dense fallback where no window is proven, and the default model's tokenize graph."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tests.conftest import tiny_gsq_model

from gsq_deploy.exporters.graphs import lookup_bias
from gsq_deploy.exporters.lookup_graph import EXTRA_MAX, WINDOW_MAX, plan_lookup
from gsq_deploy.exporters.onnx import export_onnx
from gsq_deploy.exporters.onnx_precision import lookup_node_names
from gsq_core import QuantizerConfig, TokenizerConfig, build_tokenizer, load_tokenizer
from gsq_core.fidelity import latent_to_vectors, score_gaps
from gsq_core.model import GSQTokenizer
from gsq_deploy.runtimes.artifacts import Artifact
from gsq_deploy.runtimes.onnx import OnnxRuntime

GROUPS = 4
# The proven bound is the codebook's radius/bias spread (~2e-7) plus fp32 rounding; validation allows
# 1e-5. Tests hold the graphs to the tighter figure so that a window that misses the best code by a
# small margin still shows.
GAP = 2e-6
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
BACKENDS = ["onnxruntime", pytest.param("openvino", marks=needs_openvino)]


def tiny_model(codebook: np.ndarray, normalization: str) -> GSQTokenizer:
    """A small GSQ tokenizer whose codebook is `codebook` [V, d] and whose lookup normalises as asked."""
    num_embed, dim = codebook.shape
    quantizer = QuantizerConfig(
        quantize_type="gsq",
        num_embed=num_embed,
        embed_dim=GROUPS * dim,
        num_group=GROUPS,
        use_l2_norm=normalization == "l2",
        use_uniform_init=normalization == "clip",
        force_1d_clip=normalization == "clip",
    )
    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1,),
        encoder_layer_configs=(0, 0),
        decoder_layer_configs=(0, 0),
        embedding_dim=GROUPS * dim,
        quantizer=quantizer,
    )
    model = GSQTokenizer(config).eval()
    assert model.quantizer.config.lookup_normalization == normalization
    with torch.no_grad():
        model.quantizer.codebook.weight.copy_(torch.from_numpy(codebook))
    return model


def _unit(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, 2))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def circle_codebook(kind: str) -> np.ndarray:
    """d = 2 raw codebooks (the lookup l2-normalises them)."""
    rng = np.random.default_rng(7)
    if kind == "random":
        return rng.standard_normal((512, 2)).astype(np.float32)
    if kind == "clustered":  # 8 tight clusters of 64 codes (1e-3 rad) and a few loners
        centres = rng.uniform(-np.pi, np.pi, 8)
        angles = (centres[:, None] + rng.normal(0, 1e-3, (8, 64))).reshape(-1)
        angles = np.concatenate([angles, rng.uniform(-np.pi, np.pi, 6)])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    if kind == "duplicated":  # exact copies at higher and lower ids, and scaled copies (same direction)
        base = rng.standard_normal((200, 2)).astype(np.float32)
        return np.concatenate([base[100:150], base, base[:100], 3 * base[:50]]).astype(np.float32)
    if kind == "off_circle":  # raw radii 1e-3..1e3, rows below the normalisation epsilon, zero rows
        codes = rng.standard_normal((400, 2)) * np.exp(rng.uniform(-7, 7, (400, 1)))
        codes[[5, 77, 300]] = rng.standard_normal((3, 2)) * 1e-14  # normalised to radius ~0.01
        codes[[10, 11]] = 0.0
        return codes.astype(np.float32)
    if kind == "zero_rows":
        codes = rng.standard_normal((256, 2)).astype(np.float32)
        codes[[0, 17, 255]] = 0.0
        return codes
    if kind == "half_circle":  # codes only on y >= 0: the far side's best code is 90+ degrees away
        codes = _unit(rng, 300)
        codes[:, 1] = np.abs(codes[:, 1])
        return codes
    raise ValueError(kind)


def line_codebook(kind: str) -> np.ndarray:
    """d = 1 raw codebooks."""
    rng = np.random.default_rng(11)
    if kind == "random":
        return rng.uniform(-1.5, 1.5, (700, 1)).astype(np.float32)
    if kind == "clustered":
        return (rng.choice([-0.7, 0.1, 0.9], 600)[:, None] + rng.normal(0, 1e-4, (600, 1))).astype(np.float32)
    if kind == "duplicated":
        base = rng.uniform(-1, 1, (150, 1)).astype(np.float32)
        return np.concatenate([base[50:], base, base]).astype(np.float32)
    if kind == "zero_rows":
        codes = rng.uniform(-1, 1, (300, 1)).astype(np.float32)
        codes[[3, 4, 200]] = 0.0
        return codes
    raise ValueError(kind)


def circle_probes(codebook: np.ndarray) -> np.ndarray:
    """Vectors where a lookup goes wrong first: code directions, bisectors of neighbouring codes (near
    ties), the axes and diagonals with signed zeros, the zero vector, tiny and huge vectors, noise."""
    rng = np.random.default_rng(3)
    radius = np.linalg.norm(codebook.astype(np.float64), axis=1)
    units = codebook[radius > 1e-12] / radius[radius > 1e-12, None]
    order = np.argsort(np.arctan2(units[:, 1], units[:, 0]))
    sorted_units = units[order]
    bisectors = sorted_units + np.roll(sorted_units, -1, axis=0)
    special = np.array(
        [[0, 0], [0, 1], [-0.0, 1], [1, 0], [1, -0.0], [0, -1], [-0.0, -1], [-1, 0], [-1, -0.0], [1, 1], [-1, 1],
         [1, -1], [-1, -1], [3e-13, -4e-13], [1e18, -1e18], [0, 0], [1e-39, 1e-39], [-2.5, 2.5]]
    )
    noise = rng.standard_normal((2000, 2))
    vectors = np.concatenate([units * rng.uniform(0.1, 10, (len(units), 1)), bisectors, special, noise])
    return _pad_to_groups(vectors)


def line_probes(codebook: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(5)
    values = np.sort(codebook[:, 0].astype(np.float64))
    midpoints = (values[1:] + values[:-1]) / 2
    special = np.array([0.0, -0.0, 1e-13, -1e-13, 1e6, -1e6, 1.0, -1.0, values[0] - 1, values[-1] + 1])
    noise = rng.standard_normal(2000) * 1.5
    vectors = np.concatenate([values, midpoints, special, noise])[:, None]
    return _pad_to_groups(vectors)


def _pad_to_groups(vectors: np.ndarray) -> np.ndarray:
    extra = (-len(vectors)) % GROUPS
    return np.concatenate([vectors, vectors[:extra]]).astype(np.float32)


def as_latent(vectors: np.ndarray) -> np.ndarray:
    """[N, d] vectors -> latent [1, G*d, 1, N/G] whose token order is the vectors' order."""
    count, dim = vectors.shape
    return np.ascontiguousarray(vectors.reshape(1, 1, count // GROUPS, GROUPS * dim).transpose(0, 3, 1, 2))


def brute_force_scores(model: GSQTokenizer, latent: np.ndarray) -> np.ndarray:
    """Float64 scores [N, V] of the lookup's own objective: normalize(x) . w + b of its fp32 tables."""
    tables = model.quantizer.lookup_tables()
    vectors = torch.from_numpy(latent_to_vectors(latent, GROUPS))
    from gsq_core.lookup import normalize_vectors

    u = normalize_vectors(vectors, tables.normalization).numpy()
    scores = u @ tables.weight.double().numpy().T
    if tables.bias is not None:
        scores = scores + tables.bias.double().numpy()
    return scores


@lru_cache(maxsize=None)
def exported_quantizer(dim: int, kind: str, normalization: str, root: str) -> tuple[GSQTokenizer, Path, dict]:
    codebook = circle_codebook(kind) if dim == 2 else line_codebook(kind)
    model = tiny_model(codebook, normalization)
    out = Path(root) / f"d{dim}-{kind}-{normalization}"
    manifest = export_onnx(model, out, graphs=("quantizer",), validate=False, progress=False)
    return model, out, manifest


def run_quantizer(backend: str, artifact: Path, latent: np.ndarray) -> np.ndarray:
    """The quantizer graph through runtimes.onnx, or compiled by OpenVINO as runtimes.openvino compiles."""
    if backend == "onnxruntime":
        return OnnxRuntime(artifact, threads=2).run_graph("quantizer", latent)
    from gsq_deploy.runtimes.openvino import compile_graph

    compiled = compile_graph(artifact / "quantizer.onnx", "CPU", "f32", 2)
    return np.array(compiled({compiled.input(0): latent})[compiled.output(0)])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lookup-graphs"))


def check_optimal(model: GSQTokenizer, latent: np.ndarray, codes: np.ndarray) -> None:
    """Every code within GAP of the float64 best; no exact duplicate of a lower id chosen; the zero vector
    gets the lowest id of the best bias the graph scores with (exporters.graphs.lookup_bias: none when
    every normalised code has the same -1/2, up to rounding)."""
    scores = brute_force_scores(model, latent)
    chosen = codes.reshape(-1)
    assert codes.dtype == np.int64 and chosen.min() >= 0 and chosen.max() < model.num_embed
    gaps = scores.max(axis=1) - scores[np.arange(len(chosen)), chosen]
    assert gaps.max() <= GAP, f"score gap {gaps.max():.3g} at vector {int(gaps.argmax())}"
    rows = model.quantizer.lookup_tables().weight.numpy()
    graph_bias = lookup_bias(model)
    bias = graph_bias.numpy() if graph_bias is not None else np.zeros(len(rows), np.float32)
    for code in np.unique(chosen):
        twins = np.flatnonzero((rows == rows[code]).all(axis=1) & (bias == bias[code]))
        assert twins[0] == code, f"chose code {code}, an exact copy of the lower code {twins[0]}"
    vectors = latent_to_vectors(latent, GROUPS)
    zero = ~vectors.any(axis=1)
    if zero.any():
        assert (chosen[zero] == int(np.flatnonzero(bias == bias.max())[0])).all()


CIRCLE_KINDS = ["random", "clustered", "duplicated", "off_circle", "zero_rows", "half_circle"]
LINE_CASES = [(kind, norm) for kind in ("random", "clustered", "duplicated", "zero_rows") for norm in ("clip", "none")]
LINE_CASES += [("random", "l2")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CIRCLE_KINDS)
def test_circle_window_lookup_picks_optimal_codes(kind, backend, root):
    model, artifact, manifest = exported_quantizer(2, kind, "l2", root)
    assert manifest["lookup"]["method"] == "window", manifest["lookup"]["reason"]
    latent = as_latent(circle_probes(model.quantizer.codebook.weight.detach().numpy()))
    check_optimal(model, latent, run_quantizer(backend, artifact, latent))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, normalization", LINE_CASES)
def test_line_window_lookup_picks_optimal_codes(kind, normalization, backend, root):
    model, artifact, manifest = exported_quantizer(1, kind, normalization, root)
    assert manifest["lookup"]["method"] == "window", manifest["lookup"]["reason"]
    latent = as_latent(line_probes(model.quantizer.codebook.weight.detach().numpy()))
    check_optimal(model, latent, run_quantizer(backend, artifact, latent))


def test_manifest_states_the_window_plan_in_plain_values(root):
    _, artifact, manifest = exported_quantizer(2, "off_circle", "l2", root)
    lookup = json.loads((artifact / "manifest.json").read_text())["lookup"]
    assert lookup == manifest["lookup"]
    assert lookup["method"] == "window" and lookup["extra_codes"] == 5 and lookup["bias"] is True
    assert 1 <= lookup["window"] <= WINDOW_MAX and lookup["cells"] >= 8
    assert 0 < lookup["gap_bound"] < 1e-6
    assert lookup["scratch_bytes_per_vector"] == Artifact(artifact, manifest).lookup_scratch_bytes_per_vector < 1024
    assert "code_blocks" not in lookup  # a dense-only fact
    for value in lookup.values():
        assert isinstance(value, (bool, int, float, str))
    ops = Counter(node.op_type for node in onnx.load(str(artifact / "quantizer.onnx")).graph.node)
    assert ops["ArgMax"] == 0 and ops["ReduceMin"] == 1 and ops["Gather"] >= 4
    assert "Atan" not in ops and not any(node.domain not in ("", "ai.onnx") for node in onnx.load(
        str(artifact / "quantizer.onnx")).graph.node)


def _dense_cases() -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(1)
    crowded = rng.standard_normal((300, 2)).astype(np.float32)
    # 100 distinct codes within 1e-5 rad of one direction: no grid cell can separate them
    angles = 0.3 + np.arange(100) * 1e-7
    crowded[:100] = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    zeros = rng.standard_normal((300, 2)).astype(np.float32)
    zeros[: EXTRA_MAX + 4] = 0.0
    return {"crowded": (crowded, f"no window of <= {WINDOW_MAX}"), "zero_rows": (zeros, "off the unit circle")}


@pytest.mark.parametrize("case", ["crowded", "zero_rows"])
def test_codebook_without_a_proven_window_keeps_the_dense_lookup(case, tmp_path):
    codebook, reason = _dense_cases()[case]
    model = tiny_model(codebook, "l2")
    manifest = export_onnx(model, tmp_path / case, graphs=("quantizer",), validate=False, progress=False)
    lookup = manifest["lookup"]
    assert lookup["method"] == "dense" and reason in lookup["reason"], lookup
    assert "window" not in lookup and lookup["scratch_bytes_per_vector"] == 4 * model.num_embed
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / case / "quantizer.onnx")).graph.node)
    assert ops["MatMul"] == 1 and ops["ArgMax"] == 1
    latent = as_latent(circle_probes(codebook))
    scores = brute_force_scores(model, latent)
    codes = OnnxRuntime(tmp_path / case, threads=2).run_graph("quantizer", latent).reshape(-1)
    assert (scores.max(axis=1) - scores[np.arange(len(codes)), codes]).max() <= 1e-5


def test_plan_refuses_what_it_cannot_prove():
    rng = np.random.default_rng(0)
    assert plan_lookup(rng.standard_normal((64, 4)).astype(np.float32), None, "l2", 1024).method == "dense"
    plan = plan_lookup(rng.standard_normal((64, 2)).astype(np.float32), None, "none", 1024)
    assert plan.method == "dense" and "l2" in plan.reason
    # d = 1 dot-product scores (no bias, values of many magnitudes) are not distances: dense
    plan = plan_lookup(rng.uniform(-1, 1, (64, 1)).astype(np.float32), None, "none", 1024)
    assert plan.method == "dense" and "not distances" in plan.reason
    # a single distinct value: one cell, one code
    plan = plan_lookup(np.full((8, 1), 0.25, np.float32), np.full(8, -0.03125, np.float32), "clip", 1024)
    assert plan.method == "window" and plan.window.window == 1 and plan.window.cells == 1


def test_dense_lookup_on_request_and_old_manifests(tmp_path):
    model = tiny_model(circle_codebook("random"), "l2")
    manifest = export_onnx(
        model, tmp_path / "dense", graphs=("quantizer",), validate=False, progress=False, lookup="dense"
    )
    assert manifest["lookup"]["method"] == "dense" and manifest["lookup"]["code_blocks"] == 1
    old = {"num_embed": 512, "lookup": {"code_block": 65536}}  # written before the field existed
    assert Artifact(tmp_path, old).lookup_scratch_bytes_per_vector == 4 * 512


def test_lookup_nodes_of_the_window_are_found_for_reduced_precision(root):
    _, artifact, _ = exported_quantizer(2, "random", "l2", root)
    proto = onnx.load(str(artifact / "quantizer.onnx"))
    assert lookup_node_names("quantizer", proto) == [node.name for node in proto.graph.node]


@pytest.fixture(scope="module")
def default_tokenize(tmp_path_factory):
    model = load_tokenizer("default")
    out = tmp_path_factory.mktemp("default") / "onnx"
    manifest = export_onnx(model, out, graphs=("tokenize",), progress=False)  # validated on scikit-image photos
    return model, out, manifest


def test_default_model_tokenize_graph_matches_eager_on_photos(default_tokenize):
    from gsq_deploy.exporters.calibration import fit_to_size, sample_photos

    model, out, manifest = default_tokenize
    assert manifest["lookup"]["method"] == "window" and manifest["validation"]["passed"]
    proto = onnx.load(str(out / "tokenize.onnx"))
    window_nodes = lookup_node_names("tokenize", proto)
    assert {"Gather", "ReduceMax", "ReduceMin"} <= {n.op_type for n in proto.graph.node if n.name in window_nodes}
    assert not any(n.op_type in ("Conv", "MatMul", "ArgMax") for n in proto.graph.node if n.name in window_nodes)
    images = np.stack([fit_to_size(pixels, 256, 256) for _, pixels in sample_photos()])
    codes = OnnxRuntime(out, threads=2).encode(images)
    with torch.no_grad():
        latent = model.encode_latent(torch.from_numpy(images)).numpy()
        eager = model.quantizer.codes(torch.from_numpy(latent)).numpy()
    differing = codes != eager
    assert differing.mean() < 0.01
    gaps = score_gaps(latent, codes, model.quantizer.lookup_spec())
    assert gaps.max() <= 1e-5 and gaps.reshape(codes.shape)[differing].max(initial=0.0) <= 1e-5


def test_default_model_lookup_plan_is_small():
    plan = plan_lookup(*_default_tables(), 65536)
    assert plan.method == "window" and plan.window.window <= 8 and plan.scratch_bytes_per_vector() <= 128


def _default_tables():
    model = load_tokenizer("default")
    tables = model.quantizer.lookup_tables()
    return tables.weight, lookup_bias(model), tables.normalization


def test_window_lookup_builds_for_the_largest_preset_codebook():
    """V = 262,144 on the circle (gsq-f16-d16-g8-v256k's random init): proven windows, tables of a few MB."""
    model = build_tokenizer("gsq-f16-d16-g8-v256k", seed=0)
    tables = model.quantizer.lookup_tables()
    plan = plan_lookup(tables.weight, None, "l2", 65536)
    assert plan.method == "window", plan.reason
    assert plan.window.window <= 32 and plan.window.table_bytes < 32 * 2**20


@pytest.mark.parametrize("dim, kind", [(1, "random"), (1, "clustered"), (2, "random"), (2, "clustered"), (2, "half_circle")])
def test_every_cell_window_holds_the_nearest_code(dim, kind):
    """Cell by cell (not only the longest window): for vectors at and around cell edges and codes, the
    code nearest in angle (value) lies in the window of the cell the graph's own fp32 key gives."""
    from gsq_deploy.exporters.lookup_graph import WindowLookup, _best_grid, _circle_analysis, _line_analysis

    normalization = "l2" if dim == 2 else "clip"
    model = tiny_model(circle_codebook(kind) if dim == 2 else line_codebook(kind), normalization)
    tables = model.quantizer.lookup_tables()
    weight, bias = tables.weight.numpy(), lookup_bias(model)
    bias = bias.numpy() if bias is not None else None
    analysis = _circle_analysis(weight, bias) if dim == 2 else _line_analysis(weight, bias)
    grid = _best_grid(analysis)
    plan = plan_lookup(weight, bias, normalization, 65536)
    module = WindowLookup(plan.window, normalization, model.num_embed)
    assert plan.window.cells == grid.cells
    rng = np.random.default_rng(2)
    keys = analysis.keys
    if dim == 2:
        edges = np.concatenate([keys, (keys + np.roll(keys, -1)) / 2, rng.uniform(-np.pi, np.pi, 4000)])
        edges = np.concatenate([edges + offset for offset in (-1e-7, 0.0, 1e-7)])
        vectors = np.stack([np.cos(edges), np.sin(edges)], axis=1).astype(np.float32)
        angle = np.arctan2(vectors[:, 1].astype(np.float64), vectors[:, 0].astype(np.float64))
        distance = np.abs(np.mod(angle[:, None] - keys[None, :] + np.pi, 2 * np.pi) - np.pi)
    else:
        edges = np.concatenate([keys, (keys[1:] + keys[:-1]) / 2, rng.uniform(-1.2, 1.2, 4000)])
        vectors = np.concatenate([edges + offset for offset in (-1e-7, 0.0, 1e-7)])[:, None].astype(np.float32)
        vectors = np.clip(vectors, -1, 1)
        distance = np.abs(vectors.astype(np.float64) - keys[None, :])
    with torch.no_grad():
        cells, _ = module.cell_of([torch.from_numpy(vectors[:, k]) for k in range(dim)])
    cells = cells.numpy()
    nearest = distance.argmin(axis=1)
    offset_in_window = np.mod(nearest - grid.start[cells], len(keys)) if dim == 2 else nearest - grid.start[cells]
    assert (offset_in_window >= 0).all() and (offset_in_window < grid.count[cells]).all()


@pytest.mark.skipif(importlib.util.find_spec("onnxconverter_common") is None, reason="onnxconverter-common is not installed")
def test_fp16_tokenize_keeps_the_window_lookup_values_fp32(tmp_path):
    """Between two lookup nodes no value is rounded to fp16 (the converter's Cast pairs are removed),
    and the converted graph's tokens on a latent-exact path equal the fp32 graph's."""
    from gsq_deploy.exporters.onnx_precision import FLOAT16, convert_fp16

    model = tiny_gsq_model()
    export_onnx(model, tmp_path / "fp32", graphs=("tokenize",), validate=False, progress=False)
    source = onnx.load(str(tmp_path / "fp32" / "tokenize.onnx"))
    keep = set(lookup_node_names("tokenize", source))
    converted = convert_fp16(source, keep)
    producer = {name: node for node in converted.graph.node for name in node.output}
    for node in (node for node in converted.graph.node if node.name in keep):
        for name in node.input:
            casts_to = []  # walk back through the Casts the converter may have put in between
            source = producer.get(name)
            while source is not None and source.op_type == "Cast" and source.name not in keep:
                casts_to += [attribute.i for attribute in source.attribute if attribute.name == "to"]
                source = producer.get(source.input[0])
            if source is not None and source.name in keep:
                assert FLOAT16 not in casts_to, f"{node.name} reads {source.name}'s output rounded to fp16"
    assert any(
        init.data_type == FLOAT16 for init in converted.graph.initializer
    ), "nothing was converted to fp16"
    onnx.save(converted, str(tmp_path / "fp16.onnx"))
    import onnxruntime

    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
    codes = onnxruntime.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": images}
    )[0]
    with torch.no_grad():
        latent = model.encode_latent(torch.from_numpy(images)).numpy()
    # the fp16 encoder moves the latent; the lookup must still pick near-optimal codes for it
    assert score_gaps(latent, codes, model.quantizer.lookup_spec()).max() < 5e-2


def test_lookup_region_is_refused_when_its_scope_or_ops_are_missing(default_tokenize):
    """The rule that keeps the lookup fp32 in reduced precisions: the nodes under /quantizer/ must hold
    one lookup form's ops; a renamed scope or a lookup without its reductions is an error, not fp16."""
    from gsq_deploy.exporters import ExportError

    _, out, _ = default_tokenize
    renamed = onnx.load(str(out / "tokenize.onnx"))
    for node in renamed.graph.node:
        node.name = node.name.replace("/quantizer/", "/q/")
    with pytest.raises(ExportError, match="could not find the quantizer lookup"):
        lookup_node_names("tokenize", renamed)
    no_reduction = onnx.load(str(out / "tokenize.onnx"))
    for node in no_reduction.graph.node:
        if node.name.startswith("/quantizer/") and node.op_type == "ReduceMin":
            node.op_type = "ReduceMean"
    with pytest.raises(ExportError, match="Gather \\+ ReduceMax \\+ ReduceMin"):
        lookup_node_names("tokenize", no_reduction)
