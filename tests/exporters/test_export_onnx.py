"""ONNX export of the conformance checkpoints: one dynamic export per model serves both fixture sizes.

Exports run the real `python -m exporters` CLI (once per model per session, in tmp dirs); the
artifacts are then run in real ONNX Runtime sessions and through the real runtime CLIs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from tests.conftest import CONFORMANCE_MODELS, CONFORMANCE_SIZES, FLEXGEN, expected_vectors, run_module
from PIL import Image

from gsq_deploy.exporters import GRAPH_NAMES, ExportError, ExportValidationError
from gsq_deploy.exporters.graphs import ShapePlan, graph_specs
from gsq_deploy.exporters.onnx import export_onnx
from gsq_deploy.exporters.validation import TOLERANCES, Tolerances, validate_graphs
from gsq_core import QuantizerConfig, TokenizerConfig, build_tokenizer, load_tokenizer
from gsq_core.errors import InputError
from gsq_core.fidelity import psnr, score_gaps
from gsq_core.images import float_to_uint8
from gsq_deploy.runtimes.artifacts import ArtifactError, file_sha256
from gsq_deploy.runtimes.onnx import OnnxRuntime
from gsq_deploy.runtimes.torch import TorchRuntime

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=CONFORMANCE_MODELS)
def exported(request, tmp_path_factory):
    """(name, artifact dir, manifest, eager model, expected vectors, CLI result) per conformance model."""
    name = request.param
    out = tmp_path_factory.mktemp("onnx") / name
    result = run_module("exporters", "--ckpt", str(FLEXGEN / f"{name}.pt"), "--target", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    return name, out, manifest, load_tokenizer(FLEXGEN / f"{name}.pt"), expected_vectors(name), result


def test_cli_reports_stages_and_summary(exported):
    _, out, manifest, _, _, result = exported
    for graph in GRAPH_NAMES:
        assert f"exported {graph}.onnx" in result.stderr
    assert "validated 5 graphs against eager" in result.stderr and "passed" in result.stderr
    for graph in GRAPH_NAMES:
        assert f"{graph}.onnx" in result.stdout
    assert "pass" in result.stdout and "FAIL" not in result.stdout


def test_manifest_describes_the_artifact(exported):
    _, out, manifest, model, _, _ = exported
    assert manifest["format"] == "gsq-deploy-artifact" and manifest["format_version"] == 1
    assert manifest["target"] == "onnx" and manifest["precision"] == "fp32" and manifest["exporter_version"]
    assert manifest["config"] == model.config.to_dict()
    assert manifest["num_embed"] == model.num_embed and manifest["num_group"] == model.num_group
    assert manifest["group_dim"] == model.quantizer.group_dim
    assert manifest["downsample_factor"] == model.downsample_factor
    assert manifest["token_layout"] == ("BHWG" if model.quantizer.has_group_axis else "BHW")
    assert manifest["shapes"] == {"dynamic": True, "batch": None, "image_size": None}
    assert set(manifest["graphs"]) == set(GRAPH_NAMES)
    for entry in manifest["graphs"].values():
        assert entry["precision"] == "fp32" and entry["opset"] == 17
        path = out / entry["file"]
        assert manifest["files"][entry["file"]] == {"sha256": file_sha256(path), "size": path.stat().st_size}
        for tensor in entry["inputs"] + entry["outputs"]:
            assert tensor["shape"][0] == "batch"
    assert manifest["graphs"]["tokenize"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    codes_shape = manifest["graphs"]["tokenize"]["outputs"][0]["shape"]
    assert (
        codes_shape[:3] == ["batch", "token_height", "token_width"]
        and manifest["graphs"]["tokenize"]["outputs"][0]["dtype"] == "int64"
    )
    validation = manifest["validation"]
    assert validation["passed"] and not validation["failures"]
    assert validation["images"]["names"] == ["astronaut", "coffee", "chelsea", "rocket"]
    assert validation["graphs"]["tokenize"]["max_score_gap"] <= 1e-5
    assert validation["graphs"]["encoder"]["latent_relative_error"] <= 1e-4
    assert (
        validation["graphs"]["decoder"]["recon_psnr_db"] is None
        or validation["graphs"]["decoder"]["recon_psnr_db"] > 60
    )


def test_graphs_pass_checker_with_symbolic_shapes(exported):
    name, out, manifest, _, _, _ = exported
    for graph in GRAPH_NAMES:
        onnx.checker.check_model(str(out / f"{graph}.onnx"), full_check=True)
        proto = onnx.load(str(out / f"{graph}.onnx"))
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and all(d.dim_param for d in dims[2:3])
    ops = Counter(node.op_type for node in onnx.load(str(out / "quantizer.onnx")).graph.node)
    # One code block: l2 lookup = normalize (ReduceL2, Div) + MatMul + ArgMax; plain VQ keeps the
    # distance form, MatMul + Add of the folded bias -|c|^2/2 + ArgMax.
    assert ops["MatMul"] == 1 and ops["ArgMax"] == 1 and ops["ReduceMax"] == 0
    is_l2 = name == "gsq_f8_magvit"
    assert (ops["ReduceL2"] == 1) == is_l2 and (ops["Add"] == 1) == (not is_l2)


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_onnx_tokens_and_latent_match_eager(exported, size):
    name, out, _, model, expected, _ = exported
    images = expected[f"input_{size}"]
    runtime = OnnxRuntime(out, threads=1)
    with torch.no_grad():
        eager_latent = model.encode_latent(torch.from_numpy(images)).numpy()
        eager_codes = model.encode(torch.from_numpy(images)).numpy()
    latent = runtime.encode_latent(images)
    assert np.abs(latent - eager_latent).max() <= 1e-4 * np.abs(eager_latent).max()
    fused = runtime.encode(images)
    two_step = runtime.session("quantizer").run(None, {"latent": latent})[0]
    for codes in (fused, two_step):
        assert codes.dtype == np.int64 and codes.shape == eager_codes.shape
        np.testing.assert_array_equal(codes, eager_codes)
        assert score_gaps(eager_latent, codes, model.quantizer.lookup_spec()).max() <= 1e-5
    # Upstream's own latent differs in rounding; where its token differs, it must be a near-tie here too.
    upstream = expected[f"codes_{size}"]
    upstream_gaps = score_gaps(eager_latent, upstream, model.quantizer.lookup_spec()).reshape(upstream.shape)
    assert upstream_gaps[fused != upstream].max(initial=0.0) <= 1e-6 and (fused != upstream).mean() <= 1e-3


def test_runtime_splits_batches_to_bound_lookup_memory(exported, monkeypatch):
    """With a tiny lookup budget the runtime runs one image at a time and gets the same tokens."""
    import gsq_deploy.runtimes.onnx
    from gsq_deploy import runtimes

    _, out, _, _, expected, _ = exported
    images = expected["input_64x64"]
    whole = OnnxRuntime(out, threads=1).encode(images)
    runs = []
    monkeypatch.setattr(runtimes.onnx, "LOOKUP_SCRATCH_BYTES", 1)
    chunked = OnnxRuntime(out, threads=1)
    original_run = chunked._run
    monkeypatch.setattr(chunked, "_run", lambda name, value: runs.append(value.shape[0]) or original_run(name, value))
    np.testing.assert_array_equal(chunked.encode(images), whole)
    assert runs == [1] * images.shape[0]


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_decode_cli_reproduces_upstream_recon(exported, size, tmp_path):
    name, out, _, _, expected, _ = exported
    codes = expected[f"codes_{size}"]
    paths = [f"{name}_{size}_{i}.png" for i in range(codes.shape[0])]
    np.savez(tmp_path / "tokens.npz", codes=codes, paths=np.array(paths))
    result = run_module(
        "runtimes.onnx",
        "decode",
        "--model",
        str(out),
        "--tokens",
        str(tmp_path / "tokens.npz"),
        "--output",
        str(tmp_path / "png"),
    )
    assert result.returncode == 0, result.stderr
    for index, path in enumerate(paths):
        decoded = np.asarray(Image.open(tmp_path / "png" / path), dtype=np.float64)
        reference = float_to_uint8(expected[f"recon_{size}"][index]).astype(np.float64)
        mse = np.mean((decoded - reference) ** 2)
        assert mse == 0 or 10 * np.log10(255.0**2 / mse) >= 45.0


def test_onnx_and_torch_runtime_clis_give_the_same_tokens(exported, tmp_path):
    name, out, _, _, _, _ = exported
    images = sorted((FLEXGEN / f"{name}_images").glob("96x128_*.png"))[::-1]  # input order is kept, not sorted
    files = [str(p) for p in images]
    onnx_run = run_module(
        "runtimes.onnx", "encode", "--model", str(out), "--output", str(tmp_path / "onnx.npz"), *files
    )
    torch_run = run_module(
        "runtimes.torch",
        "encode",
        "--model",
        str(FLEXGEN / f"{name}.pt"),
        "--output",
        str(tmp_path / "torch.npz"),
        *files,
    )
    assert onnx_run.returncode == 0, onnx_run.stderr
    assert torch_run.returncode == 0, torch_run.stderr
    with np.load(tmp_path / "onnx.npz") as onnx_tokens, np.load(tmp_path / "torch.npz") as torch_tokens:
        np.testing.assert_array_equal(onnx_tokens["codes"], torch_tokens["codes"])
        assert list(onnx_tokens["paths"]) == files


def test_torch_runtime_is_the_eager_reference(exported):
    name, out, _, model, expected, _ = exported
    reference = TorchRuntime(FLEXGEN / f"{name}.pt")
    images = expected["input_64x64"]
    codes = reference.encode(images)
    np.testing.assert_array_equal(codes, model.encode(torch.from_numpy(images)).numpy())
    np.testing.assert_allclose(reference.encode_latent(images), OnnxRuntime(out).encode_latent(images), atol=1e-3)
    assert psnr(reference.decode(codes), OnnxRuntime(out).decode(codes)) > 60
    assert reference.info.token_layout == ("BHWG" if name == "gsq_f8_magvit" else "BHW")
    with pytest.raises(InputError, match="outside"):
        reference.decode(np.full_like(codes, model.num_embed))


def test_runtime_onnx_does_not_import_torch(exported):
    _, out, _, _, expected, _ = exported
    np.save(out.parent / "input.npy", expected["input_64x64"])
    code = (
        "import sys, numpy as np\n"
        "import runtimes.onnx\n"
        "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
        f"rt = runtimes.onnx.OnnxRuntime({str(out)!r})\n"
        f"codes = rt.encode(np.load({str(out.parent / 'input.npy')!r}))\n"
        "rt.decode(codes)\n"
        "assert 'torch' not in sys.modules, 'running pulled in torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- export options and failures (Python API, small and fast) ----------------------------------------
@pytest.fixture(scope="module")
def small_gsq():
    return load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt")


def test_static_export_fixes_shapes_and_runtime_pads_batches(small_gsq, tmp_path):
    manifest = export_onnx(
        small_gsq,
        tmp_path / "static",
        dynamic=False,
        image_size=(64, 64),
        batch_size=2,
        graphs=("tokenize", "detokenize"),
        progress=False,
    )
    assert manifest["shapes"] == {"dynamic": False, "batch": 2, "image_size": [64, 64]}
    assert manifest["graphs"]["tokenize"]["inputs"][0]["shape"] == [2, 3, 64, 64]
    assert manifest["validation"]["passed"]
    images = expected_vectors("gsq_f8_magvit")["input_64x64"]  # 3 images: one full batch, one padded
    runtime = OnnxRuntime(tmp_path / "static")
    np.testing.assert_array_equal(runtime.encode(images), small_gsq.encode(torch.from_numpy(images)).numpy())
    with pytest.raises(Exception, match="does not match this static export"):
        runtime.encode(np.zeros((1, 3, 96, 128), np.float32))


def test_export_option_errors(small_gsq, tmp_path):
    with pytest.raises(ExportError, match="with --static"):
        export_onnx(small_gsq, tmp_path / "a", image_size=(64, 64), progress=False)
    with pytest.raises(ExportError, match="multiple of the downsampling factor 8"):
        export_onnx(small_gsq, tmp_path / "a", dynamic=False, image_size=(60, 64), progress=False)
    with pytest.raises(ExportError, match="unknown graph"):
        export_onnx(small_gsq, tmp_path / "a", graphs=("encoder", "vae"), progress=False)
    with pytest.raises(ExportError, match="opset 9"):
        export_onnx(small_gsq, tmp_path / "a", opset=9, progress=False)
    assert not (tmp_path / "a").exists()


def test_export_never_replaces_without_overwrite(small_gsq, tmp_path):
    out = tmp_path / "art"
    export_onnx(small_gsq, out, graphs=("quantizer",), validate=False, progress=False)
    with pytest.raises(ExportError, match="--overwrite"):
        export_onnx(small_gsq, out, graphs=("quantizer",), validate=False, progress=False)
    export_onnx(small_gsq, out, graphs=("encoder",), validate=False, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "manifest.json"]
    other = tmp_path / "user-files"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an artifact directory"):
        export_onnx(small_gsq, other, graphs=("quantizer",), validate=False, progress=False, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_failed_validation_exits_with_reason_and_runtime_refuses(small_gsq, tmp_path, monkeypatch):
    # Tolerances no export can meet: every score gap (even 0) is too large.
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerances(max_score_gap=-1.0))
    with pytest.raises(ExportValidationError, match="quantizer: a token is not an optimal choice") as failure:
        export_onnx(small_gsq, tmp_path / "bad", graphs=("quantizer",), progress=False)
    assert failure.value.manifest["validation"]["passed"] is False
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert manifest["validation"]["failures"]
    with pytest.raises(ArtifactError, match="failed validation"):
        OnnxRuntime(tmp_path / "bad")


def test_cli_exits_1_with_the_reason_when_validation_fails(tmp_path):
    out = tmp_path / "bad"
    code = (
        "import sys\n"
        "from gsq_deploy.exporters import validation\n"
        "validation.TOLERANCES['fp32'] = validation.Tolerances(max_score_gap=-1.0)  # unmeetable\n"
        "from gsq_deploy.exporters.cli import main\n"
        f"sys.argv = ['gsq-export', '--ckpt', {str(FLEXGEN / 'gsq_f8_magvit.pt')!r}, '--out', {str(out)!r},"
        " '--graphs', 'quantizer']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "error: validation failed: quantizer: a token is not an optimal choice" in result.stderr
    assert "Traceback" not in result.stderr and "FAIL" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"] is False


def test_validation_uses_calibration_images(small_gsq, tmp_path):
    manifest = export_onnx(
        small_gsq,
        tmp_path / "calib",
        graphs=("quantizer",),
        calib_images=FLEXGEN / "gsq_f8_magvit_images",
        progress=False,
    )
    images = manifest["validation"]["images"]
    assert images["source"] == str(FLEXGEN / "gsq_f8_magvit_images")
    assert images["names"] == [f"{size}_{i}.png" for size in ("64x64", "96x128") for i in range(3)]
    assert images["batches"] == [[6, 3, 96, 96], [1, 3, 80, 144]]
    with pytest.raises(InputError, match="no images"):
        export_onnx(small_gsq, tmp_path / "none", graphs=("quantizer",), calib_images=tmp_path, progress=False)


def test_validation_flags_a_token_that_is_not_optimal(small_gsq):
    images = expected_vectors("gsq_f8_magvit")["input_64x64"][:1]

    def flipped(name, latent):
        codes = small_gsq.quantizer.codes(torch.from_numpy(latent)).numpy().copy()
        codes[0, 0, 0, 0] = (codes[0, 0, 0, 0] + 1) % small_gsq.num_embed  # a different, worse code
        return codes

    specs = [graph_specs(small_gsq, ShapePlan.dynamic())["quantizer"]]
    report = validate_graphs(small_gsq, specs, SimpleNamespace(run_graph=flipped), [images])
    assert not report["passed"] and "not an optimal choice" in report["failures"][0]
    assert report["graphs"]["quantizer"]["token_agreement"] < 1.0


def test_validation_reports_graphs_that_cannot_run_at_a_size(small_gsq):
    batches = [expected_vectors("gsq_f8_magvit")[f"input_{size}"][:1] for size in ("64x64", "96x128")]

    def baked_64x64(name, images):  # what a graph with a baked-in shape does at another size
        if images.shape[-1] != 64:
            raise RuntimeError("Non-zero status code returned while running Reshape node\nmore detail")
        return small_gsq.encode_latent(torch.from_numpy(images)).detach().numpy()

    specs = [graph_specs(small_gsq, ShapePlan.dynamic())["encoder"]]
    report = validate_graphs(small_gsq, specs, SimpleNamespace(run_graph=baked_64x64), batches)
    assert not report["passed"]
    assert report["failures"] == [
        "encoder: failed to run on input [1, 3, 96, 128]: Non-zero status code returned while running Reshape node"
    ]


def test_cli_static_subset_without_validation(tmp_path):
    out = tmp_path / "static"
    result = run_module(
        "exporters",
        "--ckpt",
        str(FLEXGEN / "gsq_f8_magvit.pt"),
        "--out",
        str(out),
        "--static",
        "--image-size",
        "64x96",
        "--batch-size",
        "3",
        "--graphs",
        "tokenize",
        "--graphs",
        "quantizer",
        "--no-validate",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["graphs"]) == ["quantizer", "tokenize"] and manifest["validation"] is None
    assert manifest["graphs"]["tokenize"]["inputs"][0]["shape"] == [3, 3, 64, 96]
    assert manifest["graphs"]["quantizer"]["outputs"][0]["shape"] == [3, 8, 12, 4]
    assert "not validated" in result.stdout
    again = run_module("exporters", "--ckpt", str(FLEXGEN / "gsq_f8_magvit.pt"), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    missing = run_module("exporters", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "missing.pt" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_rejects_unknown_targets():
    # issue 4: the planned targets exist now (trt, openvino, triton); an unknown name lists them
    result = run_module("exporters", "--ckpt", "x", "--target", "tensorrt", "--out", "unused")
    assert result.returncode == 2 and "unknown target 'tensorrt'" in result.stderr and "trt" in result.stderr
    assert "Traceback" not in result.stderr


# -- other quantizer layouts -----------------------------------------------------------------------
LAYOUTS = {
    "ibq": dict(quantize_type="ibq", num_embed=300, embed_dim=8, num_group=2, use_l2_norm=False),
    "gsq-l1": dict(quantize_type="gsq", num_embed=300, embed_dim=8, num_group=4, use_l2_norm=False, use_l1_norm=True),
    "gsq-clip": dict(
        quantize_type="gsq",
        num_embed=64,
        embed_dim=4,
        num_group=4,
        use_l2_norm=False,
        use_uniform_init=True,
        force_1d_clip=True,
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_other_quantizer_layouts_export_and_validate(layout, tmp_path):
    quantizer = QuantizerConfig(**LAYOUTS[layout])
    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1, 1, 1),
        encoder_layer_configs=(1, 0, 1, 0),  # one block + attention at factor 4
        decoder_layer_configs=(1, 0, 0, 0),
        mid_block_attn=False,
        attention_resolutions=(4,),
        embedding_dim=quantizer.embed_dim,
        quantizer=quantizer,
    )
    model = build_tokenizer(config, seed=0).eval()
    manifest = export_onnx(model, tmp_path / layout, graphs=("quantizer", "tokenize"), progress=False)
    assert manifest["validation"]["passed"], manifest["validation"]["failures"]
    assert manifest["lookup"]["normalization"] == model.quantizer.config.lookup_normalization
    assert manifest["lookup"]["bias"] == (layout != "ibq")
    for graph in ("quantizer", "tokenize"):
        assert manifest["validation"]["graphs"][graph]["max_score_gap"] <= 1e-5


# -- blocked lookup at V = 262,144 -------------------------------------------------------------------
def _large_codebook_model(quantize_type: str, groups: int, dim: int):
    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1, 1),
        encoder_layer_configs=(0, 0, 0),
        decoder_layer_configs=(0, 0, 0),
        embedding_dim=dim,
        use_adaptive_norm=False,
        quantizer=QuantizerConfig(
            quantize_type=quantize_type,
            num_embed=262144,
            embed_dim=dim,
            num_group=groups,
            use_l2_norm=quantize_type == "gsq",
            use_uniform_init=quantize_type == "vq",
        ),
    )
    return build_tokenizer(config, seed=0).eval()


@pytest.mark.parametrize(
    "quantize_type, groups, dim", [("gsq", 2, 8), ("gsq", 4, 4), ("vq", 1, 2)], ids=["gsq-d4", "gsq-d1", "vq-d2"]
)
def test_blocked_codebook_lookup_equals_eager(quantize_type, groups, dim, tmp_path):
    model = _large_codebook_model(quantize_type, groups, dim)
    group_dim = model.quantizer.group_dim
    probes = torch.randn(3, group_dim, generator=torch.Generator().manual_seed(5))
    if group_dim > 1:
        with torch.no_grad():
            weight = model.quantizer.codebook.weight
            weight[3] = weight[70000] = weight[200000] = probes[0]  # exact tie across blocks 0, 1 and 3
            weight[262000] = probes[1] * 0.5  # the unique best for probes[1] lies in the last block
            weight[131072] = probes[2]  # the first code of a block
    manifest = export_onnx(
        model, tmp_path / "big", graphs=("quantizer",), validate=False, progress=False, lookup="dense"
    )
    assert manifest["lookup"]["method"] == "dense" and manifest["lookup"]["code_blocks"] == 4
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "big" / "quantizer.onnx")).graph.node)
    assert ops["MatMul"] == 4 and ops["ReduceMax"] == 4 and ops["ArgMax"] == 4 and ops["Greater"] == 3

    flat = torch.randn(64 * groups, group_dim, generator=torch.Generator().manual_seed(1))
    flat[:3] = torch.stack([probes[0], probes[1] * 0.5, probes[2]])
    latent = flat.reshape(1, 8, 8, dim).permute(0, 3, 1, 2).contiguous()
    session = onnxruntime.InferenceSession(str(tmp_path / "big" / "quantizer.onnx"), providers=["CPUExecutionProvider"])
    codes = session.run(None, {"latent": latent.numpy()})[0]
    eager = model.quantizer.codes(latent).numpy()
    assert codes.shape == eager.shape and codes.dtype == np.int64
    np.testing.assert_array_equal(codes, eager)
    assert score_gaps(latent.numpy(), codes, model.quantizer.lookup_spec()).max() <= 1e-5
    if group_dim > 1:
        assert list(codes.reshape(-1)[:3]) == [3, 262000, 131072]  # lowest index wins the cross-block tie
    else:
        # d = 1: every normalised code is +1 or -1, so all codes of one sign tie; the lowest index wins.
        weight = model.quantizer.codebook.weight.detach().numpy()[:, 0]
        first_positive, first_negative = int(np.argmax(weight > 0)), int(np.argmax(weight < 0))
        signs = flat.reshape(-1).numpy() > 0
        np.testing.assert_array_equal(codes.reshape(-1), np.where(signs, first_positive, first_negative))


# -- one runner per backend: validation opens the staged artifact with the users' runtime -----------
def test_export_validates_through_the_runtime_users_load(small_gsq, tmp_path, monkeypatch):
    manifest = export_onnx(small_gsq, tmp_path / "ok", graphs=("encoder",), progress=False)
    assert manifest["validation"]["runtime"] == {
        "backend": "onnx",
        "device": "cpu",
        "providers": ["CPUExecutionProvider"],
    }
    original = OnnxRuntime.run_graph

    def off_by_a_thousandth(self, name, value):  # a fault in the runtime users run, not in the exporter
        return original(self, name, value) * np.float32(1 + 1e-3)

    monkeypatch.setattr(OnnxRuntime, "run_graph", off_by_a_thousandth)
    with pytest.raises(ExportValidationError, match="encoder: latent error .* of the latent's magnitude"):
        export_onnx(small_gsq, tmp_path / "bad", graphs=("encoder",), progress=False)


def test_no_exporter_runs_graphs_with_its_own_session_code():
    import re

    for path in sorted((REPO / "exporters").glob("*.py")):
        found = re.findall(r"InferenceSession|compile_model|execute_async", path.read_text())
        assert not found, f"{path.name} runs graphs itself ({found[0]}); validate through runtimes.load_runtime"
