"""IBQ layouts that exercise every option of upstream's taming Encoder/Decoder, with deterministic
weights, written the way SEED-Voken's training runs write them (a Lightning checkpoint with EMA
shadows, loss modules and optimizer state) plus their LightningCLI YAML.

Shared by tests/gsq_core/test_ibq_layouts.py and tests/fixtures/ibq/make_layout_vectors.py, which made
tests/fixtures/ibq/layouts.expected.npz by running SEED-Voken's own Encoder/Decoder on these weights.
Weights come from numpy's legacy RandomState, whose streams numpy keeps stable across versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# name -> (ddconfig, n_embed, embed_dim, input shape). Together they cover ch, ch_mult (1 to 4
# levels), num_res_blocks (1 to 3), attn_resolutions (none, one, several; levels where encoder
# and decoder differ because resolution is not a power of two), resolution, in_channels = out_ch
# (RGB and grayscale), z_channels != embed_dim, dropout (inactive in eval), resamp_with_conv
# (strided conv / nearest + conv, or average pooling / nearest only) and double_z False.
LAYOUTS: dict[str, tuple[dict[str, Any], int, int, tuple[int, ...]]] = {
    "deep_attention": (
        dict(ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16, 4], resolution=32,
             z_channels=8, in_channels=3, out_ch=3, dropout=0.0, resamp_with_conv=True, double_z=False),
        64, 8, (2, 3, 32, 24),
    ),
    "gray_no_resample_conv": (
        dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=3, attn_resolutions=[], resolution=64,
             z_channels=4, in_channels=1, out_ch=1, dropout=0.1, resamp_with_conv=False, double_z=False),
        50, 6, (2, 1, 16, 20),
    ),
    "single_level": (
        dict(ch=64, ch_mult=[1], num_res_blocks=1, attn_resolutions=[8], resolution=8,
             z_channels=4, in_channels=3, out_ch=3, dropout=0.0, resamp_with_conv=True, double_z=False),
        16, 4, (1, 3, 6, 5),
    ),
    "uneven_resolution": (
        dict(ch=32, ch_mult=[1, 1, 2, 1], num_res_blocks=1, attn_resolutions=[9, 4, 16], resolution=36,
             z_channels=4, in_channels=3, out_ch=3, dropout=0.0, resamp_with_conv=True, double_z=False),
        32, 4, (1, 3, 16, 32),
    ),
}
EMA_SEED, RAW_SEED, INPUT_SEED, LOSS_SEED = 1, 2, 3, 4


def upstream_shapes(layout: str) -> dict[str, tuple[int, ...]]:
    """Upstream generator state-dict names and shapes of a layout (from our model's key map)."""
    import torch

    from gsq_core.checkpoint_ibq import ibq_config_from_init_args, upstream_name
    from gsq_core.model import GSQTokenizer

    config, _ = ibq_config_from_init_args(init_args(layout))
    with torch.device("meta"):
        model = GSQTokenizer(config)
    return {upstream_name(key): tuple(value.shape) for key, value in model.state_dict().items()}


def deterministic_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """float32 weights for upstream names, in sorted-name order: convs ~ N(0, 1/fan_in), norms near 1."""
    rng = np.random.RandomState(seed)
    weights = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = rng.standard_normal(shape)
        if name.endswith("embedding.weight"):
            value = noise
        elif ".norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.05 * noise
        else:
            value = noise / np.sqrt(np.prod(shape[1:]))
        weights[name] = value.astype(np.float32)
    return weights


def layout_input(layout: str) -> np.ndarray:
    """The layout's input batch, uniform in [-1, 1], float32."""
    shape = LAYOUTS[layout][3]
    return np.random.RandomState(INPUT_SEED).uniform(-1.0, 1.0, shape).astype(np.float32)


def init_args(layout: str) -> dict[str, Any]:
    """IBQ.__init__ arguments of a layout, as in SEED-Voken's configs (training keys included)."""
    ddconfig, n_embed, embed_dim, _ = LAYOUTS[layout]
    return {
        "ddconfig": dict(ddconfig),
        "lossconfig": {
            "target": "src.IBQ.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {"disc_start": 0, "quant_loss_weight": 1.0, "entropy_loss_weight": 0.05},
        },
        "n_embed": n_embed,
        "embed_dim": embed_dim,
        "learning_rate": 1e-4,
        "l2_normalize": False,
        "use_entropy_loss": True,
        "entropy_temperature": 0.01,
        "beta": 0.25,
        "use_ema": True,
        "lr_drop_epoch": [250, 300],
    }


def write_yaml(layout: str, path: Path) -> Path:
    """The layout's LightningCLI YAML (model: class_path + init_args)."""
    import yaml

    document = {
        "seed_everything": 1234,
        "trainer": {"accelerator": "cpu", "max_steps": 1},
        "model": {"class_path": "src.IBQ.models.ibqgan.IBQ", "init_args": init_args(layout)},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_training_checkpoint(layout: str, path: Path) -> dict[str, np.ndarray]:
    """A Lightning checkpoint as a SEED-Voken training run writes it: raw generator, LitEma shadows
    (model_ema.<name without dots>, decay, num_updates), GAN discriminator and LPIPS under loss.*
    and their shadows, Adam states, loops and callbacks. Returns the raw weights by upstream name."""
    import torch

    shapes = upstream_shapes(layout)
    raw, ema = deterministic_weights(shapes, RAW_SEED), deterministic_weights(shapes, EMA_SEED)
    rng = np.random.RandomState(LOSS_SEED)
    loss = {
        "loss.discriminator.main.0.weight": torch.from_numpy(rng.standard_normal((8, 3, 4, 4)).astype(np.float32)),
        "loss.discriminator.main.1.running_mean": torch.zeros(8),
        "loss.discriminator.main.1.num_batches_tracked": torch.tensor(4, dtype=torch.int64),
        "loss.perceptual_loss.net.slice1.0.weight": torch.ones(4, 3, 3, 3),
        "loss.logit_laplace_loss_weight": torch.tensor(1.0),
    }
    state: dict[str, torch.Tensor] = {name: torch.from_numpy(value) for name, value in raw.items()}
    state.update(loss)
    state["model_ema.decay"] = torch.tensor(0.999)
    state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int32)
    state.update({"model_ema." + name.replace(".", ""): torch.from_numpy(value) for name, value in ema.items()})
    state["model_ema.lossdiscriminatormain0weight"] = loss["loss.discriminator.main.0.weight"].clone()
    adam = {
        "state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.9), "eps": 1e-8, "weight_decay": 0, "params": [0]}],
    }
    package = {
        "epoch": 0,
        "global_step": 4,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1, "completed": 0}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'train/perceptual_loss'}": {"best_model_path": "", "dirpath": "ckpt"}},
        "optimizer_states": [adam, adam],
        "lr_schedulers": [],
    }
    torch.save(package, path)
    return raw


def ema_weights(layout: str) -> dict[str, np.ndarray]:
    """The EMA (evaluated) weights of a layout by upstream name."""
    return deterministic_weights(upstream_shapes(layout), EMA_SEED)
