"""Runtime settings of the ONNX Runtime and OpenVINO runtimes (session config entries, compile
properties) reach the real sessions, and the runtime-settings benchmark runs end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import tiny_gsq_model

from gsq_deploy.exporters.onnx import export_onnx
from gsq_core.errors import InputError
from gsq_core.images import float_to_uint8
from gsq_deploy.runtimes.onnx import SESSION_CONFIG, OnnxRuntime

REPO = Path(__file__).resolve().parents[2]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def model():
    return tiny_gsq_model()


@pytest.fixture(scope="module")
def onnx_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("settings") / "onnx"
    export_onnx(model, out, graphs=("tokenize", "detokenize"), validate=False, progress=False)
    return out


def test_onnx_sessions_do_not_spin(onnx_dir):
    runtime = OnnxRuntime(onnx_dir, threads=2)
    options = runtime.session("tokenize").get_session_options()
    assert SESSION_CONFIG == {"session.intra_op.allow_spinning": "0", "session.force_spinning_stop": "1"}
    for key, value in SESSION_CONFIG.items():
        assert options.get_session_config_entry(key) == value
    settings = runtime.info.settings
    assert settings["session_config"] == SESSION_CONFIG and settings["graph_optimization"] == "all"
    assert settings["memory"] == "shared" and settings["threads"] == 2
    assert options.get_session_config_entry("session.use_env_allocators") == "1" and not options.enable_mem_pattern


def test_onnx_session_config_and_optimisation_level_can_be_chosen(onnx_dir):
    import onnxruntime

    runtime = OnnxRuntime(
        onnx_dir, threads=1, session_config={"session.intra_op.allow_spinning": "1"}, graph_optimization="basic"
    )
    options = runtime.session("detokenize").get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"  # the defaults stay
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    images = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(runtime.encode(images), OnnxRuntime(onnx_dir, threads=1).encode(images))
    with pytest.raises(InputError, match="graph optimisation"):
        OnnxRuntime(onnx_dir, graph_optimization="fast")
    with pytest.raises(InputError, match="memory mode"):
        OnnxRuntime(onnx_dir, memory="lots")


def test_onnx_sessions_share_one_arena_and_give_the_same_outputs(onnx_dir):
    """memory="shared" (one environment arena, no memory patterns) and ORT's per-session memory give
    identical tokens and images."""
    images = np.random.default_rng(3).uniform(-1, 1, (2, 3, 32, 48)).astype(np.float32)
    shared, separate = OnnxRuntime(onnx_dir, threads=2), OnnxRuntime(onnx_dir, threads=2, memory="session")
    assert separate.session("tokenize").get_session_options().enable_mem_pattern
    codes = shared.encode(images)
    np.testing.assert_array_equal(codes, separate.encode(images))
    np.testing.assert_array_equal(shared.decode(codes), separate.decode(codes))


@needs_openvino
def test_openvino_compiles_for_latency_unless_told_otherwise(model, tmp_path):
    from gsq_deploy.exporters.openvino import export_openvino
    from gsq_deploy.runtimes.openvino import OpenVinoRuntime

    export_openvino(model, tmp_path / "ov", graphs=("tokenize",), validate=False, progress=False)
    default = OpenVinoRuntime(tmp_path / "ov", threads=1).compiled("tokenize")
    assert str(default.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert default.get_property("ENABLE_CPU_PINNING") is False
    assert str(default.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    chosen = OpenVinoRuntime(tmp_path / "ov", threads=1, config={"PERFORMANCE_HINT": "THROUGHPUT"})
    assert str(chosen.compiled("tokenize").get_property("PERFORMANCE_HINT")) == "THROUGHPUT"


def test_runtime_settings_benchmark_runs_and_reports(onnx_dir, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for index in range(2):
        pixels = float_to_uint8(rng.uniform(-1, 1, (3, 32, 32)).astype(np.float32))
        Image.fromarray(pixels).save(tmp_path / f"photo{index}.png")
    out = tmp_path / "settings.json"
    command = [sys.executable, "benchmarks/runtime_options.py", "--onnx", str(onnx_dir), "--settings"]
    command += ["ort,ort-as-before", "--images", str(tmp_path), "--rounds", "1", "--repeats", "1", "--threads", "1"]
    completed = subprocess.run(command + ["--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(row["setting"], row["mode"]): row for row in report["rows"]}
    assert set(rows) == {(s, m) for s in ("ort", "ort-as-before") for m in ("blocks", "alternating")}
    assert all(row["encode_ms"] > 0 and row["decode_ms"] > 0 for row in rows.values())
    assert "| ort-as-before |" in completed.stdout and "load average" in completed.stdout
    again = subprocess.run(command + ["--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_runtime_settings_benchmark_times_eager_and_ort_tokenize_in_batches(model, onnx_dir, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for index in range(3):
        Image.fromarray(float_to_uint8(rng.uniform(-1, 1, (3, 32, 32)).astype(np.float32))).save(tmp_path / f"p{index}.png")
    checkpoint = tmp_path / "model.safetensors"
    model.save(checkpoint)
    out = tmp_path / "tokenize.json"
    command = [sys.executable, "benchmarks/runtime_options.py", "--torch", str(checkpoint), "--onnx", str(onnx_dir)]
    command += ["--settings", "torch,ort", "--modes", "encode", "--batch", "2", "--images", str(tmp_path)]
    command += ["--rounds", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["batch"] == 2 and {(row["setting"], row["mode"]) for row in report["rows"]} == {
        ("torch", "encode"),
        ("ort", "encode"),
    }
    assert all(row["encode_ms"] > 0 for row in report["rows"]) and "encode only" in completed.stdout
