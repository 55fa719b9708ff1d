"""runtimes.base, the part every artifact runtime shares, on small in-memory artifacts (no export).

Input checks (images, token ids), the choice of graphs for encode / decode, batch chunking with a
static export's padding, the memory budget's chunking and the refusal of artifacts that failed
validation: each on inputs whose answer is known, so a changed boundary or message is seen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gsq_core.budgets import batch_limit
from gsq_core.errors import InputError
from gsq_deploy.runtimes.artifacts import Artifact, ArtifactError, file_sha256
from gsq_deploy.runtimes.info import ModelInfo
from gsq_deploy.runtimes.base import (
    ArtifactRuntime,
    check_artifact_codes,
    check_artifact_images,
    check_codes,
    check_images,
    open_artifact,
    run_in_chunks,
)

# The conformance model gsq_f8_magvit's architecture (manifest "config"): what the memory budget reads.
CONFIG = {
    "family": "flex", "input_channels": 3, "hidden_channels": 32, "channel_multipliers": [1, 1, 2, 2],
    "encoder_layer_configs": [1, 1, 1, 1, 1], "decoder_layer_configs": [1, 1, 1, 1, 1], "mid_block_attn": False,
    "attention_resolutions": [], "embedding_dim": 16, "use_adaptive_norm": True,
    "quantizer": {"quantize_type": "gsq", "num_embed": 1024, "embed_dim": 16, "num_group": 4},
}  # fmt: skip


def manifest(graphs=("tokenize", "detokenize"), **extra) -> dict:
    base = {
        "format": "gsq-deploy-artifact",
        "format_version": 1,
        "target": "onnx",
        "precision": "fp32",
        "num_embed": 1024,
        "num_group": 4,
        "downsample_factor": 8,
        "token_layout": "BHWG",
        "graphs": {name: {"file": f"{name}.onnx"} for name in graphs},
        "files": {},
        "config": CONFIG,
        "lookup": {"code_block": 65536},
        "validation": {"passed": True, "failures": []},
    }
    return base | extra


class RecordingRuntime(ArtifactRuntime):
    """An artifact runtime whose graphs are numpy functions; records (graph, batch) of each run."""

    backend = "recording"

    @classmethod
    def runs_on_gpu(cls, options) -> bool:
        return False

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.device_label = self.device_name({}, artifact)
        self.calls: list[tuple[str, int]] = []

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        self.calls.append((name, value.shape[0]))
        batch = value.shape[0]
        if name == "encoder":
            return np.full((batch, 16, value.shape[2] // 8, value.shape[3] // 8), 0.5, np.float32)
        if name in ("tokenize", "quantizer"):
            height, width = (value.shape[2] // 8, value.shape[3] // 8) if name == "tokenize" else value.shape[2:]
            return np.arange(batch * height * width * 4, dtype=np.int64).reshape(batch, height, width, 4) % 1024
        return np.zeros((batch, 3, value.shape[1] * 8, value.shape[2] * 8), np.float32) + float(value.flat[0])


def runtime(**options) -> RecordingRuntime:
    return RecordingRuntime(Artifact(Path("/nowhere"), manifest(**options)))


def images(batch: int = 2, height: int = 16, width: int = 24) -> np.ndarray:
    return np.linspace(-1, 1, batch * 3 * height * width, dtype=np.float32).reshape(batch, 3, height, width)


# -- check_images / check_codes --------------------------------------------------------------------------
def test_check_images_accepts_float_images_and_returns_float32():
    checked = check_images(images().astype(np.float64), 8)
    assert checked.dtype == np.float32 and checked.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(checked, images())
    assert check_images(np.zeros((1, 1, 8, 8), np.float32), 8, channels=1).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 8, 8), np.float32), r"shape \[B, 3, H, W\], got \[3, 8, 8\]"),
        (np.zeros((1, 4, 8, 8), np.float32), r"shape \[B, 3, H, W\], got \[1, 4, 8, 8\]"),
        (np.zeros((1, 3, 8, 8), np.uint8), "floating point"),
        (np.zeros((1, 3, 12, 8), np.float32), "12x8 is not a positive multiple of the downsampling factor 8"),
        (np.zeros((1, 3, 8, 4), np.float32), "8x4 is not a positive multiple"),
        (np.zeros((1, 3, 0, 8), np.float32), "0x8 is not a positive multiple"),
        (np.full((1, 3, 8, 8), 200.0, np.float32), "0..255"),
        (np.full((1, 3, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_check_images_refuses(bad, message):
    with pytest.raises(InputError, match=message):
        check_images(bad, 8)


def test_check_codes_accepts_the_full_id_range_and_returns_int64():
    codes = np.array([0, 1023, 5, 7] * 4, np.int32).reshape(1, 2, 2, 4)
    checked = check_codes(codes, 1024, 4, "BHWG")
    assert checked.dtype == np.int64 and checked.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(checked, codes)
    assert check_codes(np.zeros((2, 1, 3), np.uint16), 10, 1, "BHW").shape == (2, 1, 3)
    assert check_codes(np.zeros((1, 1, 2, 4), np.int64), 10, 4, "BHWG", min_positions=2).shape == (1, 1, 2, 4)


@pytest.mark.parametrize(
    "codes, layout, min_positions, message",
    [
        (np.zeros((1, 2, 2, 4), np.float32), "BHWG", 1, "must be integers, got dtype float32"),
        (np.zeros((1, 2, 2, 3), np.int64), "BHWG", 1, r"shape \[N, h, w, 4\] for this model, got \[1, 2, 2, 3\]"),
        (np.zeros((1, 2, 2), np.int64), "BHWG", 1, r"shape \[N, h, w, 4\]"),
        (np.zeros((1, 2, 2, 4), np.int64), "BHW", 1, r"shape \[N, h, w\] for this model"),
        (np.zeros((1, 0, 2, 4), np.int64), "BHWG", 1, "token grid 0x2 is empty"),
        (np.zeros((1, 2, 0, 4), np.int64), "BHWG", 1, "token grid 2x0 is empty"),
        (np.zeros((1, 1, 1, 4), np.int64), "BHWG", 2, "a 1x1 token grid cannot be decoded: .* at least 2 token positions"),
        (np.full((1, 2, 2, 4), 1024, np.int64), "BHWG", 1, r"token id 1024 is outside \[0, 1024\)"),
        (np.full((1, 2, 2, 4), -1, np.int64), "BHWG", 1, r"token id -1 is outside \[0, 1024\)"),
    ],
)
def test_check_codes_refuses(codes, layout, min_positions, message):
    with pytest.raises(InputError, match=message):
        check_codes(codes, 1024, 4, layout, min_positions)


def test_check_codes_names_the_worst_id_on_each_side():
    codes = np.zeros((1, 2, 2, 4), np.int64)
    codes.flat[3], codes.flat[5] = 2000, 1500
    with pytest.raises(InputError, match="token id 2000 is outside"):
        check_codes(codes, 1024, 4, "BHWG")
    codes.flat[0] = -7
    with pytest.raises(InputError, match="token id -7 is outside"):
        check_codes(codes, 1024, 4, "BHWG")


def test_static_exports_refuse_other_sizes_and_grids():
    static = Artifact(Path("/nowhere"), manifest(shapes={"dynamic": False, "batch": 2, "image_size": [16, 24]}))
    assert check_artifact_images(static, images()).shape == (2, 3, 16, 24)
    with pytest.raises(InputError, match=r"image size 24x16 does not match this static export \(16x24\).*--resize 16x24"):
        check_artifact_images(static, images(height=24, width=16))
    assert check_artifact_codes(static, np.zeros((1, 2, 3, 4), np.int64)).shape == (1, 2, 3, 4)
    with pytest.raises(InputError, match=r"token grid 3x2 does not match this static export \(2x3 for 16x24 images\)"):
        check_artifact_codes(static, np.zeros((1, 3, 2, 4), np.int64))
    dynamic = Artifact(Path("/nowhere"), manifest(input_channels=1, min_token_positions=2))
    assert check_artifact_images(dynamic, np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 1, 8, 8)
    with pytest.raises(InputError, match="at least 2 token positions"):
        check_artifact_codes(dynamic, np.zeros((1, 1, 1, 4), np.int64))


# -- run_in_chunks ------------------------------------------------------------------------------------------
def test_run_in_chunks_splits_in_order_and_pads_short_chunks():
    value = np.arange(7)[:, None] * np.ones((1, 2))
    seen = []

    def double(chunk):
        seen.append(chunk[:, 0].tolist())
        return chunk * 2

    np.testing.assert_array_equal(run_in_chunks(double, value, max_batch=3), value * 2)
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]
    seen.clear()
    np.testing.assert_array_equal(run_in_chunks(double, value, max_batch=3, min_batch=3), value * 2)
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]  # the last item repeated, its outputs dropped
    seen.clear()
    np.testing.assert_array_equal(run_in_chunks(double, value[:2], max_batch=4, min_batch=4), value[:2] * 2)
    assert seen == [[0, 1, 1, 1]]
    seen.clear()
    np.testing.assert_array_equal(run_in_chunks(double, value, max_batch=7), value * 2)
    assert seen == [list(range(7))]  # fits: one call, no copy
    seen.clear()
    run_in_chunks(double, value[:4], max_batch=4, min_batch=4)
    assert seen == [[0, 1, 2, 3]]


# -- graph choice ----------------------------------------------------------------------------------------------
def test_encode_runs_tokenize_or_encoder_then_quantizer():
    fused = runtime(graphs=("tokenize", "encoder", "quantizer", "detokenize"))
    codes = fused.encode(images())
    assert [name for name, _ in fused.calls] == ["tokenize"] and codes.shape == (2, 2, 3, 4)
    split = runtime(graphs=("encoder", "quantizer"))
    np.testing.assert_array_equal(split.encode(images()), codes)
    assert [name for name, _ in split.calls] == ["encoder", "quantizer"]
    with pytest.raises(ArtifactError, match="cannot encode: it has no tokenize graph .* --graphs tokenize"):
        runtime(graphs=("encoder", "detokenize")).encode(images())


def test_decode_prefers_detokenize_then_decoder():
    both = runtime(graphs=("decoder", "detokenize"))
    recon = both.decode(np.full((2, 2, 3, 4), 9, np.int64))
    assert [name for name, _ in both.calls] == ["detokenize"] and recon.shape == (2, 3, 16, 24)
    assert float(recon.max()) == 9.0
    decoder = runtime(graphs=("decoder",))
    decoder.decode(np.zeros((1, 2, 3, 4), np.int64))
    assert decoder.calls == [("decoder", 1)]
    with pytest.raises(ArtifactError, match="cannot decode: it has no detokenize or decoder graph .* --graphs detokenize"):
        runtime(graphs=("tokenize",)).decode(np.zeros((1, 2, 3, 4), np.int64))


def test_encode_latent_needs_the_encoder_graph():
    with_encoder = runtime(graphs=("encoder",))
    assert with_encoder.encode_latent(images()).shape == (2, 16, 2, 3)
    with pytest.raises(ArtifactError, match="cannot encode to latents: it has no encoder graph .* --graphs encoder"):
        runtime().encode_latent(images())


def test_inputs_are_checked_before_any_graph_runs():
    checked = runtime(graphs=("tokenize", "encoder", "detokenize"))
    for call in (checked.encode, checked.encode_latent):
        with pytest.raises(InputError, match="multiple of the downsampling factor"):
            call(images(height=12))
    with pytest.raises(InputError, match="outside"):
        checked.decode(np.full((1, 2, 2, 4), 1024, np.int64))
    assert checked.calls == []


# -- the memory budget ----------------------------------------------------------------------------------------
def test_batches_run_in_chunks_that_fit_the_budget(monkeypatch):
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", "16M")
    limited = runtime(graphs=("tokenize", "encoder", "detokenize"))
    per_call = limited.work_limit(64, 64, "encode")
    lookup_bytes = 4 * 4 * 1024  # G x min(V, code_block) fp32 scores per token
    assert per_call == batch_limit(CONFIG, 64, 64, "encode", lookup_bytes_per_token=lookup_bytes)
    assert limited.work_limit(64, 64, "decode") == batch_limit(CONFIG, 64, 64, "decode", lookup_bytes_per_token=0)
    assert 1 <= per_call < 10
    batch = images(batch=10, height=64, width=64)
    limited.encode(batch)
    limited.encode_latent(batch)
    sizes = [size for _, size in limited.calls]
    assert sum(sizes) == 20 and max(sizes) == per_call
    small_block = runtime(lookup={"code_block": 16})
    assert small_block.work_limit(64, 64, "encode") == batch_limit(CONFIG, 64, 64, "encode", lookup_bytes_per_token=4 * 4 * 16)
    window = runtime(lookup={"code_block": 65536, "scratch_bytes_per_vector": 96})  # a window lookup's few codes
    assert window.work_limit(64, 64, "encode") == batch_limit(CONFIG, 64, 64, "encode", lookup_bytes_per_token=4 * 96)
    assert window.work_limit(64, 64, "encode") > per_call
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", "1M")
    with pytest.raises(InputError, match="--resize"):
        limited.encode(images(batch=1, height=512, width=512))


def test_chunks_follow_the_height_and_width_of_the_call(monkeypatch):
    """Non-square images and token grids: each direction's chunk is its limit at that height and width."""
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", "16M")
    limited = runtime(graphs=("tokenize", "detokenize"))
    encode_limit, decode_limit = limited.work_limit(64, 128, "encode"), limited.work_limit(64, 128, "decode")
    assert encode_limit not in (limited.work_limit(128, 128, "encode"), limited.work_limit(64, 64, "encode"))
    assert decode_limit not in (limited.work_limit(128, 128, "decode"), limited.work_limit(64, 64, "decode"))
    limited.encode(images(batch=3 * encode_limit, height=64, width=128))
    assert max(size for _, size in limited.calls) == encode_limit
    limited.calls.clear()
    limited.decode(np.zeros((3 * decode_limit, 8, 16, 4), np.int64))  # [N, h, w, G] of 64 x 128 images
    assert max(size for _, size in limited.calls) == decode_limit


