"""TensorRT: the graphs are checked statically on CPU (ops, dtypes, shapes, the int32 codes boundary);
without TensorRT or a CUDA GPU the target and the runtime refuse in one line; with both, engines
are built and run on the conformance vectors (those tests skip here with the reason)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
from tests.conftest import (
    CONFORMANCE_MODELS, CONFORMANCE_SIZES, FLEXGEN, REPO, assert_one_line_error, expected_vectors, run_module,
)
from onnx import TensorProto, helper
from tests.targets_support import FP16, FP32_GRAPHS, eager, fp32_onnx, reduced_onnx

from gsq_deploy.exporters import ExportError
from gsq_deploy.exporters.tensorrt import ProfileShapes, input_shapes
from gsq_deploy.exporters.tensorrt_compat import prepare_for_tensorrt, tensorrt_problems
from gsq_core.fidelity import score_gaps
from gsq_deploy.runtimes import load_runtime
from gsq_deploy.runtimes.artifacts import ArtifactError, BackendUnavailableError
from gsq_deploy.runtimes.trt import check_engine_compatibility, missing_requirements

MISSING = missing_requirements()
needs_tensorrt = pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING) or "TensorRT available")
no_tensorrt = pytest.mark.skipif(not MISSING, reason="TensorRT and a CUDA GPU are available")


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
@pytest.mark.parametrize("graph", FP32_GRAPHS)
def test_fp32_graphs_are_tensorrt_compatible_after_the_codes_cast(name, graph):
    proto = onnx.load(str(fp32_onnx(name) / f"{graph}.onnx"))
    problems = tensorrt_problems(proto)
    assert problems == ["graph I/O codes is int64; cast it to int32 at the boundary (prepare_for_tensorrt)"]
    prepared = prepare_for_tensorrt(proto)
    assert tensorrt_problems(prepared) == []
    io_types = {
        value.name: value.type.tensor_type.elem_type
        for value in list(prepared.graph.input) + list(prepared.graph.output)
    }
    assert io_types["codes"] == TensorProto.INT32
    for value in list(prepared.graph.input):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"  # dynamic: optimization profiles cover it


@pytest.mark.parametrize("precision", [FP16, "int8"])
@pytest.mark.parametrize("graph", ["tokenize", "detokenize"])
def test_reduced_graphs_are_tensorrt_compatible(precision, graph):
    proto = onnx.load(str(reduced_onnx(CONFORMANCE_MODELS[0], precision) / f"{graph}.onnx"))
    assert tensorrt_problems(prepare_for_tensorrt(proto)) == []


def test_the_int32_boundary_computes_the_same_tokens_and_images():
    name = CONFORMANCE_MODELS[0]
    vectors = expected_vectors(name)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    for graph, feed, reference in (
        ("tokenize", vectors["input_64x64"], vectors["codes_64x64"]),
        ("detokenize", vectors["codes_64x64"].astype(np.int32), None),
    ):
        prepared = prepare_for_tensorrt(onnx.load(str(fp32_onnx(name) / f"{graph}.onnx")))
        session = onnxruntime.InferenceSession(
            prepared.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        output = session.run(None, {session.get_inputs()[0].name: feed})[0]
        if reference is not None:
            assert output.dtype == np.int32 and (output == reference).all()
        else:
            assert np.abs(output - vectors["recon_64x64"]).max() <= 2e-3


def test_the_static_check_finds_what_tensorrt_rejects():
    values = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 4])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])
    nodes = [
        helper.make_node("ArgMax", ["x"], ["i"], name="argmax", axis=1, keepdims=0, select_last_index=1),
        helper.make_node("Det", ["x"], ["d"], name="det"),
        helper.make_node("Identity", ["i"], ["y"], name="identity"),
    ]
    graph = helper.make_graph(
        nodes, "bad", [values], [out], value_info=[helper.make_tensor_value_info("d", TensorProto.DOUBLE, [])]
    )
    problems = " | ".join(tensorrt_problems(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    assert (
        "float64" in problems and "op Det" in problems and "select_last_index" in problems and "y is int64" in problems
    )


def test_profile_shapes_are_checked():
    profile = ProfileShapes.parse("1x64x64", "2x128x128", "4x256x256", 8)
    assert profile.to_dict() == {"min": [1, 64, 64], "opt": [2, 128, 128], "max": [4, 256, 256]}
    entry = {"inputs": [{"name": "codes", "dtype": "int64", "shape": ["batch", "token_height", "token_width", 4]}]}
    assert input_shapes(entry, profile.max, 8) == [4, 32, 32, 4]
    with pytest.raises(ExportError, match="multiples of 8"):
        ProfileShapes.parse("1x60x64", None, None, 8)
    with pytest.raises(ExportError, match="min <= opt <= max"):
        ProfileShapes.parse("4x64x64", "1x64x64", "8x64x64", 8)
    with pytest.raises(ExportError, match="BxHxW"):
        ProfileShapes.parse("64x64", None, None, 8)


def test_engines_from_another_gpu_or_version_are_refused():
    recorded = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "version": "10.3.0"}
    check_engine_compatibility(recorded, "NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "m")
    with pytest.raises(ArtifactError, match="built for NVIDIA H100 80GB HBM3"):
        check_engine_compatibility(recorded, "NVIDIA L4", "8.9", "10.3.0", "m")
    with pytest.raises(ArtifactError, match="built with TensorRT 10.3.0"):
        check_engine_compatibility(recorded, "NVIDIA H100 80GB HBM3", "9.0", "10.7.0", "m")


@no_tensorrt
def test_trt_target_refuses_in_one_line(tmp_path):
    result = run_module(
        "exporters", "--ckpt", str(FLEXGEN / "gsq_f8_magvit.pt"), "--target", "trt", "--out", str(tmp_path / "trt")
    )
    assert_one_line_error(result, "--target trt needs TensorRT and a CUDA GPU", "pip install 'gsq-deploy[trt]'")
    assert not (tmp_path / "trt").exists()
    result = run_module(
        "exporters", "--ckpt", str(FLEXGEN / "gsq_f8_magvit.pt"), "--target", "triton",
        "--triton-backend", "tensorrt", "--out", str(tmp_path / "triton"),
    )  # fmt: skip
    assert_one_line_error(result, "--triton-backend tensorrt needs TensorRT and a CUDA GPU")


@no_tensorrt
def test_trt_runtime_and_gpu_providers_refuse_in_one_line(tmp_path):
    fake = tmp_path / "trt-artifact"
    shutil.copytree(fp32_onnx(CONFORMANCE_MODELS[0]), fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["target"] = "trt"
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="needs TensorRT and a CUDA GPU"):
        load_runtime("trt", fake)
    image = str(FLEXGEN / "gsq_f8_magvit_images" / "64x64_0.png")
    result = run_module("runtimes.trt", "encode", "--model", str(fake), "--output", str(tmp_path / "t.npz"), image)
    assert_one_line_error(result, "pip install 'gsq-deploy[trt]'")
    for provider in ("cuda", "tensorrt"):
        result = run_module(
            "runtimes.onnx",
            "encode",
            "--model",
            str(fp32_onnx(CONFORMANCE_MODELS[0])),
            "--provider",
            provider,
            "--output",
            str(tmp_path / "t.npz"),
            image,
        )
        assert_one_line_error(result, "not available", "onnxruntime-gpu")


# -- on a machine with TensorRT and a CUDA GPU ----------------------------------------------------
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_pick_optimal_codes_on_the_conformance_vectors(precision, tmp_path):
    from gsq_deploy.exporters.build import ExportOptions, convert
    from gsq_deploy.exporters.precision import PrecisionPlan
    from gsq_deploy.exporters.tensorrt import TensorRTOptions

    name = CONFORMANCE_MODELS[0]
    out = tmp_path / f"trt-{precision}"
    profile = TensorRTOptions(min_shape="1x64x64", opt_shape="3x64x64", max_shape="4x128x128")
    options = ExportOptions(
        precision=PrecisionPlan.parse(precision), calib_images=FLEXGEN / f"{name}_images", progress=False,
        target_options=(profile,),
    )
    manifest = convert(eager(name), fp32_onnx(name), out, "trt", options)
    assert (
        manifest["tensorrt"]["gpu"] and manifest["tensorrt"]["compute_capability"] and manifest["validation"]["passed"]
    )
    assert manifest["validation"]["graphs"]["quantizer"]["max_score_gap"] <= 1e-5
    if precision != "fp32":
        assert all(
            entry["fp32_layers"] > 0
            for graph, entry in manifest["graphs"].items()
            if graph in ("quantizer", "tokenize")
        )
    runtime = load_runtime("trt", out)
    vectors = expected_vectors(name)
    spec = eager(name).quantizer.lookup_spec()
    for size in CONFORMANCE_SIZES:
        codes = runtime.encode(vectors[f"input_{size}"])
        assert codes.dtype == np.int64 and codes.shape == vectors[f"codes_{size}"].shape
        gaps = score_gaps(vectors[f"latent_{size}"], codes, spec)
        if precision == "fp32":
            assert gaps.max() <= 1e-5
        else:
            assert (codes == vectors[f"codes_{size}"]).mean() > 0.9
        recon = runtime.decode(vectors[f"codes_{size}"])
        assert np.abs(recon - vectors[f"recon_{size}"]).max() <= (2e-3 if precision == "fp32" else 0.1)


def test_trt_runtime_splits_batches_to_fit_the_profile():
    from types import SimpleNamespace

    from gsq_core.errors import InputError
    from gsq_deploy.runtimes.trt import TrtRuntime

    runtime = TrtRuntime.__new__(TrtRuntime)  # the chunking alone: no engine, no GPU
    profile = {"min": [2, 3, 64, 64], "max": [4, 3, 128, 128]}
    runtime.artifact = SimpleNamespace(graphs={"tokenize": {"profile": profile}})
    chunks = []

    def run_chunk(name, entry, value):
        chunks.append(value.shape[0])
        return value[:, 0, 0, 0] + 0  # one number per item, to check order and padding

    runtime._run_chunk = run_chunk
    images = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 3, 64, 64), np.float32)
    out = runtime.run_graph("tokenize", images)
    assert chunks == [4, 2] and out.tolist() == [0, 1, 2, 3, 4]  # last chunk of 1 padded to the min batch 2
    with pytest.raises(InputError, match="outside the tokenize engine's profile"):
        runtime.run_graph("tokenize", np.zeros((1, 3, 256, 64), np.float32))


# -- Polygraphy's loaders, without TensorRT: the wiring and the fp32 pinning, with stand-ins -------
needs_polygraphy = pytest.mark.skipif(
    importlib.util.find_spec("polygraphy") is None, reason="polygraphy is not installed (pip install 'gsq-deploy[dev]')"
)
FAKE_TRT = SimpleNamespace(
    float32="fp32",
    float16="fp16",
    bfloat16="bf16",
    int32="int32",
    LayerType=SimpleNamespace(CONSTANT="constant", CONVOLUTION="conv", MATRIX_MULTIPLY="matmul", TOPK="topk"),
    MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
)


class FakeTensor:
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class FakeLayer:
    """The slice of trt.ILayer that LookupPins reads and writes."""

    def __init__(self, name, kind, inputs, outputs):
        self.name, self.type, self.inputs, self.outputs = name, kind, inputs, outputs
        self.precision, self.output_types = None, {}
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)

    def get_input(self, index):
        return self.inputs[index]

    def get_output(self, index):
        return self.outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class FakeNetwork:
    def __init__(self, layers):
        self.layers, self.num_layers = layers, len(layers)

    def get_layer(self, index):
        return self.layers[index]


def lookup_network() -> FakeNetwork:
    """An encoder conv, the lookup (MatMul on a constant codebook, TopK) and an int shape constant."""
    latent = FakeTensor("/encoder/conv/Conv_output_0", "fp16")
    codebook = FakeTensor("codebook_normalized_t", "fp16")
    shape = FakeTensor("shape_constant", "int32")
    scores = FakeTensor("/quantizer/lookup/MatMul_output_0", "fp16")
    return FakeNetwork(
        [
            FakeLayer("/encoder/conv/Conv", "conv", [FakeTensor("images", "fp32")], [latent]),
            FakeLayer("codebook constant", "constant", [], [codebook]),
            FakeLayer("shape constant", "constant", [], [shape]),
            FakeLayer("/quantizer/lookup/MatMul", "matmul", [latent, codebook, shape], [scores]),
            FakeLayer("/quantizer/lookup/ArgMax", "topk", [scores], [FakeTensor("codes", "int32")]),
        ]
    )


@needs_polygraphy
def test_lookup_pins_run_as_polygraphy_network_postprocessing():
    from polygraphy.backend.trt import PostprocessNetwork

    from gsq_deploy.exporters.tensorrt import LookupPins

    network = lookup_network()
    pins = LookupPins(FAKE_TRT, ["/quantizer/lookup/MatMul", "/quantizer/lookup/ArgMax"])
    builder_and_network = PostprocessNetwork((None, network), func=pins, name="pin the lookup to fp32")()
    assert builder_and_network[1] is network
    conv, codebook, shape, matmul, argmax = network.layers
    assert pins.count == 3  # MatMul, ArgMax and the codebook constant they read
    assert matmul.precision == argmax.precision == codebook.precision == "fp32"
    assert matmul.output_types == {0: "fp32"} and codebook.output_types == {0: "fp32"}
    assert argmax.output_types == {}  # int32 ids keep their type
    assert conv.precision is None and shape.precision is None  # the encoder may round; ints stay ints
    with pytest.raises(ExportError, match="no TensorRT layer matched"):
        LookupPins(FAKE_TRT, ["/renamed/scope/MatMul"])(network=lookup_network())


@needs_polygraphy
def test_engine_loader_wires_profile_precision_workspace_and_timing_cache(tmp_path):
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessNetwork

    from gsq_deploy.exporters.tensorrt import EnginePlan, TensorRTOptions, engine_loader

    cache = tmp_path / "timing.cache"
    shapes = {"min": [1, 3, 16, 16], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}
    options = TensorRTOptions(workspace_mb=512, timing_cache=cache)
    loader, pins = engine_loader(FAKE_TRT, tmp_path / "tokenize.onnx", EnginePlan("images", shapes, "fp16", ["/q/"], options))
    assert isinstance(loader, EngineBytesFromNetwork) and loader.timing_cache_path == str(cache)
    config = loader._config
    assert config.fp16 and not config.bf16 and not config.int8 and config.precision_constraints == "obey"
    profile = config.profiles[0]["images"]
    assert (list(profile.min), list(profile.opt), list(profile.max)) == (shapes["min"], shapes["opt"], shapes["max"])
    assert config.memory_pool_limits == {"workspace": 512 << 20}
    assert config.timing_cache_path is None  # no cache file yet: start empty, the build writes it
    assert isinstance(loader._network, PostprocessNetwork) and loader._network._func is pins
    assert isinstance(loader._network._network, NetworkFromOnnxPath)
    assert loader._network._network.path == str(tmp_path / "tokenize.onnx")
    cache.write_bytes(b"cache")
    loader, pins = engine_loader(FAKE_TRT, tmp_path / "t.onnx", EnginePlan("images", shapes, "fp32", ["/q/"], options))
    assert loader._config.timing_cache_path == str(cache) and loader._config.precision_constraints is None
    assert not loader._config.fp16 and pins.prefixes == ()  # fp32: nothing to pin
    loader, _ = engine_loader(FAKE_TRT, tmp_path / "t.onnx", EnginePlan("images", shapes, "int8", ["/q/"], options))
    assert loader._config.int8 and loader._config.precision_constraints == "obey"


def test_trt_runtime_needs_no_torch():
    code = "import sys, gsq_deploy.runtimes.trt as t; t.missing_requirements(); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_trt_runtime_feeds_int32_ids_and_copies_polygraphy_outputs():
    from gsq_deploy.runtimes.trt import TrtRuntime

    class FakeRunner:  # Polygraphy's TrtRunner.infer: numpy in, host buffers out (reused between calls)
        def __init__(self):
            self.buffer = np.zeros((2, 3, 8, 8), np.float32)
            self.fed = []

        def infer(self, feed):
            (value,) = feed.values()
            self.fed.append(value.dtype)
            self.buffer[:] = value[:, :1, :, :1].astype(np.float32)  # something that depends on the input
            return {"images": self.buffer}

    runtime = TrtRuntime.__new__(TrtRuntime)  # the host side alone: no engine, no GPU
    entry = {"inputs": [{"name": "codes"}], "outputs": [{"name": "images"}]}
    runtime.artifact = SimpleNamespace(graphs={"detokenize": entry})
    runner = FakeRunner()
    runtime._runners = {"detokenize": runner}
    runtime._select_device = lambda: None
    codes = np.arange(2 * 8 * 8 * 3, dtype=np.int64).reshape(2, 8, 8, 3)
    first = runtime._run_chunk("detokenize", entry, codes)
    runtime._run_chunk("detokenize", entry, codes + 1)  # overwrites the runner's buffer
    assert runner.fed == [np.int32, np.int32]
    assert first.dtype == np.float32 and first[0, 0, 0, 0] == codes[0, 0, 0, 0]  # not the reused buffer
