"""Memory bounded by the work, not by what a small file claims (gsq_core.budgets).

A 186 KB PNG of 8000 x 8000 pixels, a token file with a 1024 x 1024 grid: refused before the work
starts, with the `--resize` way out, and the CLI's peak memory stays under 4 GB.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.hostile_support import PEAK_LIMIT_BYTES, assert_one_line_error, blank_png, run_cli

from gsq_core import InputError
from gsq_core.budgets import batch_limit, memory_budget, parse_bytes, work_bytes


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = blank_png(tmp_path_factory.mktemp("huge") / "huge.png", 8000, 8000)
    assert path.stat().st_size < 10**6
    return path


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_encode_of_a_huge_small_png_is_refused_up_front(tmp_path, default_onnx, huge_png, backend):
    model = str(default_onnx) if backend == "onnx" else "default"
    result = run_cli(["-m", f"runtimes.{backend}", "encode", "--model", model, "--output", str(tmp_path / "t.npz"),
                      str(huge_png)])
    assert_one_line_error(result, "huge.png", "8000x8000", "--resize", "GSQ_MEMORY_BUDGET")
    assert not (tmp_path / "t.npz").exists()


def test_resize_is_the_way_out_within_4_gb(tmp_path, default_onnx, huge_png):
    result = run_cli(["-m", "runtimes.onnx", "encode", "--model", str(default_onnx), "--output",
                      str(tmp_path / "t.npz"), "--resize", "256x256", str(huge_png)])
    assert result.returncode == 0, result.stderr
    assert result.peak_bytes < PEAK_LIMIT_BYTES
    with np.load(tmp_path / "t.npz") as tokens:
        assert tokens["codes"].shape == (1, 32, 32, 32)


def test_decode_of_a_huge_grid_is_refused_before_allocating(default_model, default_onnx):
    from gsq_deploy.runtimes import load_runtime

    codes = np.zeros((1, 1024, 1024, default_model.num_group), np.int64)  # an 8192 x 8192 image
    onnx = load_runtime("onnx", default_onnx)
    for decode in (lambda: default_model.decode(torch.from_numpy(codes)), lambda: onnx.decode(codes)):
        with pytest.raises(InputError, match="8192x8192"):
            decode()


def test_eager_api_refuses_a_huge_image_and_chunks_big_batches(default_model, monkeypatch):
    with pytest.raises(InputError, match="--resize"):
        default_model.encode(torch.zeros(1, 3, 4096, 4096))
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    codes, decoded = default_model.encode(images), default_model.decode(default_model.encode(images))
    one_image = work_bytes(default_model.config, 32, 32, "decode")
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", str(2 * one_image))  # two images per call
    assert batch_limit(default_model.config, 32, 32, "decode") == 2
    torch.testing.assert_close(default_model.encode(images), codes, rtol=0, atol=0)
    # conv rounding varies with batch
    torch.testing.assert_close(default_model.decode(codes), decoded, rtol=0, atol=1e-5)


def test_runtime_chunks_within_the_budget_with_identical_tokens(default_model, default_onnx, monkeypatch):
    from gsq_deploy.runtimes import load_runtime

    runtime = load_runtime("onnx", default_onnx)
    images = (torch.rand(3, 3, 32, 32) * 2 - 1).numpy()
    whole = runtime.encode(images)
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", "1K")
    with pytest.raises(InputError, match="GSQ_MEMORY_BUDGET"):
        runtime.encode(images)
    # the exported lookup's scratch per token, as the manifest states it (window or dense lookup)
    lookup = default_model.num_group * runtime.artifact.lookup_scratch_bytes_per_vector
    monkeypatch.setenv("GSQ_MEMORY_BUDGET", str(work_bytes(default_model.config, 32, 32, "encode", lookup)))
    assert runtime.work_limit(32, 32, "encode") == 1  # one image per graph run
    np.testing.assert_array_equal(runtime.encode(images), whole)


def test_budget_parsing():
    assert parse_bytes("3G", "x") == 3 * 2**30 and parse_bytes("512m", "x") == 512 * 2**20
    assert parse_bytes("1000", "x") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(InputError):
            parse_bytes(bad, "x")
    assert memory_budget() > 0
