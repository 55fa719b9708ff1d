"""Official flex_gen checkpoints reproduce the upstream conformance vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import CONFORMANCE_MODELS, CONFORMANCE_SIZES, FLEXGEN, expected_vectors
from gsq_core import load_tokenizer
from gsq_core.fidelity import score_gaps


@pytest.fixture(scope="module", params=CONFORMANCE_MODELS)
def conformance(request):
    return request.param, load_tokenizer(FLEXGEN / f"{request.param}.pt"), expected_vectors(request.param)


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_latent_matches_upstream(conformance, size):
    _, model, expected = conformance
    latent = model.encode_latent(torch.from_numpy(expected[f"input_{size}"])).detach().numpy()
    reference = expected[f"latent_{size}"]
    assert latent.shape == reference.shape
    assert np.abs(latent - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_decode_of_upstream_codes_matches_recon(conformance, size):
    _, model, expected = conformance
    codes = torch.from_numpy(expected[f"codes_{size}"])
    np.testing.assert_allclose(model.codes_to_latent(codes).numpy(), expected[f"quantized_{size}"], atol=1e-6)
    recon = model.decode(codes).numpy()
    assert np.abs(recon - expected[f"recon_{size}"]).max() <= 2e-3


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_tokens_are_optimal_choices(conformance, size):
    name, model, expected = conformance
    images = torch.from_numpy(expected[f"input_{size}"])
    codes = model.encode(images).numpy()
    upstream_codes = expected[f"codes_{size}"]
    assert codes.shape == upstream_codes.shape and codes.dtype == np.int64
    latent = model.encode_latent(images).detach().numpy()
    gaps = score_gaps(latent, codes, model.quantizer.lookup_spec())
    assert gaps.max() <= 1e-6, f"{name} {size}: a token is {gaps.max():.2e} below the best code"
    # Where our token differs from upstream's, upstream's choice must be a near-tie for our latent too.
    upstream_gaps = score_gaps(latent, upstream_codes, model.quantizer.lookup_spec())
    differing = codes != upstream_codes
    assert upstream_gaps.reshape(codes.shape)[differing].max(initial=0.0) <= 1e-6
    assert differing.mean() <= 1e-3
