"""Training an IBQ tokenizer (train/configs/ibq_smoke.yaml): it runs, resumes, and exports validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tests.conftest import IBQ
from tests.train_support import train_in_process

ROOT = Path(__file__).parents[2]
IBQ_SMOKE = ROOT / "train" / "configs" / "ibq_smoke.yaml"
IBQ_PAPER = ROOT / "train" / "configs" / "ibq_f16_d256_v16k.yaml"


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::UserWarning"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_configs_build_ibq_models():
    from gsq_deploy.train.config import load_config

    smoke = load_config(IBQ_SMOKE).tokenizer_config()
    assert smoke.family == "ibq" and smoke.quantizer.quantize_type == "ibq" and smoke.downsample_factor == 4
    paper = load_config(IBQ_PAPER).tokenizer_config()
    assert (paper.family, paper.downsample_factor, paper.quantizer.num_embed, paper.quantizer.embed_dim) == (
        "ibq", 16, 16384, 256)
    assert paper.attention_levels() == ([False, False, False, False, True], [False, False, False, False, True])
    # A partial quantizer completes the family's own default: IBQ's, not GSQ's l2-normalised one.
    partial = load_config(IBQ_SMOKE, ["model.quantizer={num_embed: 32, embed_dim: 8}"]).tokenizer_config()
    assert partial.quantizer.quantize_type == "ibq" and partial.quantizer.lookup_normalization == "none"


def test_index_backpropagation_reaches_every_code_and_matches_upstreams_objective():
    """Gradient flows to every codebook row (the softmax of all logits), and the loss is upstream's
    mean((z_q - z)^2) + mean((hard - z)^2) + beta * mean((hard - z)^2), z_q = straight-through one-hot @ E."""
    from gsq_core.ibq_config import ibq_quantizer
    from gsq_core.quantizers import build_quantizer

    torch.manual_seed(0)
    quantizer = build_quantizer(ibq_quantizer(num_embed=32, embed_dim=4, commitment_loss_weight=0.25))
    latent = torch.randn(2, 4, 3, 3, requires_grad=True)
    output = quantizer(latent)
    output.loss.backward()
    assert (quantizer.codebook.weight.grad.abs().sum(dim=1) > 0).all()
    assert latent.grad is not None and output.codes.shape == (2, 3, 3)

    z = latent.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    codebook = quantizer.codebook.weight.detach()
    logits = z @ codebook.T
    hard = codebook[logits.argmax(dim=1)]
    soft = logits.softmax(dim=1)
    z_q = (F.one_hot(logits.argmax(dim=1), 32).float() - soft + soft) @ codebook
    upstream = ((z_q - z) ** 2).mean() + ((hard - z) ** 2).mean() + 0.25 * ((hard - z) ** 2).mean()
    assert torch.allclose(output.loss.detach(), upstream, rtol=1e-5)
    assert torch.equal(output.codes.reshape(-1), logits.argmax(dim=1))


def test_tiny_ibq_run_resumes_and_exports(tmp_path, capsys):
    data = IBQ / "ibq_tiny_f4_k1024_images"  # six real photos (astronaut, coffee, chelsea)
    out = tmp_path / "run"
    command = ["--config", str(IBQ_SMOKE), "--data", str(data), "--output-dir", str(out)]
    train_in_process(*command, "--max-steps", "2")
    assert "model: ibq IBQ f4" in capsys.readouterr().out
    train_in_process(*command, "--max-steps", "3", "--resume")
    assert "resumed from step 2" in capsys.readouterr().out
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 3

    from gsq_core import load_tokenizer

    model = load_tokenizer(out / "model.safetensors")
    assert model.family == "ibq" and model.quantizer.token_layout == "BHW"
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model.encode(image).shape == (1, 8, 8)

    exported = _run([sys.executable, "-m", "exporters", "--ckpt", str(out / "model.safetensors"), "--target", "onnx",
                     "--out", str(tmp_path / "onnx"), "--graphs", "tokenize,detokenize", "--calib-images", str(data)])
    assert exported.returncode == 0, exported.stderr[-3000:]
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is True and manifest["family"] == "ibq"
    assert np.isfinite(manifest["validation"]["graphs"]["tokenize"]["max_score_gap"])
