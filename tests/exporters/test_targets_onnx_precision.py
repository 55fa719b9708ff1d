"""fp16 and int8 ONNX builds: the lookup stays fp32, validation reports agreement and margins, and
the artifacts run through runtimes.onnx (API and CLI)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from tests.conftest import FLEXGEN, assert_one_line_error, expected_vectors, run_module
from onnx import numpy_helper
from tests.targets_support import FP16, eager, fp32_onnx, needs_fp16, reduced_onnx

from gsq_deploy.exporters import ExportError
from gsq_deploy.exporters.build import ExportOptions, convert
from gsq_deploy.exporters.graphs import ShapePlan, graph_specs
from gsq_deploy.exporters.onnx_precision import lookup_node_names
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_deploy.exporters.validation import validate_graphs
from gsq_core.fidelity import score_gaps
from gsq_deploy.runtimes.onnx import OnnxRuntime

MODEL = "gsq_f8_magvit"
FP16_PLAN = PrecisionPlan.uniform("fp16")


def _initializer_types(proto: onnx.ModelProto) -> dict[str, int]:
    return {tensor.name: tensor.data_type for tensor in proto.graph.initializer}


@needs_fp16
def test_fp16_keeps_the_lookup_fp32_and_the_rest_fp16():
    proto = onnx.load(str(reduced_onnx(MODEL, "fp16") / "tokenize.onnx"))
    types = _initializer_types(proto)
    lookup = set(lookup_node_names("tokenize", onnx.load(str(fp32_onnx(MODEL) / "tokenize.onnx"))))
    matmul = next(node for node in proto.graph.node if node.name in lookup and node.op_type == "MatMul")
    assert types[matmul.input[1]] == onnx.TensorProto.FLOAT  # the normalised codebook
    conv_weights = [types[node.input[1]] for node in proto.graph.node if node.op_type == "Conv"]
    assert conv_weights and set(conv_weights) == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [onnx.TensorProto.INT64]


def test_int8_quantizes_convolutions_but_not_the_lookup():
    proto = onnx.load(str(reduced_onnx(MODEL, "int8") / "tokenize.onnx"))
    quantized = [node for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    assert quantized, "no QDQ nodes: nothing was quantized"
    lookup = lookup_node_names("tokenize", onnx.load(str(fp32_onnx(MODEL) / "tokenize.onnx")))
    lookup_inputs = {name for node in proto.graph.node if node.name in lookup for name in node.input}
    dequantized = {node.output[0] for node in proto.graph.node if node.op_type == "DequantizeLinear"}
    assert not lookup_inputs & dequantized, "a lookup node reads a dequantized tensor"
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = next(t for t in proto.graph.initializer if t.name == node.input[2])
            assert not numpy_helper.to_array(zero_point).any(), "activations must be symmetric (TensorRT)"


@pytest.mark.parametrize("precision", [FP16, "int8"])
def test_manifest_reports_agreement_and_margins(precision):
    manifest = json.loads((reduced_onnx(MODEL, precision) / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["target"] == "onnx"
    for name, entry in manifest["graphs"].items():  # the quantizer graph is the lookup alone: fp32
        assert entry["precision"] == ("fp32" if name == "quantizer" else precision)
    assert manifest["precisions"] == {"encoder": precision, "quantizer": "fp32", "decoder": precision}
    report = manifest["validation"]
    assert report["passed"] and report["precision"] == precision
    quantizer = report["graphs"]["quantizer"]  # fp32 end to end: still exact
    assert quantizer["token_agreement"] == 1.0 and quantizer["max_score_gap"] <= 1e-5
    tokens = report["graphs"]["tokenize"]
    disagreements = round((1 - tokens["token_agreement"]) * tokens["tokens"])
    assert tokens["disagreements"] == disagreements
    assert tokens["near_tie_disagreements"] + tokens["flagged_disagreements"] == disagreements
    assert tokens["max_disagreement_margin"] == pytest.approx(tokens["max_score_gap"])
    assert 0 < report["graphs"]["detokenize"]["recon_psnr_db"] < 100  # reduced, not identical
    assert report["graphs"]["tokenize"]["tolerances"]["warn_only"] is True
    if precision == "fp16":
        assert tokens["token_agreement"] > 0.95 and not report["warnings"]
    if precision == "int8":
        assert manifest["reduced_precision"]["calibration_images"]["names"]


@needs_fp16
def test_fp16_runs_through_runtimes_onnx_on_the_conformance_vectors():
    runtime = OnnxRuntime(reduced_onnx(MODEL, "fp16"))
    vectors = expected_vectors(MODEL)
    spec = eager(MODEL).quantizer.lookup_spec()
    for size in ("64x64", "96x128"):
        codes = runtime.encode(vectors[f"input_{size}"])
        assert codes.shape == vectors[f"codes_{size}"].shape and codes.dtype == np.int64
        assert (codes == vectors[f"codes_{size}"]).mean() > 0.95
        assert score_gaps(vectors[f"latent_{size}"], codes, spec).max() < 1e-2
        recon = runtime.decode(vectors[f"codes_{size}"])
        assert np.abs(recon - vectors[f"recon_{size}"]).max() < 0.1


def test_int8_runs_through_the_runtime_cli(tmp_path):
    tokens = tmp_path / "tokens.npz"
    images = FLEXGEN / f"{MODEL}_images"
    result = run_module(
        "runtimes.onnx",
        "encode",
        "--model",
        str(reduced_onnx(MODEL, "int8")),
        "--output",
        str(tokens),
        str(images / "64x64_0.png"),
        str(images / "64x64_1.png"),
    )
    assert result.returncode == 0, result.stderr
    with np.load(tokens) as data:
        assert data["codes"].shape == (2, 8, 8, 4)
    result = run_module(
        "runtimes.onnx",
        "decode",
        "--model",
        str(reduced_onnx(MODEL, "int8")),
        "--tokens",
        str(tokens),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["64x64_0.png", "64x64_1.png"]


def test_thresholds_warn_for_reduced_precision_and_fail_for_fp32():
    model = eager(MODEL)
    vectors = expected_vectors(MODEL)
    images = vectors["input_64x64"]
    flipped = vectors["codes_64x64"].copy()
    flipped[0, 0, 0, 0] = (flipped[0, 0, 0, 0] + 1) % model.num_embed  # one token off the optimum

    runtime = SimpleNamespace(run_graph=lambda name, value: flipped)
    specs = [graph_specs(model, ShapePlan.dynamic())["tokenize"]]
    strict = validate_graphs(model, specs, runtime, [images], PrecisionPlan())
    assert not strict["passed"] and "not an optimal choice" in strict["failures"][0]
    report = validate_graphs(model, specs, runtime, [images], FP16_PLAN, tolerance_overrides={"min_token_agreement": 1.0})
    assert report["passed"] and not report["failures"]
    assert len(report["warnings"]) == 1 and "token agreement" in report["warnings"][0]
    result = report["graphs"]["tokenize"]
    assert result["disagreements"] == 1 and result["flagged_disagreements"] == 1
    assert result["largest_disagreement_margins"][0] > 1e-5


def test_the_lookup_graph_is_held_to_fp32_in_every_precision():
    model = eager(MODEL)
    vectors = expected_vectors(MODEL)
    flipped = vectors["codes_64x64"].copy()
    flipped[0, 0, 0, 0] = (flipped[0, 0, 0, 0] + 1) % model.num_embed  # one token off the optimum
    runtime = SimpleNamespace(run_graph=lambda name, value: flipped)
    specs = graph_specs(model, ShapePlan.dynamic())
    report = validate_graphs(model, [specs["quantizer"], specs["tokenize"]], runtime, [vectors["input_64x64"]], FP16_PLAN)
    assert not report["passed"]  # the quantizer graph is the fp32 lookup alone: a non-optimal code fails it
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("quantizer: a token is not an optimal")
    assert report["graphs"]["tokenize"]["passed"]  # the same codes from the fp16 tokenize graph: rounding
    assert report["graphs"]["quantizer"]["tolerances"]["warn_only"] is False
    assert report["graphs"]["tokenize"]["tolerances"]["warn_only"] is True


def test_convert_refuses_a_non_fp32_source(tmp_path):
    with pytest.raises(ExportError, match="converts a onnx fp32 artifact, found onnx int8"):
        convert(eager(MODEL), reduced_onnx(MODEL, "int8"), tmp_path / "x", "onnx", ExportOptions(precision=PrecisionPlan.uniform("int8")))
    assert not (tmp_path / "x").exists()


@needs_fp16
def test_cli_fp16_export_with_a_threshold_warns(tmp_path):
    out = tmp_path / "fp16"
    result = run_module(
        "exporters",
        "--ckpt",
        str(FLEXGEN / "vq_f16_attn.pt"),
        "--target",
        "onnx",
        "--precision",
        "fp16",
        "--graphs",
        "tokenize",
        "--min-token-agreement",
        "1.0",
        "--calib-images",
        str(FLEXGEN / "vq_f16_attn_images"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["validation"]["tolerance_overrides"]["min_token_agreement"] == 1.0
    assert manifest["validation"]["graphs"]["tokenize"]["tolerances"]["min_token_agreement"] == 1.0
    agreement = manifest["validation"]["graphs"]["tokenize"]["token_agreement"]
    assert ("warning: tokenize: token agreement" in result.stderr) == (agreement < 1.0)
    assert "tokens" in result.stdout and "fp16" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "bf16"], "not available for --target onnx"),
        (["--precision", "fp32", "--min-token-agreement", "0.9"], "fixed tolerances"),
        (["--min-shape", "1x64x64"], "TensorRT option"),
        (["--target", "triton", "--precision", "bf16"], "with --triton-backend onnxruntime"),
    ],
)
def test_cli_refuses_bad_precision_options(tmp_path, args, message):
    result = run_module(
        "exporters", "--ckpt", str(FLEXGEN / f"{MODEL}.pt"), "--target", "onnx", *args, "--out", str(tmp_path / "x")
    )
    assert_one_line_error(result, message)
    assert not (tmp_path / "x").exists()
