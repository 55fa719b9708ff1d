"""Every option of upstream's IBQ encoder/decoder, in training-run checkpoints, against upstream's numbers.

tests/fixtures/ibq/layouts.expected.npz holds what SEED-Voken's own Encoder/Decoder compute for the
layouts of tests/ibq_layouts.py (made by tests/fixtures/ibq/make_layout_vectors.py). Here each layout
is written as a SEED-Voken training run writes it (raw weights, LitEma shadows, loss.* modules and
their shadows, Adam states) and loaded back through the LightningCLI YAML.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import IBQ
from gsq_core import CheckpointError, load_tokenizer
from gsq_core.checkpoint_ibq import upstream_name
from gsq_core.fidelity import score_gaps
from tests.ibq_layouts import LAYOUTS, ema_weights, write_training_checkpoint, write_yaml


@pytest.fixture(scope="module")
def expected():
    with np.load(IBQ / "layouts.expected.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_upstream(layout, expected, tmp_path):
    checkpoint = tmp_path / f"{layout}.ckpt"
    raw = write_training_checkpoint(layout, checkpoint)
    write_yaml(layout, tmp_path / f"{layout}.yaml")
    model = load_tokenizer(checkpoint)

    # The EMA shadows, mapped back through the model's own parameter names, are the weights.
    shadows = ema_weights(layout)
    loaded = {upstream_name(key): value for key, value in model.state_dict().items()}
    assert loaded.keys() == shadows.keys()
    for name, value in shadows.items():
        np.testing.assert_array_equal(loaded[name].numpy(), value, err_msg=name)

    images = torch.from_numpy(expected[f"{layout}/input"])
    latent = model.encode_latent(images).detach().numpy()
    reference = expected[f"{layout}/latent"]
    assert latent.shape == reference.shape
    assert np.linalg.norm(latent - reference) <= 1e-4 * np.linalg.norm(reference)
    assert np.abs(latent - reference).max() <= 2e-4
    codes = model.encode(images).numpy()
    indices, second, gap = (expected[f"{layout}/{key}"] for key in ("indices", "second", "top2_gap"))
    assert codes.shape == indices.shape
    assert np.array_equal(codes[gap >= 1e-3], indices[gap >= 1e-3])
    assert np.all((codes == indices) | (codes == second))
    assert score_gaps(latent, codes, model.quantizer.lookup_spec()).max() <= 1e-6
    recon = model.decode(torch.from_numpy(indices)).numpy()
    assert recon.shape == expected[f"{layout}/recon"].shape
    assert np.abs(recon - expected[f"{layout}/recon"]).max() <= 1e-4

    # ema=False: the raw generator weights, nothing of the loss modules.
    raw_model = load_tokenizer(checkpoint, ema=False)
    for key, value in raw_model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), raw[upstream_name(key)], err_msg=key)


def test_use_ema_without_shadows_asks_for_no_ema(tmp_path):
    layout = "single_level"
    checkpoint = tmp_path / "trained.ckpt"
    write_training_checkpoint(layout, checkpoint)
    write_yaml(layout, tmp_path / "trained.yaml")
    package = torch.load(checkpoint, weights_only=True)
    package["state_dict"] = {k: v for k, v in package["state_dict"].items() if not k.startswith("model_ema.")}
    torch.save(package, checkpoint)
    with pytest.raises(CheckpointError, match="use_ema: True but the checkpoint has no model_ema"):
        load_tokenizer(checkpoint)
    assert load_tokenizer(checkpoint, ema=False).num_embed == LAYOUTS[layout][1]


def test_unknown_generator_keys_are_reported(tmp_path):
    layout = "single_level"
    checkpoint = tmp_path / "extra.ckpt"
    write_training_checkpoint(layout, checkpoint)
    write_yaml(layout, tmp_path / "extra.yaml")
    package = torch.load(checkpoint, weights_only=True)
    package["state_dict"]["encoder.extra_head.weight"] = torch.zeros(2)
    torch.save(package, checkpoint)
    with pytest.raises(CheckpointError, match=r"unexpected: encoder\.extra_head\.weight"):
        load_tokenizer(checkpoint)
