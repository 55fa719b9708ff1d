"""Shared, cached artifacts for the tests of the issue-4 targets (tests/test_targets_*.py).

Each conformance model is exported to fp32 ONNX once per test process (and converted to fp16 /
int8 once), in a temporary folder removed at exit, so the target modules share the expensive work.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from conftest import FLEXGEN

REPO = Path(__file__).resolve().parents[1]
FP32_GRAPHS = ("quantizer", "tokenize", "detokenize")
needs_fp16 = pytest.mark.skipif(
    importlib.util.find_spec("onnxconverter_common") is None,
    reason="onnxconverter-common is not installed (pip install 'gsq-deploy[fp16]')",
)
FP16 = pytest.param("fp16", marks=needs_fp16)
_ROOT = Path(tempfile.mkdtemp(prefix="gsq-targets-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@lru_cache(maxsize=None)
def eager(name: str):
    """The eager tokenizer of a conformance checkpoint."""
    from gsq_core import load_tokenizer

    return load_tokenizer(FLEXGEN / f"{name}.pt")


@lru_cache(maxsize=None)
def fp32_onnx(name: str) -> Path:
    """fp32 ONNX artifact (dynamic shapes, not validated: test_export_onnx covers that) of a model."""
    from exporters.onnx import export_onnx

    out = _ROOT / f"{name}-onnx-fp32"
    export_onnx(eager(name), out, graphs=FP32_GRAPHS, validate=False, progress=False)
    return out


@lru_cache(maxsize=None)
def reduced_onnx(name: str, precision: str) -> Path:
    """fp16 / int8 (or per-part, e.g. "encoder=fp32,decoder=int8") ONNX artifact of a model,
    validated against eager on the model's fixture images."""
    from exporters.build import ExportOptions, convert
    from exporters.precision import PrecisionPlan

    plan = PrecisionPlan.parse(precision)
    out = _ROOT / f"{name}-onnx-{plan.slug}"
    options = ExportOptions(precision=plan, calib_images=FLEXGEN / f"{name}_images", progress=False)
    convert(eager(name), fp32_onnx(name), out, "onnx", options)
    return out


def run_module(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m <args>` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, exactly one line on stderr starting with 'error:', no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