# -- artifacts on disk: target and validation --------------------------------------------------------------------
def write_artifact(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "tokenize.onnx").write_bytes(b"not a real graph")
    entry = {"sha256": file_sha256(folder / "tokenize.onnx"), "size": 16}
    (folder / "manifest.json").write_text(json.dumps(manifest(graphs=("tokenize",), files={"tokenize.onnx": entry}) | extra))
    return folder


def test_open_artifact_checks_the_target_and_the_validation(tmp_path):
    good = open_artifact(write_artifact(tmp_path / "good"), "onnx")
    assert good.num_embed == 1024 and good.manifest["validation"]["passed"]
    assert open_artifact(write_artifact(tmp_path / "unvalidated", validation=None), "onnx").manifest["validation"] is None
    with pytest.raises(ArtifactError, match=r"holds a 'onnx' export; the openvino runtime needs --target openvino"):
        open_artifact(tmp_path / "good", "openvino")
    failed = write_artifact(tmp_path / "failed", validation={"passed": False, "failures": ["encoder: latent error", "x"]})
    with pytest.raises(ArtifactError, match=r"failed validation against eager \(encoder: latent error; x\); not running it"):
        open_artifact(failed, "onnx")
    no_reasons = write_artifact(tmp_path / "no-reasons", validation={"passed": False})
    with pytest.raises(ArtifactError, match=r"failed validation against eager \(see manifest.json\)"):
        open_artifact(no_reasons, "onnx")
    unknown = write_artifact(tmp_path / "unknown", validation={"failures": []})
    with pytest.raises(ArtifactError, match=r"failed validation against eager \(see manifest.json\)"):
        open_artifact(unknown, "onnx")


