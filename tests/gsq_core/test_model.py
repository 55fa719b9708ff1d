"""The model itself: every constructor option builds, trains and round-trips; inputs are checked."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from gsq_core import ConfigError, InputError, QuantizerConfig, TokenizerConfig, build_tokenizer, load_tokenizer
from gsq_core.checkpoint import UPSTREAM_KEY_PREFIXES
from gsq_core.fidelity import score_gaps
from gsq_core.registry import list_presets, preset_config


def random_config(rng: random.Random) -> TokenizerConfig:
    """A small configuration drawing every constructor option at random."""
    levels = rng.randint(1, 4)
    multipliers = tuple(rng.choice([1, 2]) for _ in range(levels))
    quantize_type = rng.choice(["gsq", "vq", "ibq"])
    groups = 1 if quantize_type == "vq" else rng.choice([1, 2, 4])
    dim = groups * rng.choice([1, 2, 4])
    uniform = rng.random() < 0.5
    norm = rng.choice(["l2", "l1", "none"])
    return TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=multipliers,
        encoder_layer_configs=tuple(rng.randint(0, 2) for _ in range(levels + 1)),
        decoder_layer_configs=tuple(rng.randint(0, 2) for _ in range(levels + 1)),
        mid_block_attn=rng.random() < 0.5,
        attention_resolutions=tuple(f for f in (1, 2, 4) if rng.random() < 0.3),
        embedding_dim=dim,
        use_adaptive_norm=rng.random() < 0.5,
        use_learnable_up_down_sample=rng.random() < 0.5,
        residual_conv_kernel_size=rng.choice([1, 3]),
        input_conv_kernel_size=rng.choice([1, 3, 5]),
        output_conv_kernel_size=rng.choice([1, 3]),
        dropout_probability=rng.choice([0.0, 0.1]),
        quantizer=QuantizerConfig(
            quantize_type=quantize_type,
            num_embed=rng.choice([16, 64, 300]),
            embed_dim=dim,
            num_group=groups,
            use_uniform_init=uniform,
            use_l2_norm=norm == "l2",
            use_l1_norm=norm == "l1",
            force_1d_clip=rng.random() < 0.5,
            entropy_loss_weight=rng.choice([0.0, 0.1]),
        ),
    ).validate()


@pytest.mark.parametrize("seed", range(12))
def test_random_configs_train_and_round_trip(seed, tmp_path):
    rng = random.Random(seed)
    config = random_config(rng)
    torch.manual_seed(seed)
    model = build_tokenizer(config)
    size = 2 * config.downsample_factor * rng.choice([1, 2])
    images = torch.rand(2, 3, size, size + config.downsample_factor) * 2 - 1

    model.train()
    output = model(images)
    loss = model.reconstruction_loss(images, output)
    loss.backward()
    assert output.reconstruction.shape == images.shape
    assert torch.isfinite(loss)
    assert model.encoder.conv_in.weight.grad is not None
    assert model.decoder.conv_in.weight.grad is not None
    assert model.quantizer.codebook.weight.grad is not None

    model.eval()
    codes = model.encode(images)
    h, w = model.token_grid(*images.shape[-2:])
    q = config.quantizer
    ungrouped = q.quantize_type == "vq" or (q.quantize_type == "ibq" and q.num_group == 1)  # upstream layouts
    expected_shape = (2, h, w) if ungrouped else (2, h, w, q.num_group)
    assert tuple(codes.shape) == expected_shape and codes.dtype == torch.int64
    latent = model.encode_latent(images).detach().numpy()
    assert score_gaps(latent, codes.numpy(), model.quantizer.lookup_spec()).max() <= 1e-6
    assert model.decode(codes).shape == images.shape

    path = model.save(tmp_path / "m.safetensors")
    reloaded = load_tokenizer(path)
    assert reloaded.config == config
    assert torch.equal(reloaded.encode(images), codes)
    assert torch.equal(reloaded.decode(codes), model.decode(codes))


@pytest.mark.parametrize("seed", range(4))
def test_upstream_format_of_random_layouts_loads(seed, tmp_path):
    """A checkpoint written the way upstream save() writes it (with an OmegaConf config) loads back."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf (dev extra) builds upstream-style config pickles")
    rng = random.Random(100 + seed)
    config = random_config(rng)
    if config.quantizer.quantize_type == "ibq":
        config.quantizer.quantize_type = "gsq"
    model = build_tokenizer(config.validate())
    kwargs = config.to_dict()
    assert kwargs.pop("family") == "flex"  # ours, not an upstream constructor argument
    quantizer = kwargs.pop("quantizer")
    upstream_quantizer = {
        "quantize_type": quantizer["quantize_type"],
        "num_embed": quantizer["num_embed"],
        "embed_dim": quantizer["embed_dim"],
        "use_uniform_init": quantizer["use_uniform_init"],
        "use_l2_norm": quantizer["use_l2_norm"],
        "use_l1_norm": quantizer["use_l1_norm"],
        "commitment_loss_weight": quantizer["commitment_loss_weight"],
        "lambda_entropy_loss" if quantizer["quantize_type"] == "vq" else "argmin_func": (
            quantizer["entropy_loss_weight"] if quantizer["quantize_type"] == "vq" else "random"
        ),
    }
    if quantizer["quantize_type"] == "gsq":
        upstream_quantizer.update(num_group=quantizer["num_group"], force_1d_clip=quantizer["force_1d_clip"])
    kwargs["quantizer_config"] = upstream_quantizer
    node = omegaconf.OmegaConf.create(kwargs)
    upstream_kwargs = {key: node[key] for key in node}  # DictConfig/ListConfig values, as upstream pickles them
    state = {}
    for key, value in model.state_dict().items():
        for upstream, ours in UPSTREAM_KEY_PREFIXES:
            if key.startswith(ours):
                key = upstream + key[len(ours) :]
        state[key] = value
    path = tmp_path / "upstream.pt"
    torch.save({"model_state_dict": state, "config": pickle.dumps(upstream_kwargs)}, path)
    loaded = load_tokenizer(path)
    assert loaded.config.to_dict() | {"quantizer": None} == config.to_dict() | {"quantizer": None}
    assert loaded.config.quantizer.lookup_normalization == config.quantizer.lookup_normalization
    images = torch.rand(1, 3, 2 * config.downsample_factor, 2 * config.downsample_factor) * 2 - 1
    assert torch.equal(loaded.encode(images), model.eval().encode(images))


