"""The IBQ fixture through everything downstream, with no IBQ special case there: gsq-export to ONNX
and OpenVINO (validated), the runtimes and their CLIs, and benchmarks/compare.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import CONFORMANCE_SIZES, IBQ, IBQ_MODEL, ibq_expected, run_module
from gsq_core import load_tokenizer
from gsq_core.fidelity import psnr, score_gaps
from gsq_deploy.runtimes import load_runtime

CKPT = IBQ_MODEL.with_suffix(".ckpt")
IMAGES = IBQ / "ibq_tiny_f4_k1024_images"


@pytest.fixture(scope="module")
def eager():
    return load_tokenizer(CKPT)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ibq") / "onnx"
    result = run_module("exporters", "--ckpt", str(CKPT), "--target", "onnx", "--out", str(out),
                        "--calib-images", str(IMAGES))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_onnx_export_validates_with_plain_manifest_facts(onnx_dir):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert manifest["validation"]["passed"]
    assert manifest["family"] == "ibq" and manifest["config"]["family"] == "ibq"
    assert (manifest["token_layout"], manifest["min_token_positions"]) == ("BHW", 1)
    assert manifest["lookup"]["normalization"] == "none" and manifest["lookup"]["bias"] is False
    assert manifest["graphs"]["quantizer"]["outputs"][0]["shape"] == ["batch", "token_height", "token_width"]
    assert manifest["source"]["sha256"]


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_onnx_tokens_are_optimal_and_decode_matches_eager(eager, onnx_dir, size):
    expected = ibq_expected()
    images = expected[f"input_{size}"]
    runtime = load_runtime("onnx", onnx_dir, threads=1)
    codes = runtime.encode(images)
    latent = eager.encode_latent(torch.from_numpy(images)).detach().numpy()
    spec = eager.quantizer.lookup_spec()
    assert codes.shape == expected[f"indices_{size}"].shape
    assert score_gaps(latent, codes, spec).max() <= 1e-5  # the export's criterion: within 1e-5 of the best
    np.testing.assert_allclose(runtime.encode_latent(images), latent, rtol=0, atol=1e-4)
    reference = eager.decode(torch.from_numpy(codes)).numpy()
    assert psnr(reference, runtime.decode(codes)) >= 45.0
    # The upstream tokens decode the same way through the artifact.
    upstream = expected[f"indices_{size}"]
    assert np.abs(runtime.decode(upstream) - expected[f"recon_{size}"]).max() <= 1e-3


def test_openvino_export_validates(tmp_path, eager):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'gsq-deploy[openvino]')")
    out = tmp_path / "openvino"
    result = run_module("exporters", "--ckpt", str(CKPT), "--target", "openvino", "--out", str(out),
                        "--graphs", "tokenize,detokenize", "--calib-images", str(IMAGES))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"]
    images = ibq_expected()["input_96x128"]
    runtime = load_runtime("openvino", out)
    codes = runtime.encode(images)
    latent = eager.encode_latent(torch.from_numpy(images)).detach().numpy()
    assert score_gaps(latent, codes, eager.quantizer.lookup_spec()).max() <= 1e-5
    assert psnr(eager.decode(torch.from_numpy(codes)).numpy(), runtime.decode(codes)) >= 45.0


def test_runtime_clis_take_the_config_and_the_weights_choice(tmp_path, onnx_dir):
    expected = ibq_expected()
    lonely = tmp_path / "model.ckpt"  # no YAML beside it: --config is needed
    shutil.copyfile(CKPT, lonely)
    images = sorted(IMAGES.glob("64x64_*.png"))
    raw_tokens = tmp_path / "raw.npz"
    result = run_module("runtimes.torch", "encode", "--model", str(lonely), "--config", str(IBQ_MODEL.with_suffix(".yaml")),
                        "--no-ema", "--output", str(raw_tokens), *map(str, images))
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(raw_tokens) as data:
        raw_codes = data["codes"]
    agree = raw_codes == expected["indices_raw_64x64"]
    assert raw_codes.shape == (3, 16, 16) and agree.mean() > 0.99  # PNGs: 1 ulp from upstream's float64 input
    missing = run_module("runtimes.torch", "encode", "--model", str(lonely), "--output", str(tmp_path / "x.npz"),
                         *map(str, images))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "--config" in missing.stderr

    tokens, recon = tmp_path / "onnx.npz", tmp_path / "recon"
    encoded = run_module("runtimes.onnx", "encode", "--model", str(onnx_dir), "--output", str(tokens), *map(str, images))
    assert encoded.returncode == 0, encoded.stderr[-2000:]
    decoded = run_module("runtimes.onnx", "decode", "--model", str(onnx_dir), "--tokens", str(tokens),
                         "--output", str(recon))
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    assert sorted(path.name for path in recon.iterdir()) == [path.name for path in images]
    info = run_module("gsq_core", "info", str(lonely), "--config", str(IBQ_MODEL.with_suffix(".yaml")))
    assert info.returncode == 0 and "family: ibq" in info.stdout and "dot product" in info.stdout


def test_compare_runs_on_the_ibq_checkpoint(tmp_path, onnx_dir):
    out = tmp_path / "report"
    args = ["--ckpt", str(CKPT), "--images", *map(str, sorted(IMAGES.glob("64x64_*.png"))), "--backends", "torch,onnx",
            "--artifacts", str(onnx_dir.parent), "--batch-sizes", "1", "--repeats", "1", "--threads", "1",
            "--out", str(out), "--no-progress"]
    result = run_module("benchmarks.compare", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["family"] == "ibq" and report["model"]["quantize_type"] == "ibq"
    results = {(r["backend"], r["precision"]): r for r in report["results"]}
    assert set(results) == {("torch", "fp32"), ("onnx", "fp32")}
    assert results[("onnx", "fp32")]["max_disagreement_margin"] <= 1e-5
    assert results[("onnx", "fp32")]["token_agreement"] >= 0.99


def test_quantizer_benchmark_has_the_ibq_lookup(tmp_path):
    out = tmp_path / "quantizer.json"
    args = ["--quantizer", "ibq", "--vocab-sizes", "2048", "--groups", "1x64", "--batch-sizes", "2", "--image-size", "64",
            "--downsample", "16", "--methods", "eager,full,onnx", "--repeats", "1", "--threads", "1", "--no-progress"]
    result = run_module("benchmarks.quantizer", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(records) == {"eager", "full", "onnx"}
    for record in records.values():
        assert record["status"] == "ok" and record["quantizer"] == "ibq"
        assert record["agreement_vs_exact"] == 1.0  # random N(0,1) data: no near-ties at this size
