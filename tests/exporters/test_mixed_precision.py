"""Per-graph precision (gsq-export --precision encoder=...,decoder=...): the spec, the manifest's
plain facts, the ONNX / OpenVINO / TensorRT / Triton builds and their runtimes, per-graph validation,
the OpenVINO bf16 hint applied only where it was asked for (and never to the lookup)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
from tests.conftest import FLEXGEN, assert_one_line_error, expected_vectors, run_module
from tests.targets_support import eager, fp32_onnx, reduced_onnx

from gsq_deploy.exporters import ExportError
from gsq_deploy.exporters.build import ExportOptions, check_target, convert, export
from gsq_deploy.exporters.onnx_precision import codebook_gather_names, lookup_node_names
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_deploy.exporters.validation import TOLERANCES
from gsq_core.fidelity import psnr, score_gaps
from gsq_deploy.runtimes import load_runtime
from gsq_deploy.runtimes.artifacts import ArtifactError, load_artifact

MODEL = "gsq_f8_magvit"
MIXED = "encoder=fp32,decoder=int8"
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (pip install 'gsq-deploy[openvino]')"
)


# -- the spec --------------------------------------------------------------------------------------
# (the spec's parsing and refusals: tests/exporters/test_precision_plan.py)
@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "decoder=fp8"], "precision 'fp8' for the decoder is unknown"),
        (["--precision", "quantizer=int8"], "fp32 in every build"),
        (["--precision", "encoder=fp32,codec=int8"], "unknown part 'codec'"),
        (["--precision", "decoder=bf16"], "--precision bf16 (the decoder) is not available for --target onnx"),
    ],
)
def test_cli_refuses_bad_per_graph_precision_in_one_line(tmp_path, args, message):
    result = run_module("exporters", "--ckpt", str(FLEXGEN / f"{MODEL}.pt"), *args, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, message)
    assert not (tmp_path / "x").exists()


def test_a_precision_a_target_does_not_declare_is_refused_before_any_work():
    with pytest.raises(ExportError, match=r"bf16 \(the encoder\) is not available for --target onnx"):
        check_target("onnx", ExportOptions(precision=PrecisionPlan.parse("encoder=bf16")))
    from gsq_deploy.exporters.triton import TritonOptions

    triton = ExportOptions(precision=PrecisionPlan.parse("decoder=bf16"), target_options=(TritonOptions(),))
    with pytest.raises(ExportError, match=r"bf16 \(the decoder\) is not available for --target triton"):
        check_target("triton", triton)


# -- ONNX: a mixed build (encoder fp32, decoder int8) ------------------------------------------------
def test_mixed_onnx_manifest_records_precision_per_graph_in_plain_fields():
    manifest = load_artifact(reduced_onnx(MODEL, MIXED)).manifest  # schema-checked, as runtimes read it
    assert manifest["precision"] == MIXED
    assert manifest["precisions"] == {"encoder": "fp32", "quantizer": "fp32", "decoder": "int8"}
    graphs = manifest["graphs"]
    assert {name: entry["precision"] for name, entry in graphs.items()} == {
        "quantizer": "fp32",
        "tokenize": "fp32",
        "detokenize": "int8",
    }
    assert graphs["tokenize"]["lookup_precision"] == graphs["quantizer"]["lookup_precision"] == "fp32"
    assert "lookup_precision" not in graphs["detokenize"]
    assert manifest["reduced_precision"]["calibration_images"]["names"]  # the decoder was calibrated


def test_mixed_onnx_tokenizes_exactly_like_fp32_and_decodes_within_its_tolerance():
    mixed, fp32 = load_runtime("onnx", reduced_onnx(MODEL, MIXED)), load_runtime("onnx", fp32_onnx(MODEL))
    assert mixed.info.graph_precisions == {"quantizer": "fp32", "tokenize": "fp32", "detokenize": "int8"}
    vectors = expected_vectors(MODEL)
    spec = eager(MODEL).quantizer.lookup_spec()
    for size in ("64x64", "96x128"):
        codes = mixed.encode(vectors[f"input_{size}"])
        assert np.array_equal(codes, fp32.encode(vectors[f"input_{size}"]))
        assert score_gaps(vectors[f"latent_{size}"], codes, spec).max() <= 1e-5  # every token optimal
        recon = mixed.decode(vectors[f"codes_{size}"])
        assert not np.allclose(recon, fp32.decode(vectors[f"codes_{size}"]), atol=1e-4)  # the int8 decoder ran
        lowest = min(psnr(reference, image) for reference, image in zip(vectors[f"recon_{size}"], recon))
        # this untrained fixture model's int8 decoder sits near 22 dB against eager (the trained default
        # model's near 40 dB); below the int8 limit, validation warns (it does not fail a reduced part)
        assert lowest > 20
    warned = any(w.startswith("detokenize: reconstruction PSNR") for w in mixed.artifact.manifest["validation"]["warnings"])
    assert warned == (mixed.artifact.manifest["validation"]["graphs"]["detokenize"]["recon_psnr_db"] < 25)


def test_mixed_onnx_keeps_the_fp32_graphs_and_the_lookup_untouched():
    for name in ("quantizer", "tokenize"):  # fp32 parts are the fp32 graphs, byte for byte
        mixed = (reduced_onnx(MODEL, MIXED) / f"{name}.onnx").read_bytes()
        assert mixed == (fp32_onnx(MODEL) / f"{name}.onnx").read_bytes()
    proto = onnx.load(str(reduced_onnx(MODEL, MIXED) / "detokenize.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    gather = codebook_gather_names("detokenize", proto)
    dequantized = {node.output[0] for node in proto.graph.node if node.op_type == "DequantizeLinear"}
    assert gather and not any(set(node.input) & dequantized for node in proto.graph.node if node.name in gather)


def test_mixed_validation_judges_each_graph_at_its_own_precision():
    report = load_artifact(reduced_onnx(MODEL, MIXED)).manifest["validation"]
    assert report["passed"] and report["precision"] == MIXED
    tokenize, detokenize = report["graphs"]["tokenize"], report["graphs"]["detokenize"]
    assert tokenize["precision"] == "fp32" and tokenize["tolerances"]["warn_only"] is False  # held to fp32
    assert tokenize["max_score_gap"] <= 1e-5
    assert detokenize["precision"] == "int8" and detokenize["tolerances"]["warn_only"] is True
    assert detokenize["tolerances"]["max_input_psnr_drop_db"] == 0.3
    # decoders are judged by PSNR against eager and against the input images
    assert 20 < detokenize["recon_psnr_db"] < 100
    drop = detokenize["eager_psnr_vs_input_db"] - detokenize["psnr_vs_input_db"]
    assert detokenize["psnr_vs_input_drop_db"] == pytest.approx(drop)


@pytest.mark.parametrize("precision", ["encoder=fp16,decoder=fp32", "encoder=fp32,decoder=fp16"])
def test_fp16_parts_keep_the_lookup_and_the_codebook_gather_fp32(precision, tmp_path):
    pytest.importorskip("onnxconverter_common")
    out, plan = tmp_path / "fp16", PrecisionPlan.parse(precision)
    convert(eager(MODEL), fp32_onnx(MODEL), out, "onnx", ExportOptions(precision=plan, validate=False, progress=False))
    for name in ("tokenize", "detokenize"):
        proto = onnx.load(str(out / f"{name}.onnx"))
        types = {tensor.name: tensor.data_type for tensor in proto.graph.initializer}
        conv_types = {types[node.input[1]] for node in proto.graph.node if node.op_type == "Conv"}
        assert conv_types == {onnx.TensorProto.FLOAT16 if plan.for_graph(name) == "fp16" else onnx.TensorProto.FLOAT}
        if name == "tokenize":
            lookup = set(lookup_node_names(name, proto))
            matmul = next(node for node in proto.graph.node if node.name in lookup and node.op_type == "MatMul")
            assert types[matmul.input[1]] == onnx.TensorProto.FLOAT
        else:
            gather = next(node for node in proto.graph.node if node.name in codebook_gather_names(name, proto))
            assert types[gather.input[0]] == onnx.TensorProto.FLOAT  # the raw codebook stays fp32


# -- Triton and TensorRT carry the per-graph precision -----------------------------------------------
def test_triton_repository_serves_the_mixed_graphs_with_their_precisions(tmp_path):
    from gsq_deploy.exporters.triton import make_repository

    manifest = make_repository(reduced_onnx(MODEL, MIXED), tmp_path / "triton", progress=False)
    assert manifest["precision"] == MIXED and manifest["precisions"]["decoder"] == "int8"
    assert {name: entry["precision"] for name, entry in manifest["graphs"].items()} == {
        "tokenize": "fp32",
        "detokenize": "int8",
    }
    assert manifest["validation"]["graphs"]["detokenize"]["precision"] == "int8"
    served = tmp_path / "triton" / manifest["graphs"]["detokenize"]["file"]
    assert served.read_bytes() == (reduced_onnx(MODEL, MIXED) / "detokenize.onnx").read_bytes()


def test_tensorrt_builds_each_engine_at_its_graphs_precision_from_the_right_source(tmp_path, monkeypatch):
    """No TensorRT here: the build step runs with the engine build stubbed, so what is checked is
    which ONNX source each part comes from and which precision each engine is asked for."""
    import gsq_deploy.exporters.tensorrt as tensorrt_target
    from gsq_deploy.exporters.build import SourceArtifact, _build

    options = ExportOptions(precision=PrecisionPlan.parse("encoder=fp16,decoder=int8"), validate=False, progress=False)
    assert str(tensorrt_target._source(options).precision) == MIXED  # fp16 from fp32 graphs, int8 from QDQ graphs
    plans = {}

    def fake_build_engine(trt, onnx_path, engine_path, plan):
        plans[engine_path.stem] = plan
        engine_path.write_bytes(b"engine")
        return len(plan.keep_fp32)

    monkeypatch.setattr(tensorrt_target, "require_tensorrt", lambda *args: type("trt", (), {"__version__": "10.x"}))
    monkeypatch.setattr(tensorrt_target, "build_engine", fake_build_engine)
    monkeypatch.setattr(tensorrt_target, "cuda_device_facts", lambda device: ("stand-in GPU", "9.0"))
    monkeypatch.setattr(tensorrt_target, "_polygraphy_version", lambda: {})
    source = SourceArtifact.read(reduced_onnx(MODEL, MIXED))
    manifest = _build(eager(MODEL), source, tmp_path / "trt", tensorrt_target.TARGET, options)
    assert {name: plan.precision for name, plan in plans.items()} == {
        "quantizer": "fp32",
        "tokenize": "fp16",
        "detokenize": "int8",
    }
    assert plans["tokenize"].keep_fp32 and plans["detokenize"].keep_fp32  # lookup / codebook gather pinned
    assert manifest["precision"] == "encoder=fp16,decoder=int8"
    assert load_artifact(tmp_path / "trt").manifest["graphs"]["detokenize"]["precision"] == "int8"


# -- OpenVINO: the bf16 hint per graph ------------------------------------------------------------------
def _hint(compiled) -> str:
    from gsq_deploy.runtimes.openvino import import_openvino

    openvino = import_openvino()
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {openvino.Type.f32: "f32", openvino.Type.bf16: "bf16", openvino.Type.f16: "f16"}[value]


def _runtime_precisions(compiled) -> set[str]:
    """The precisions the compiled model's layers run in (Const / Input / Output excluded)."""
    precisions = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in ("Const", "Input", "Output"):
            precisions.add(info["runtimePrecision"].astype(str))
    return precisions


