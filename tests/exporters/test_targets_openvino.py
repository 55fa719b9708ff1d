"""OpenVINO IR: fp32 tokens are optimal choices on the conformance vectors (both models, both sizes),
inference runs with an explicit f32 precision hint, reduced variants convert and validate, and the
runtime CLI encodes and decodes files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import (
    CONFORMANCE_MODELS, CONFORMANCE_SIZES, FLEXGEN, assert_one_line_error, expected_vectors, run_module,
)
from tests.targets_support import eager, fp32_onnx, reduced_onnx

from gsq_deploy.exporters.build import ExportOptions, convert
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_core.fidelity import score_gaps
from gsq_deploy.runtimes import load_runtime
from gsq_deploy.runtimes.artifacts import ArtifactError
from gsq_deploy.runtimes.openvino import OpenVinoRuntime

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install 'gsq-deploy[openvino]')",
)


@lru_cache(maxsize=None)
def openvino_dir(name: str, precision: str, root: Path) -> Path:
    """IR converted once per model and precision; fp32 unvalidated (the test checks it), others validated."""
    source = fp32_onnx(name) if precision == "fp32" else reduced_onnx(name, precision)
    out = root / f"{name}-ov-{precision}"
    options = ExportOptions(
        precision=PrecisionPlan.parse(precision), validate=precision != "fp32", calib_images=FLEXGEN / f"{name}_images", progress=False
    )
    convert(eager(name), source, out, "openvino", options)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino")


@needs_openvino
@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_fp32_tokens_are_optimal_on_the_conformance_vectors(name, root):
    runtime = OpenVinoRuntime(openvino_dir(name, "fp32", root))
    vectors = expected_vectors(name)
    spec = eager(name).quantizer.lookup_spec()
    for size in CONFORMANCE_SIZES:
        codes = runtime.encode(vectors[f"input_{size}"])
        assert codes.dtype == np.int64 and codes.shape == vectors[f"codes_{size}"].shape
        gaps = score_gaps(vectors[f"latent_{size}"], codes, spec)
        assert gaps.max() <= 1e-5, f"{name} {size}: score gap {gaps.max():.3g}"
        recon = runtime.decode(vectors[f"codes_{size}"])
        assert np.abs(recon - vectors[f"recon_{size}"]).max() <= 2e-3


@needs_openvino
def test_fp32_is_compiled_with_an_f32_precision_hint(root):
    runtime = OpenVinoRuntime(openvino_dir(CONFORMANCE_MODELS[0], "fp32", root))
    compiled = runtime.compiled("tokenize")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    assert runtime.info.settings["inference_precision"] == "f32" and runtime.info.backend == "openvino"
    manifest = json.loads((runtime.artifact.directory / "manifest.json").read_text())
    assert manifest["target"] == "openvino" and manifest["tools"]["openvino"]
    for entry in manifest["graphs"].values():
        assert entry["file"].endswith(".xml") and entry["weights"] in manifest["files"]


@pytest.mark.parametrize("precision", ["int8"])  # fp16 IR is the fp16 ONNX graph, tested there
@needs_openvino
def test_reduced_variants_validate_with_an_exact_lookup(precision, root):
    out = openvino_dir(CONFORMANCE_MODELS[0], precision, root)
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["validation"]
    assert manifest["precision"] == precision and report["passed"]
    assert report["graphs"]["quantizer"]["max_score_gap"] <= 1e-5
    assert "disagreements" in report["graphs"]["tokenize"]
    codes = load_runtime("openvino", out).encode(expected_vectors(CONFORMANCE_MODELS[0])["input_64x64"])
    assert codes.shape == (3, 8, 8, 4)


@needs_openvino
def test_runtime_cli_round_trip(root, tmp_path):
    model_dir = openvino_dir(CONFORMANCE_MODELS[1], "fp32", root)
    images = sorted((FLEXGEN / f"{CONFORMANCE_MODELS[1]}_images").glob("96x128_*.png"))
    tokens = tmp_path / "tokens.npz"
    result = run_module(
        "runtimes.openvino", "encode", "--model", str(model_dir), "--output", str(tokens), *map(str, images)
    )
    assert result.returncode == 0, result.stderr
    with np.load(tokens) as data:
        expected = expected_vectors(CONFORMANCE_MODELS[1])["codes_96x128"]
        spec = eager(CONFORMANCE_MODELS[1]).quantizer.lookup_spec()
        latent = expected_vectors(CONFORMANCE_MODELS[1])["latent_96x128"]
        assert data["codes"].shape == expected.shape and score_gaps(latent, data["codes"], spec).max() <= 1e-5
    result = run_module(
        "runtimes.openvino",
        "decode",
        "--model",
        str(model_dir),
        "--tokens",
        str(tokens),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == len(images)


@needs_openvino
def test_runtime_refuses_other_targets_and_devices(root):
    with pytest.raises(ArtifactError, match="needs --target openvino"):
        OpenVinoRuntime(fp32_onnx(CONFORMANCE_MODELS[0]))
    result = run_module(
        "runtimes.openvino",
        "encode",
        "--model",
        str(openvino_dir(CONFORMANCE_MODELS[0], "fp32", root)),
        "--device",
        "NPU",
        "--output",
        "unused.npz",
        str(FLEXGEN / "gsq_f8_magvit_images" / "64x64_0.png"),
    )
    assert_one_line_error(result, "NPU")


def test_without_openvino_export_and_runtime_refuse_in_one_line(tmp_path):
    # openvino made unimportable in a subprocess, whether or not it is installed here
    block = "import sys; sys.modules['openvino'] = None; "
    image = str(FLEXGEN / "gsq_f8_magvit_images" / "64x64_0.png")
    runs = {
        "gsq_deploy.exporters.cli": [
            "--ckpt",
            str(FLEXGEN / "gsq_f8_magvit.pt"),
            "--target",
            "openvino",
            "--out",
            str(tmp_path / "ov"),
        ],
        "gsq_deploy.runtimes.openvino": ["encode", "--model", str(fp32_onnx(CONFORMANCE_MODELS[0])), "--output", "t.npz", image],
    }
    for module, args in runs.items():
        code = block + f"sys.argv = ['prog'] + {args!r}; from {module} import main; main()"
        result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert_one_line_error(result, "pip install 'gsq-deploy[openvino]'")
    assert not (tmp_path / "ov").exists()


@needs_openvino
def test_an_openvino_export_and_run_fork_nothing_with_telemetry_on(tmp_path):
    """The issue-11 hang: OpenVINO's telemetry forked a process from a background thread, which
    deadlocks a concurrent multithreaded OpenBLAS call in the main thread. With CI unset (the
    telemetry on, as on a user's machine), an export with validation and a runtime call must fork
    nothing and load no telemetry."""
    out = tmp_path / "ov"
    image = FLEXGEN / f"{CONFORMANCE_MODELS[0]}_images" / "64x64_0.png"
    code = (
        "import json, os, sys, threading\n"
        "forks = []\n"
        "os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))\n"
        f"sys.argv = ['gsq-export', '--ckpt', {str(FLEXGEN / (CONFORMANCE_MODELS[0] + '.pt'))!r}, '--target', "
        f"'openvino', '--graphs', 'tokenize', '--out', {str(out)!r}]\n"
        "from gsq_deploy.exporters.cli import main\n"
        "main()\n"
        "from gsq_core.images import read_image\n"
        "from gsq_deploy.runtimes import load_runtime\n"
        f"load_runtime('openvino', {str(out)!r}).encode(read_image({str(image)!r}).pixels[None])\n"
        "telemetry = sorted(name for name, module in sys.modules.items() if name.startswith('openvino_telemetry') and module)\n"
        "print(json.dumps({'forks': forks, 'telemetry': telemetry}))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"forks": [], "telemetry": []}, report
