"""Every backend keeps the same contract, run by one parametrized test module over the registered
backends (runtimes.BACKENDS; trt skipped, with the reason, where TensorRT or a CUDA GPU is missing):

- encode: int64 tokens [B, h, w, G], equal to eager PyTorch's in every group and position, or a
  near-tie (float64 score gap <= 1e-5 under the eager latent); the latent (where exposed) within
  fp32 rounding of eager's;
- decode: float32 images [B, 3, H, W] equal to eager's decode (PSNR > 60 dB), and a permutation
  of the groups decodes another image (issue 11's planted faults: swapped groups, mirrored or
  transposed grids, a latent off by 1e-3, cannot pass);
- info: a frozen ModelInfo with the model's facts, the same as runtimes.describe(...) gives;
- bad input (shapes, sizes, dtypes, ids outside [0, V), unknown options) raises InputError.

One small export of gsq_f8_magvit (G = 4 groups of d = 4), unvalidated so that a fault in a graph is
seen here, not only by the exporter's validation, on scikit-image photos, square and not.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import FLEXGEN

from gsq_core import load_tokenizer
from gsq_core.errors import InputError
from gsq_core.fidelity import psnr, score_gaps
from gsq_core.images import uint8_to_float
from gsq_core.prepare import sample_photo
from gsq_deploy.runtimes import BACKENDS, ModelInfo, describe, load_runtime

CHECKPOINT = FLEXGEN / "gsq_f8_magvit.pt"
GRAPHS = ("encoder", "tokenize", "detokenize")
# Relative latent error of an fp32 export: rounding only (measured ~1e-6 here). 1e-3 is a fault.
LATENT_RELATIVE_LIMIT = 1e-4
NEAR_TIE = 1e-5


def skip_reason(backend: str) -> str | None:
    """Why a backend cannot run on this machine, or None."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'gsq-deploy[openvino]')"
    if backend == "trt":
        from gsq_deploy.runtimes.trt import missing_requirements

        missing = missing_requirements()
        if missing:
            return f"TensorRT engines need TensorRT and a CUDA GPU: {'; '.join(missing)}"
    return None


def photos(height: int, width: int) -> np.ndarray:
    """Two scikit-image photos cropped to height x width, float [2, 3, H, W] in [-1, 1]."""
    crops = [
        sample_photo("astronaut")[60 : 60 + height, 170 : 170 + width],
        sample_photo("coffee")[100 : 100 + height, 200 : 200 + width],
    ]
    return np.stack([uint8_to_float(np.ascontiguousarray(crop)) for crop in crops])


@pytest.fixture(scope="module")
def model():
    return load_tokenizer(CHECKPOINT)


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request, model, tmp_path_factory):
    """(backend name, the model it opens: the checkpoint for torch, an unvalidated export otherwise)."""
    name = request.param
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    if name == "torch":
        return name, CHECKPOINT
    from gsq_deploy.exporters.build import ExportOptions, export

    out: Path = tmp_path_factory.mktemp(f"conformance-{name}") / "magvit"
    export(model, out, name, ExportOptions(graphs=GRAPHS, validate=False, progress=False))
    return name, out


@pytest.fixture(scope="module")
def runtime(backend):
    opened = load_runtime(*backend)
    yield opened
    opened.close()


@pytest.fixture(scope="module", params=[(64, 64), (48, 80)], ids=["square", "wide"])
def case(request, model):
    """Photos of one size and the eager model's latent, codes and reconstruction of them."""
    images = photos(*request.param)
    with torch.no_grad():
        latent = model.encode_latent(torch.from_numpy(images)).numpy()
        codes = model.quantizer.codes(torch.from_numpy(latent)).numpy()
        recon = model.decode(torch.from_numpy(codes)).numpy()
    return images, latent, codes, recon


