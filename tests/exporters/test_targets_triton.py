"""Triton model repository: layout, configs parsed back and consistent with the manifest and graphs."""

from __future__ import annotations

import filecmp
import json

import pytest
from tests.conftest import CONFORMANCE_MODELS
from tests.targets_support import fp32_onnx

from gsq_deploy.exporters import ExportError
from gsq_deploy.exporters.triton import make_repository, model_config, parse_pbtxt, repository_problems
from gsq_deploy.runtimes.artifacts import load_artifact

MODEL = CONFORMANCE_MODELS[0]


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    manifest = make_repository(
        fp32_onnx(MODEL), out, max_batch=16, model_prefix="magvit", instance_kind="gpu", progress=False
    )
    return out, manifest


def test_layout_and_files(repository):
    out, manifest = repository
    assert sorted(p.name for p in out.iterdir()) == ["magvit_detokenize", "magvit_tokenize", "manifest.json"]
    for graph in ("tokenize", "detokenize"):
        model_dir = out / f"magvit_{graph}"
        assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
        assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"]
        assert filecmp.cmp(model_dir / "1" / "model.onnx", fp32_onnx(MODEL) / f"{graph}.onnx", shallow=False)
    artifact = load_artifact(out)  # manifest checksums cover configs and models
    assert artifact.manifest["target"] == "triton" and artifact.manifest["triton"]["platform"] == "onnxruntime_onnx"
    assert set(artifact.graphs) == {"tokenize", "detokenize"}


def test_configs_parse_back_consistent_with_the_graphs(repository):
    out, manifest = repository
    assert repository_problems(out, manifest) == []
    config = parse_pbtxt((out / "magvit_tokenize" / "config.pbtxt").read_text())
    assert config["name"] == "magvit_tokenize" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]
    assert config["output"] == [{"name": "codes", "data_type": "TYPE_INT64", "dims": [-1, -1, 4]}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert config["version_policy"] == {"specific": {"versions": [1]}}
    decode = parse_pbtxt((out / "magvit_detokenize" / "config.pbtxt").read_text())
    assert decode["input"][0]["data_type"] == "TYPE_INT64" and decode["output"][0]["dims"] == [3, -1, -1]
    validation = json.loads((out / "manifest.json").read_text())
    assert validation["num_group"] == 4 and validation["triton"]["dynamic_batching"] is True


def test_a_tampered_config_is_reported(repository, tmp_path):
    out, manifest = repository
    entry = manifest["graphs"]["tokenize"]
    broken = model_config(
        "magvit_tokenize",
        "onnxruntime_onnx",
        {**entry, "outputs": [{**entry["outputs"][0], "dtype": "int32"}]},
        16,
        None,
    )
    copy = tmp_path / "repo"
    import shutil

    shutil.copytree(out, copy)
    (copy / entry["config"]).write_text(broken)
    problems = repository_problems(copy, manifest)
    assert len(problems) == 1 and "TYPE_INT32" in problems[0]


def test_static_export_has_no_batch_axis():
    entry = {
        "inputs": [{"name": "images", "dtype": "float32", "shape": [2, 3, 64, 64]}],
        "outputs": [{"name": "codes", "dtype": "int64", "shape": [2, 8, 8, 4]}],
    }
    config = parse_pbtxt(model_config("m", "onnxruntime_onnx", entry, 0, None))
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [2, 3, 64, 64]


def test_parse_pbtxt_reads_the_text_format():
    text = (
        'name: "a" # comment\nmax_batch_size: 4\n'
        'parameters { key: "x" value: { string_value: "y\\"z" } }\nflags: [ 1, 2 ]\nflag: true'
    )
    assert parse_pbtxt(text) == {
        "name": "a",
        "max_batch_size": 4,
        "parameters": {"key": "x", "value": {"string_value": 'y"z'}},
        "flags": [1, 2],
        "flag": "true",
    }
    with pytest.raises(ValueError):
        parse_pbtxt("input [ { name: ")


def test_refuses_the_wrong_source_and_bad_options(tmp_path):
    with pytest.raises(ExportError, match="converts a trt fp32 artifact, found onnx fp32"):
        make_repository(fp32_onnx(MODEL), tmp_path / "a", triton_backend="tensorrt", progress=False)
    with pytest.raises(ExportError, match="model name prefix"):
        make_repository(fp32_onnx(MODEL), tmp_path / "b", model_prefix="bad name", progress=False)


def test_cli_writes_a_repository(tmp_path):
    from tests.conftest import FLEXGEN, run_module

    out = tmp_path / "repo"
    result = run_module(
        "exporters",
        "--ckpt",
        str(FLEXGEN / "vq_f16_attn.pt"),
        "--target",
        "triton",
        "--graphs",
        "detokenize",
        "--no-validate",
        "--triton-max-batch",
        "4",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["graphs"]) == ["detokenize"] and repository_problems(out, manifest) == []
    config = parse_pbtxt((out / "gsq_detokenize" / "config.pbtxt").read_text())
    assert config["input"][0] == {"name": "codes", "data_type": "TYPE_INT64", "dims": [-1, -1]}  # plain VQ: [B, h, w]
    assert config["max_batch_size"] == 4