@pytest.fixture(scope="module")
def bf16_openvino(tmp_path_factory):
    """encoder=bf16,decoder=bf16: the tokenize graph asked for comes as encoder + quantizer."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'gsq-deploy[openvino]')")
    out = tmp_path_factory.mktemp("ov") / "bf16"
    options = ExportOptions(
        precision=PrecisionPlan.uniform("bf16"),
        graphs=("tokenize", "detokenize"),
        calib_images=FLEXGEN / f"{MODEL}_images",
        progress=False,
    )
    export(eager(MODEL), out, "openvino", options)
    return out


@needs_openvino
def test_bf16_hint_is_applied_only_to_the_graphs_that_asked_for_it(bf16_openvino):
    manifest = load_artifact(bf16_openvino).manifest
    assert sorted(manifest["graphs"]) == ["detokenize", "encoder", "quantizer"]  # tokenize split
    assert manifest["openvino"]["split"]["tokenize"] == ["encoder", "quantizer"]
    runtime = load_runtime("openvino", bf16_openvino, threads=1)
    for name, entry in manifest["graphs"].items():
        expected = "f32" if name == "quantizer" else "bf16"
        assert entry["inference_precision"] == expected
        compiled = runtime.compiled(name)
        assert _hint(compiled) == expected, name
        if expected == "f32":  # the lookup: every layer runs f32
            assert _runtime_precisions(compiled) <= {"f32", "i32", "i64"}, name
    assert runtime.info.settings["inference_precisions"] == {"encoder": "bf16", "quantizer": "f32", "detokenize": "bf16"}


@needs_openvino
def test_bf16_encoder_is_validated_through_the_runtime_encode_with_agreement_and_margins(bf16_openvino):
    report = load_artifact(bf16_openvino).manifest["validation"]
    assert report["passed"]
    encode = report["paths"]["encode"]  # what users call: encoder (bf16) then quantizer (f32)
    assert encode["precision"] == "bf16" and encode["tokens"] > 0
    assert encode["near_tie_disagreements"] + encode["flagged_disagreements"] == encode["disagreements"]
    assert report["graphs"]["quantizer"]["max_score_gap"] <= 1e-5  # the lookup on the eager latent: exact
    vectors = expected_vectors(MODEL)
    runtime = load_runtime("openvino", bf16_openvino)
    recon = runtime.decode(vectors["codes_64x64"])
    lowest = min(psnr(reference, image) for reference, image in zip(vectors["recon_64x64"], recon))
    assert lowest >= TOLERANCES["bf16"].min_recon_psnr_db  # a bf16 decoder stays close to eager


@needs_openvino
def test_mixed_openvino_fuses_an_fp32_tokenize_and_compiles_the_decoder_in_bf16(tmp_path):
    out = tmp_path / "ov-mixed"
    plan = PrecisionPlan.parse("decoder=bf16")
    options = ExportOptions(precision=plan, calib_images=FLEXGEN / f"{MODEL}_images", progress=False)
    manifest = convert(eager(MODEL), fp32_onnx(MODEL), out, "openvino", options)
    assert manifest["validation"]["passed"] and "split" not in manifest["openvino"]
    runtime = load_runtime("openvino", out, threads=1)
    assert {name: _hint(runtime.compiled(name)) for name in manifest["graphs"]} == {
        "quantizer": "f32",
        "tokenize": "f32",
        "detokenize": "bf16",
    }
    assert "bf16" in _runtime_precisions(runtime.compiled("detokenize"))
    assert _runtime_precisions(runtime.compiled("tokenize")) <= {"f32", "i32", "i64"}
    vectors = expected_vectors(MODEL)
    spec = eager(MODEL).quantizer.lookup_spec()
    codes = runtime.encode(vectors["input_96x128"])
    assert score_gaps(vectors["latent_96x128"], codes, spec).max() <= 1e-5
    # --inference-precision overrides the graphs without the lookup only
    override = load_runtime("openvino", out, inference_precision="bf16")
    assert override.hints == {"quantizer": "f32", "tokenize": "f32", "detokenize": "bf16"}


@needs_openvino
def test_openvino_runtime_refuses_a_manifest_that_rounds_the_lookup(bf16_openvino, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(bf16_openvino, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["quantizer"]["inference_precision"] = "bf16"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="holds the codebook lookup, which must stay fp32"):
        load_runtime("openvino", folder)


@needs_openvino
def test_openvino_export_refuses_to_compile_a_fused_lookup_in_bf16(tmp_path):
    options = ExportOptions(precision=PrecisionPlan.parse("encoder=bf16"), validate=False, progress=False)
    with pytest.raises(ExportError, match="tokenize graph holds the codebook lookup"):
        convert(eager(MODEL), fp32_onnx(MODEL), tmp_path / "x", "openvino", options)  # a source with tokenize


def test_export_options_carry_one_plan_and_reject_strings_and_unknown_overrides():
    options = ExportOptions(precision=PrecisionPlan("fp32", "int8"))
    assert str(options.precision) == MIXED and options.precisions == {"fp32", "int8"}
    assert replace(options, graphs=("tokenize",)).precisions == {"fp32"}
    with pytest.raises(TypeError, match=r"precision must be a PrecisionPlan \(PrecisionPlan.parse\(text\)\), not 'int8'"):
        ExportOptions(precision="int8")  # parsed where the user gave it, never here
    with pytest.raises(ExportError, match=r"tolerance overrides \['max_score_gap'\]: only min_token_agreement, "):
        ExportOptions(precision=PrecisionPlan.uniform("int8"), tolerance_overrides={"max_score_gap": 1.0})


# -- IBQ: the other family, the same per-graph precision ---------------------------------------------
def test_ibq_mixed_build_tokenizes_like_fp32_with_an_int8_decoder(tmp_path):
    from tests.conftest import IBQ, IBQ_MODEL, ibq_expected

    from gsq_core import load_tokenizer

    model = load_tokenizer(IBQ_MODEL.with_suffix(".ckpt"))
    options = ExportOptions(
        precision=PrecisionPlan.parse("decoder=int8"), graphs=("tokenize", "detokenize"),
        calib_images=IBQ / "ibq_tiny_f4_k1024_images", progress=False,
    )  # fmt: skip
    manifest = export(model, tmp_path / "ibq", "onnx", options)
    assert manifest["validation"]["passed"] and manifest["family"] == "ibq"
    assert {name: entry["precision"] for name, entry in manifest["graphs"].items()} == {
        "tokenize": "fp32",
        "detokenize": "int8",
    }
    runtime = load_runtime("onnx", tmp_path / "ibq", threads=1)
    images = ibq_expected()["input_64x64"]
    import torch

    latent = model.encode_latent(torch.from_numpy(images)).detach().numpy()
    assert score_gaps(latent, runtime.encode(images), model.quantizer.lookup_spec()).max() <= 1e-5
    assert manifest["validation"]["graphs"]["detokenize"]["psnr_vs_input_drop_db"] is not None
