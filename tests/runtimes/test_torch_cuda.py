"""The eager runtime on CUDA gives the CPU reference's tokens (runs only where CUDA is present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsq_core.fidelity import score_gaps
from gsq_core.images import uint8_to_float
from gsq_core.prepare import sample_photo
from gsq_deploy.runtimes.torch import TorchRuntime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


def test_cuda_tokens_match_cpu_up_to_near_ties_with_tf32_left_on_by_the_caller() -> None:
    pixels = uint8_to_float(sample_photo("astronaut")[128:384, 128:384])[None]
    cpu, cuda = TorchRuntime("default"), TorchRuntime("default", device="cuda")
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default; the runtime must switch it off for its calls
    try:
        codes_cuda = cuda.encode(pixels)
        assert torch.backends.cudnn.allow_tf32, "the runtime must restore the caller's TF32 setting"
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    spec = cpu.model.quantizer.lookup_spec()
    gaps = score_gaps(cpu.encode_latent(pixels), codes_cuda, spec)
    assert (codes_cuda == cpu.encode(pixels)).mean() > 0.999
    assert gaps.max() <= 1e-6
    recon_cpu, recon_cuda = cpu.decode(codes_cuda), cuda.decode(codes_cuda)
    assert np.abs(recon_cpu - recon_cuda).max() < 1e-3