def test_info_reports_the_artifact():
    info = runtime(graphs=("tokenize", "detokenize")).info
    files_sha256 = hashlib.sha256(json.dumps({}, sort_keys=True).encode()).hexdigest()
    assert info == ModelInfo(
        backend="recording",
        model="/nowhere",
        model_sha256=files_sha256,
        precision="fp32",
        device="cpu",
        num_embed=1024,
        num_group=4,
        downsample_factor=8,
        token_layout="BHWG",
        min_token_positions=1,
        fixed_image_size=None,
        graphs=("tokenize", "detokenize"),
        graph_precisions={"tokenize": "fp32", "detokenize": "fp32"},
        validated=True,
        settings={},
    )
    assert json.loads(json.dumps(info.to_dict()))["graphs"] == ["tokenize", "detokenize"]
    with pytest.raises(AttributeError):
        info.num_embed = 7  # frozen
    with pytest.raises(TypeError):
        info.graph_precisions["tokenize"] = "int8"  # and so are its mappings
    assert runtime(validation=None).info.validated is False
    static = runtime(shapes={"dynamic": False, "batch": 2, "image_size": [16, 24]}, min_token_positions=2)
    assert static.info.fixed_image_size == (16, 24) and static.info.min_token_positions == 2
    other = runtime(files={"tokenize.onnx": {"sha256": "0" * 64, "size": 1}})
    assert other.info.model_sha256 != files_sha256  # the files' checksums are the model's identity
    mixed = runtime(graphs=("tokenize", "detokenize"), precision="int8")
    mixed.artifact.manifest["graphs"]["tokenize"]["precision"] = "fp32"  # encoder=fp32,decoder=int8
    assert mixed.info.graph_precisions == {"tokenize": "fp32", "detokenize": "int8"}


def test_a_missing_graph_names_what_the_artifact_has():
    decoder_only = runtime(graphs=("detokenize", "decoder"))
    with pytest.raises(ArtifactError, match=r"no tokenize graph .*\(exported: detokenize, decoder\); re-export with --graphs tokenize"):
        decoder_only.encode(images())
