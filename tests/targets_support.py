"""Shared, cached artifacts for the tests of the issue-4 targets (tests/exporters/test_targets_*.py).

Each conformance model is exported to fp32 ONNX once per test process (and converted to fp16 /
int8 once), in a temporary folder removed at exit, so the target modules share the expensive work.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from tests.conftest import FLEXGEN

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
    from gsq_deploy.exporters.onnx import export_onnx

    out = _ROOT / f"{name}-onnx-fp32"
    export_onnx(eager(name), out, graphs=FP32_GRAPHS, validate=False, progress=False)
    return out


@lru_cache(maxsize=None)
def reduced_onnx(name: str, precision: str) -> Path:
    """fp16 / int8 (or per-part, e.g. "encoder=fp32,decoder=int8") ONNX artifact of a model,
    validated against eager on the model's fixture images."""
    from gsq_deploy.exporters.build import ExportOptions, convert
    from gsq_deploy.exporters.precision import PrecisionPlan

    plan = PrecisionPlan.parse(precision)
    out = _ROOT / f"{name}-onnx-{plan.slug}"
    options = ExportOptions(precision=plan, calib_images=FLEXGEN / f"{name}_images", progress=False)
    convert(eager(name), fp32_onnx(name), out, "onnx", options)
    return out