def test_tokens_equal_eager_or_are_near_ties(runtime, model, case):
    images, latent, codes, _ = case
    got = runtime.encode(images)
    assert got.dtype == np.int64
    assert got.shape == codes.shape == (images.shape[0], images.shape[2] // 8, images.shape[3] // 8, model.num_group)
    # The photos make every group and position distinct, so a permutation cannot agree by chance.
    assert (codes != codes[..., ::-1]).any() and (codes != codes[:, :, ::-1]).any()
    gaps = score_gaps(latent, got, model.quantizer.lookup_spec())
    assert gaps.max() <= NEAR_TIE, f"a token {gaps.max():.2e} worse than the best code"
    differ = got != codes
    assert differ.mean() <= 0.001, f"{differ.sum()} tokens differ from eager's"  # near-ties are rare


def test_latent_equals_eager_within_fp32_rounding(runtime, case):
    images, latent, _, _ = case
    got = runtime.encode_latent(images)
    assert got.shape == latent.shape and got.dtype == np.float32
    relative = np.abs(got.astype(np.float64) - latent).max() / np.abs(latent).max()
    assert relative <= LATENT_RELATIVE_LIMIT, f"latent off eager by {relative:.2e} of its magnitude"


def test_decode_equals_eager(runtime, case):
    images, _, codes, recon = case
    got = runtime.decode(codes)
    assert got.dtype == np.float32 and got.shape == recon.shape == images.shape
    assert min(psnr(r, g) for r, g in zip(recon, got)) > 60.0
    # A decoder that read the groups' codebook rows in another order decodes another image.
    assert psnr(recon[0], runtime.decode(np.ascontiguousarray(codes[..., ::-1]))[0]) < 40.0


def test_info_is_a_frozen_model_info_with_the_models_facts(backend, runtime, model):
    name, path = backend
    info = runtime.info
    assert isinstance(info, ModelInfo)
    assert (info.backend, info.precision, info.model) == (name, "fp32", str(path))
    facts = (info.num_embed, info.num_group, info.downsample_factor, info.token_layout, info.min_token_positions)
    assert facts == (model.num_embed, model.num_group, 8, "BHWG", model.min_token_positions)
    assert len(info.model_sha256) == 64 and info.fixed_image_size is None
    assert set(info.graphs) == (set() if name == "torch" else set(GRAPHS))
    with pytest.raises(FrozenInstanceError):
        info.precision = "int8"  # type: ignore[misc]
    assert json.loads(json.dumps(info.to_dict())) == info.to_dict()
    # described without this runtime: the same facts (a CPU configuration is opened and closed, a
    # GPU one read from the files, without its engine's settings)
    described = describe(name, path)
    assert described == (replace(info, settings={}) if runtime.runs_on_gpu({}) else info)


# Options that ask each backend for a GPU (the driver of a cluster may have none)
GPU_OPTIONS = {"torch": {"device": "cuda"}, "onnx": {"provider": "cuda"}, "openvino": {"device": "GPU"}, "trt": {}}


def test_a_gpu_configuration_is_described_from_the_files_without_a_gpu(backend, runtime, monkeypatch):
    """describe() with GPU options never opens the runtime (which, here, could refuse: no CUDA)."""
    name, path = backend
    options = GPU_OPTIONS[name]
    assert type(runtime).runs_on_gpu(options) and (name == "trt" or not type(runtime).runs_on_gpu({}))

    def no_opening(*args, **kwargs):
        raise AssertionError("describe opened the runtime for a GPU configuration")

    monkeypatch.setattr(type(runtime), "__init__", no_opening)
    described = describe(name, path, **options)
    token_facts = ("backend", "model", "model_sha256", "precision", "num_embed", "num_group", "downsample_factor",
                   "token_layout", "min_token_positions", "fixed_image_size", "graphs")  # fmt: skip
    assert {key: getattr(described, key) for key in token_facts} == {key: getattr(runtime.info, key) for key in token_facts}
    assert described.device.lower().startswith(("cuda", "gpu"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 64, 64), np.float32), r"shape \[B, 3, H, W\]"),
        (np.zeros((1, 4, 64, 64), np.float32), r"shape \[B, 3, H, W\]"),
        (np.zeros((1, 3, 60, 64), np.float32), "not a positive multiple of the downsampling factor 8"),
        (np.zeros((1, 3, 64, 64), np.uint8), "floating point"),
        (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN"),
    ],
    ids=["no-batch-axis", "four-channels", "size", "uint8", "nan"],
)
def test_bad_images_are_refused(runtime, bad, message):
    with pytest.raises(InputError, match=message):
        runtime.encode(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((1, 8, 8, 4), 1024, np.int64), r"token id 1024 is outside \[0, 1024\)"),
        (np.full((1, 8, 8, 4), -1, np.int64), r"token id -1 is outside \[0, 1024\)"),
        (np.zeros((1, 8, 8, 3), np.int64), r"shape \[N, h, w, 4\]"),
        (np.zeros((1, 8, 8, 4), np.float32), "must be integers"),
    ],
    ids=["too-large", "negative", "wrong-groups", "float"],
)
def test_bad_tokens_are_refused(runtime, bad, message):
    with pytest.raises(InputError, match=message):
        runtime.decode(bad)


def test_an_option_the_backend_does_not_take_is_refused(backend):
    name, path = backend
    with pytest.raises(InputError, match=rf"the {name} backend has no option 'bogus' \(its options: "):
        load_runtime(name, path, bogus=1)
    with pytest.raises(InputError, match="has no option 'bogus'"):
        describe(name, path, bogus=1)
