"""Shared test fixtures and helpers: conformance vectors, small models, running a module, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
FLEXGEN = FIXTURES / "flexgen"
CONFORMANCE_MODELS = ("gsq_f8_magvit", "vq_f16_attn")
CONFORMANCE_SIZES = ("64x64", "96x128")
IBQ = FIXTURES / "ibq"
IBQ_MODEL = IBQ / "ibq_tiny_f4_k1024"  # .ckpt (Lightning, SEED-Voken), .yaml beside it, .expected.npz


def ibq_expected() -> dict[str, np.ndarray]:
    with np.load(IBQ_MODEL.with_suffix(".expected.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def flexgen_dir() -> Path:
    return FLEXGEN


def expected_vectors(name: str) -> dict[str, np.ndarray]:
    with np.load(FLEXGEN / f"{name}.expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def default_model():
    """The embedded default tokenizer (eager); tests must not change it."""
    from gsq_core import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory, default_model) -> Path:
    """The default model's tokenize and detokenize graphs (fp32, unvalidated), exported once per session:
    read-only; copy it before tampering."""
    from gsq_deploy.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("default-onnx") / "default-onnx"
    export_onnx(default_model, out, graphs=("tokenize", "detokenize"), validate=False, progress=False)
    return out


def gradient(height: int, width: int):
    """An RGB PIL image whose pixels tell where they came from (row, column, a mix)."""
    from PIL import Image

    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([rows * 255 // max(1, height - 1), cols * 255 // max(1, width - 1), (rows * 7 + cols * 3) % 256], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def token_table(ids: list[str], num_embed: int = 1024):
    """A pyarrow table of token rows in gsq-tokenize's schema: 2x2 grids of G=4, row i filled with i."""
    import pyarrow as pa

    from gsq_dataset.tokens import token_schema

    grids = [np.full(2 * 2 * 4, i % num_embed, np.int16) for i in range(len(ids))]
    return pa.table(
        {
            "id": ids,
            "label": [None] * len(ids),
            "tokens": pa.array([g.tolist() for g in grids], pa.list_(pa.int16())),
            "token_height": pa.array([2] * len(ids), pa.int32()),
            "token_width": pa.array([2] * len(ids), pa.int32()),
        },
        schema=token_schema(num_embed),
    )


def tiny_gsq_model():
    """A fast GSQ tokenizer with random weights (hidden 32, no res blocks, V=256, G=4 x d=2, l2):
    for tests of the exported graphs and their runtimes, not of fidelity."""
    from gsq_core import QuantizerConfig, TokenizerConfig, build_tokenizer

    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1, 1),
        encoder_layer_configs=(0, 0, 0),
        decoder_layer_configs=(0, 0, 0),
        embedding_dim=8,
        quantizer=QuantizerConfig(quantize_type="gsq", num_embed=256, embed_dim=8, num_group=4, use_l2_norm=True),
    )
    return build_tokenizer(config, seed=0).eval()


# -- command-line runs -------------------------------------------------------------------------------------
class Completed(Protocol):
    """What a finished command left: subprocess.CompletedProcess, hostile_support.CliResult."""

    returncode: int
    stdout: str
    stderr: str


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ARGS...` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: Completed, *fragments: str) -> str:
    """Non-zero exit, no traceback, exactly one non-blank stderr line, starting `error: ` and holding every
    fragment; returns that line."""
    assert result.returncode != 0, f"exit 0; stdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