def test_every_preset_is_valid_and_one_per_family_trains():
    names = list_presets()
    assert "gsq-f8-d64-g16-v8k" in names and "gsq-f16-d16-g8-v256k" in names
    for name in names:
        config = preset_config(name)
        assert config.quantizer.embed_dim % config.quantizer.num_group == 0
    rng = random.Random(0)
    for family in ("gsq-f8-", "gsq-f16-", "gsq-f32-"):
        name = rng.choice([n for n in names if n.startswith(family)])
        model = build_tokenizer(name, seed=0)
        images = torch.rand(1, 3, model.downsample_factor, model.downsample_factor * 2) * 2 - 1
        output = model(images)
        model.reconstruction_loss(images, output).backward()
        assert output.reconstruction.shape == images.shape, name


def test_config_json_round_trip_and_validation():
    config = preset_config("gsq-f16-d16-g4-v256k")
    assert TokenizerConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown flex tokenizer config keys: bogus"):
        TokenizerConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="not divisible by num_group"):
        QuantizerConfig(embed_dim=6, num_group=4).validate()
    with pytest.raises(ConfigError, match="multiple of 32"):
        TokenizerConfig(hidden_channels=48, quantizer=QuantizerConfig(embed_dim=8)).validate()
    with pytest.raises(ConfigError, match="embedding_dim=4 differs"):
        TokenizerConfig(embedding_dim=4, quantizer=QuantizerConfig(embed_dim=8)).validate()


@pytest.fixture(scope="module")
def small_model():
    config = TokenizerConfig(
        hidden_channels=32,
        channel_multipliers=(1, 1),
        encoder_layer_configs=(1, 1, 1),
        decoder_layer_configs=(1, 1, 1),
        embedding_dim=8,
        quantizer=QuantizerConfig(num_embed=64, embed_dim=8, num_group=4),
    )
    return build_tokenizer(config, seed=0).eval()


def test_bad_images_are_rejected(small_model):
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        small_model.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="multiple of the downsampling factor 2"):
        small_model.encode(torch.zeros(1, 3, 9, 8))
    with pytest.raises(InputError, match="floating point"):
        small_model.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="NaN"):
        small_model.encode(torch.full((1, 3, 8, 8), float("nan")))


