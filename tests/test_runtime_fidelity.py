"""What a user's runtime returns equals the eager reference: latents, every token in its group and
position, and decoded images (issue 11: planted faults that used to pass).

One small export (gsq_f8_magvit: G = 4 groups of d = 4, unvalidated so that a fault in a graph is seen
here, not only by validation) run through runtimes.load_runtime on scikit-image photos, square and
not, so that swapped groups, mirrored or transposed grids and a latent off by 1e-3 cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLEXGEN

from exporters.onnx import export_onnx
from gsq_core import load_tokenizer
from gsq_core.fidelity import psnr, score_gaps
from gsq_core.images import uint8_to_float
from gsq_core.prepare import sample_photo
from runtimes import load_runtime

# Relative latent error of an fp32 export: rounding only (measured ~1e-6 here). 1e-3 is a fault.
LATENT_RELATIVE_LIMIT = 1e-4


def photos(height: int, width: int) -> np.ndarray:
    """Two scikit-image photos cropped to height x width, float [2, 3, H, W] in [-1, 1]."""
    crops = [sample_photo("astronaut")[60 : 60 + height, 170 : 170 + width], sample_photo("coffee")[100 : 100 + height, 200 : 200 + width]]
    return np.stack([uint8_to_float(np.ascontiguousarray(crop)) for crop in crops])


@pytest.fixture(scope="module")
def model():
    return load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt")


@pytest.fixture(scope="module")
def runtime(model, tmp_path_factory):
    out: Path = tmp_path_factory.mktemp("fidelity") / "magvit"
    export_onnx(model, out, graphs=("encoder", "tokenize", "detokenize"), validate=False, progress=False)
    return load_runtime("onnx", out, threads=1)


@pytest.fixture(scope="module", params=[(64, 64), (48, 80)], ids=["square", "wide"])
def case(request, model):
    """Photos of one size and the eager model's latent, codes and reconstruction of them."""
    images = photos(*request.param)
    with torch.no_grad():
        latent = model.encode_latent(torch.from_numpy(images)).numpy()
        codes = model.quantizer.codes(torch.from_numpy(latent)).numpy()
        recon = model.decode(torch.from_numpy(codes)).numpy()
    return images, latent, codes, recon


def test_latent_equals_eager_within_fp32_rounding(runtime, case):
    images, latent, _, _ = case
    got = runtime.encode_latent(images)
    assert got.shape == latent.shape and got.dtype == np.float32
    relative = np.abs(got.astype(np.float64) - latent).max() / np.abs(latent).max()
    assert relative <= LATENT_RELATIVE_LIMIT, f"latent off eager by {relative:.2e} of its magnitude"


def test_every_token_equals_eager_in_its_group_and_position(runtime, model, case):
    images, latent, codes, _ = case
    got = runtime.encode(images)
    assert got.shape == codes.shape == (images.shape[0], images.shape[2] // 8, images.shape[3] // 8, model.num_group)
    # The photos make every group and position distinct, so a permutation cannot agree by chance.
    assert (codes != codes[..., ::-1]).any() and (codes != codes[:, :, ::-1]).any()
    np.testing.assert_array_equal(got, codes)
    assert score_gaps(latent, got, model.quantizer.lookup_spec()).max() <= 1e-5


def test_decode_equals_eager(runtime, case):
    _, _, codes, recon = case
    got = runtime.decode(codes)
    assert got.shape == recon.shape
    assert min(psnr(r, g) for r, g in zip(recon, got)) > 60.0
    # A decoder that read the groups' codebook rows in another order decodes another image.
    assert psnr(recon[0], runtime.decode(np.ascontiguousarray(codes[..., ::-1]))[0]) < 40.0
