"""The exported window lookup in ONNX Runtime and OpenVINO, run as users run it (runtimes.onnx,
runtimes.openvino on a quantizer-only export), on the adversarial probes and codebooks of
tests/exporters/test_lookup_graph_cells.py (cell edges of the graph's own grid and one ulp either side, code
angles, +-pi, zero and tiny vectors, duplicate codes; d = 1 and 2; V = 1,024, 65,536 and 262,144),
held to the criterion stated there: the chosen code's fp32 score, computed the graph's way, is within
the derived bound B (~6e-7 .. 1.3e-6) of the best fp32 score over all V codes, exact ties to the lowest index."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pytest

from gsq_deploy.exporters.onnx import export_onnx
from gsq_deploy.runtimes.onnx import OnnxRuntime
from tests.exporters.test_lookup_graph import as_latent
from tests.exporters.test_lookup_graph_cells import SIZES, check_against_brute_force, planned

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
BACKENDS = ["onnxruntime", pytest.param("openvino", marks=needs_openvino)]


@lru_cache(maxsize=None)
def exported(dim: int, size: int, backend: str, root: str) -> Path:
    """One quantizer-only export per codebook and backend (no encoder or decoder graph)."""
    model, tables, _, _, _, _ = planned(dim, size)
    out = Path(root) / f"d{dim}-v{size}-{backend}"
    if backend == "onnxruntime":
        manifest = export_onnx(model, out, graphs=("quantizer",), validate=False, progress=False)
    else:
        from gsq_deploy.exporters.openvino import export_openvino

        manifest = export_openvino(model, out, graphs=("quantizer",), validate=False, progress=False)
    assert manifest["lookup"]["method"] == "window" and manifest["lookup"]["cells"] == tables.cells
    return out


def run_quantizer(backend: str, artifact: Path, latent):
    if backend == "onnxruntime":
        return OnnxRuntime(artifact, threads=2).run_graph("quantizer", latent)
    from gsq_deploy.runtimes.openvino import OpenVinoRuntime

    return OpenVinoRuntime(artifact, threads=2).run_graph("quantizer", latent)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lookup-edges"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dim", [2, 1])
def test_exported_window_lookup_matches_the_fp32_brute_force(dim, size, backend, root):
    _, _, vectors, _, _, _ = planned(dim, size)
    codes = run_quantizer(backend, exported(dim, size, backend, root), as_latent(vectors))
    check_against_brute_force(dim, size, codes)