def test_bad_codes_are_rejected(small_model):
    codes = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    assert small_model.decode(codes).shape == (1, 3, 8, 8)
    with pytest.raises(InputError, match=r"token id 64 is outside \[0, 64\)"):
        small_model.decode(codes + 64)
    with pytest.raises(InputError, match="token id -1"):
        small_model.decode(codes - 1)
    with pytest.raises(InputError, match=r"shape \[B, h, w, 4\]"):
        small_model.decode(codes[..., :2])
    with pytest.raises(InputError, match="integers"):
        small_model.decode(codes.float())


def test_ibq_training_reaches_every_code():
    config = QuantizerConfig(quantize_type="ibq", num_embed=32, embed_dim=4, num_group=2, use_l2_norm=False)
    from gsq_core.quantizers import build_quantizer

    quantizer = build_quantizer(config)
    latent = torch.randn(2, 4, 3, 3, requires_grad=True)
    output = quantizer(latent)
    (output.quantized.square().sum() + output.loss).backward()
    assert (quantizer.codebook.weight.grad.abs().sum(dim=1) > 0).all()
    assert latent.grad is not None and torch.isfinite(latent.grad).all()
    assert torch.equal(output.codes, quantizer.codes(latent.detach()))


# -- the training-side quantizer maths, written out by hand ------------------------------------------------
def small_quantizer(quantize_type: str, **changes):
    from dataclasses import replace as replace_fields

    from gsq_core.quantizers import build_quantizer
    from gsq_core.registry import preset_config

    base = preset_config("ibq-f16-d256-v1k" if quantize_type == "ibq" else "gsq-f8-d8-v8k").quantizer
    torch.manual_seed(0)
    return build_quantizer(replace_fields(base, num_embed=16, embed_dim=4, **changes)).eval()


def hand_entropy_loss(scores: np.ndarray, temperature: float) -> float:
    """Mean per-sample entropy of softmax(scores / T) minus the entropy of the mean assignment."""
    logits = scores / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    sample = -(probs * log_probs).sum(axis=1).mean()
    mean = probs.mean(axis=0)
    return float(sample + (mean * np.log(np.maximum(mean, 1e-12))).sum())


@pytest.mark.parametrize("quantize_type, l2", [("gsq", True), ("ibq", False)])
def test_scores_and_entropy_loss_by_hand(quantize_type, l2):
    quantizer = small_quantizer(quantize_type)
    vectors = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)) * 2.0
    x, weight = vectors.double().numpy(), quantizer.codebook.weight.detach().double().numpy()
    if l2:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        weight = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    expected = x @ weight.T - (0.5 * (weight**2).sum(axis=1) if quantizer.uses_distance else 0.0)
    scores = quantizer.scores(vectors).detach().double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    temperature = quantizer.config.entropy_temperature
    loss = quantizer._entropy_loss(torch.from_numpy(scores[:, ::-1].copy()))  # any [N, V] scores
    assert float(loss) == pytest.approx(hand_entropy_loss(scores[:, ::-1], temperature), rel=1e-6, abs=1e-9)


def test_ibq_forward_adds_the_weighted_entropy_loss_and_returns_its_logits():
    latent = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    plain = small_quantizer("ibq", entropy_loss_weight=0.0)(latent)
    weighted_quantizer = small_quantizer("ibq", entropy_loss_weight=0.7)
    weighted = weighted_quantizer(latent)
    vectors = latent.permute(0, 2, 3, 1).reshape(-1, 4)
    logits = weighted_quantizer.scores(vectors)
    torch.testing.assert_close(weighted.scores, logits)  # returned for the trainer's statistics
    entropy = float(weighted_quantizer._entropy_loss(logits))
    assert float(weighted.loss) == pytest.approx(float(plain.loss) + 0.7 * entropy, rel=1e-5)
    assert weighted.quantized.shape == latent.shape and torch.equal(weighted.codes, plain.codes)
    small = small_quantizer("ibq", entropy_loss_weight=0.5)(latent)  # a weight below 1 still counts
    assert float(small.loss) == pytest.approx(float(plain.loss) + 0.5 * entropy, rel=1e-5)
