"""Shared test fixtures: conformance vectors, small models, real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
