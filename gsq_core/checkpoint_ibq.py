"""SEED-Voken IBQ checkpoints: Lightning .ckpt files plus their LightningCLI YAML, read without running code.

A Lightning checkpoint is a torch.save'd dict (state_dict, epoch, global_step, loops, callbacks,
optimizer_states, ...); gsq_core.checkpoint reads it with torch.load(weights_only=True) and hands it
here. Its state_dict holds the generator (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*,
quantize.embedding.weight), LitEma's shadow of every generator parameter as
`model_ema.<parameter name without dots>` with model_ema.decay / num_updates, and in files written
by a training run the loss modules (loss.*, model_ema.loss*). Only the generator is read: the EMA
shadows by default (SEED-Voken evaluates inside ema_scope()), the raw weights with ema=False.

The model config is not in the checkpoint (IBQ never saves hyper-parameters): it comes from the
LightningCLI YAML (model.init_args: ddconfig, n_embed, embed_dim, ...), read with yaml.safe_load,
given explicitly or found beside the checkpoint with the same stem.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ArchitectureConfig
from .errors import CheckpointError, ConfigError, first_line
from .ibq_config import IBQConfig, ibq_quantizer

if TYPE_CHECKING:
    import torch

# Upstream generator names -> ours: quant_conv belongs to our encoder, post_quant_conv to our decoder,
# the codebook is quantizer.codebook; encoder.* and decoder.* keep their names.
UPSTREAM_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("quant_conv.", "encoder.quant_conv."),
    ("post_quant_conv.", "decoder.post_quant_conv."),
    ("quantize.embedding.", "quantizer.codebook."),
    ("encoder.", "encoder."),
    ("decoder.", "decoder."),
)
EMA_PREFIX = "model_ema."
# LitEma's bookkeeping buffers: not weights.
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
# Training-only state: GAN discriminator, LPIPS, their EMA shadows, a segmentation colouriser.
IGNORED_PREFIXES = ("loss.", "model_ema.loss", "colorize")
CONFIG_SUFFIXES = (".yaml", ".yml")
SHOWN = 5  # mismatched keys listed in an error

# ddconfig keys of upstream's Encoder / Decoder and the defaults of their constructors.
_DDCONFIG_REQUIRED = ("ch", "out_ch", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")
_DDCONFIG_DEFAULTS = {"ch_mult": (1, 2, 4, 8), "dropout": 0.0, "resamp_with_conv": True, "double_z": True,
                      "give_pre_end": False}
# IBQ.__init__ arguments that shape only training, logging or the AR stage (incl. ibqgan_pretrain's).
_TRAINING_ONLY_ARGS = {
    "lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "sane_index_shape",
    "learning_rate", "warmup_epochs", "scheduler_type", "min_learning_rate", "gradient_clip_val", "lr_drop_epoch",
    "lr_drop_rate", "resume_lr", "stage", "use_shared_epoch", "sche_type", "wpe", "wp", "wp0", "max_iter",
    "wp_iter", "lr_drop_iter",
    # Upstream's IBQ ignores these in its lookup: l2_normalize configures the VectorQuantizer2 it
    # replaces, cosine_similarity is stored but never read by IndexPropagationQuantize.forward.
    "l2_normalize", "cosine_similarity",
}
_QUANTIZER_ARGS = {"n_embed", "embed_dim", "beta", "use_entropy_loss", "entropy_temperature",
                   "sample_minimization_weight", "batch_maximization_weight", "remap", "use_ema", "ddconfig"}


# -- the YAML ------------------------------------------------------------------------------------
def find_config_file(checkpoint: str | Path) -> Path | None:
    """The YAML beside a checkpoint with the same stem (x.ckpt -> x.yaml or x.yml), if there is one."""
    checkpoint = Path(checkpoint)
    for suffix in CONFIG_SUFFIXES:
        candidate = checkpoint.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_ibq_yaml(path: str | Path) -> tuple[IBQConfig, bool]:
    """(config, use_ema) from a LightningCLI YAML (model.init_args) or a taming one (model.params)."""
    from .extras import require

    yaml = require("yaml", "torch", "reading an IBQ model config")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read the config: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path}: not valid YAML: {first_line(error)}") from None
    try:
        return ibq_config_from_document(document)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None


def ibq_config_from_document(document: Any) -> tuple[IBQConfig, bool]:
    """(config, use_ema) from a parsed YAML document; ConfigError names what is missing or wrong."""
    if not isinstance(document, dict):
        raise ConfigError("the config must be a YAML mapping with a `model:` section")
    model = document.get("model", document)
    if not isinstance(model, dict):
        raise ConfigError("`model:` must be a mapping")
    class_path = model.get("class_path") or model.get("target")
    if class_path is not None and str(class_path).rsplit(".", 1)[-1] != "IBQ":
        raise ConfigError(
            f"model class {class_path!r} is not SEED-Voken's IBQ (e.g. src.IBQ.models.ibqgan.IBQ); "
            "this reader loads IBQ tokenizers only"
        )
    args = model.get("init_args", model.get("params", model))
    if not isinstance(args, dict) or "ddconfig" not in args:
        raise ConfigError("no model.init_args.ddconfig: not an IBQ model config (configs/IBQ/gpu/imagenet_ibqgan_*.yaml)")
    return ibq_config_from_init_args(args)


def ibq_config_from_init_args(args: dict[str, Any]) -> tuple[IBQConfig, bool]:
    """(config, use_ema) from IBQ.__init__'s arguments, with upstream's defaults for missing ones."""
    ddconfig = args.get("ddconfig")
    if not isinstance(ddconfig, dict):
        raise ConfigError("ddconfig must be a mapping of encoder/decoder options")
    missing = [key for key in _DDCONFIG_REQUIRED if key not in ddconfig]
    missing += [key for key in ("n_embed", "embed_dim") if key not in args]
    if missing:
        raise ConfigError(f"the model config lacks {', '.join(missing)} (upstream has no default for them)")
    unknown_dd = sorted(set(ddconfig) - set(_DDCONFIG_REQUIRED) - set(_DDCONFIG_DEFAULTS))
    unknown_args = sorted(set(args) - _TRAINING_ONLY_ARGS - _QUANTIZER_ARGS)
    if unknown_dd or unknown_args:  # upstream's Encoder/Decoder take **kwargs and ignore them too
        warnings.warn(f"ignoring IBQ config options this loader does not know: {', '.join(unknown_dd + unknown_args)}")
    dd = {**_DDCONFIG_DEFAULTS, **ddconfig}
    if dd["double_z"]:
        raise ConfigError(
            "ddconfig double_z is true (upstream's default): the encoder would output 2 * z_channels while "
            "IBQ's quant_conv takes z_channels, so upstream cannot run it either; set double_z: False"
        )
    if dd["give_pre_end"]:
        raise ConfigError("ddconfig give_pre_end is true: the decoder would return features, not images")
    if dd["out_ch"] != dd["in_channels"]:
        raise ConfigError(f"ddconfig out_ch={dd['out_ch']} differs from in_channels={dd['in_channels']}")
    if args.get("remap") is not None:
        raise ConfigError(
            f"remap={args['remap']!r}: token remapping (an index file) is not supported; tokens would not be codebook rows"
        )
    # Training weights from the loss block (VQLPIPSWithDiscriminator's defaults: 1.0 and 1.0).
    loss_params = _loss_params(args.get("lossconfig"))
    entropy_weight = float(loss_params.get("entropy_loss_weight", 1.0)) if args.get("use_entropy_loss", False) else 0.0
    quant_weight = float(loss_params.get("quant_loss_weight", 1.0))
    config = IBQConfig(
        ch=dd["ch"],
        ch_mult=_int_tuple(dd["ch_mult"], "ch_mult"),
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=_int_tuple(dd["attn_resolutions"], "attn_resolutions"),
        z_channels=dd["z_channels"],
        resolution=dd["resolution"],
        in_channels=dd["in_channels"],
        dropout=float(dd["dropout"]),
        resamp_with_conv=dd["resamp_with_conv"],
        quant_loss_weight=quant_weight,
        quantizer=ibq_quantizer(
            num_embed=args["n_embed"],
            embed_dim=args["embed_dim"],
            commitment_loss_weight=float(args.get("beta", 0.25)),
            entropy_loss_weight=entropy_weight,
            entropy_temperature=float(args.get("entropy_temperature", 0.01)),
        ),
    )
    use_ema = args.get("use_ema", False)
    if not isinstance(use_ema, bool):
        raise ConfigError(f"use_ema={use_ema!r} must be true or false")
    return config.validate(), use_ema


def _loss_params(lossconfig: Any) -> dict[str, Any]:
    if not isinstance(lossconfig, dict):
        return {}
    params = lossconfig.get("params", lossconfig.get("init_args", {}))
    return params if isinstance(params, dict) else {}


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"ddconfig {name}={value!r} must be a list of integers")
    return tuple(value)


# -- the checkpoint ------------------------------------------------------------------------------
def is_lightning_checkpoint(package: Any) -> bool:
    """Whether a loaded torch package is a Lightning checkpoint (a `state_dict` entry, not flex_gen's)."""
    return isinstance(package, dict) and "state_dict" in package and "model_state_dict" not in package


def upstream_name(key: str) -> str:
    """Our state-dict key -> upstream's (inverse of UPSTREAM_KEY_PREFIXES)."""
    for upstream, ours in UPSTREAM_KEY_PREFIXES:
        if key.startswith(ours):
            return upstream + key[len(ours):]
    raise KeyError(key)


def ema_name(upstream_key: str) -> str:
    """LitEma's buffer name of an upstream parameter: model_ema. + the name without dots."""
    return EMA_PREFIX + upstream_key.replace(".", "")


def resolve_config(
    checkpoint: Path, config: str | Path | ArchitectureConfig | None
) -> tuple[ArchitectureConfig, bool | None, str]:
    """(config, use_ema from the YAML or None, where it came from) for a Lightning checkpoint."""
    if isinstance(config, ArchitectureConfig):
        return config.validate(), None, "the given config"
    if config is None:
        found = find_config_file(checkpoint)
        if found is None:
            raise CheckpointError(
                f"{checkpoint}: a Lightning checkpoint does not record its model; pass its YAML with --config FILE "
                f"(config=...), e.g. SEED-Voken's configs/IBQ/gpu/imagenet_ibqgan_16384.yaml, or put it beside "
                f"the checkpoint as {checkpoint.with_suffix('.yaml').name}"
            )
        config = found
    path = Path(config)
    if not path.exists():
        from .registry import PRESETS, preset_config

        if str(config).lower() in PRESETS:
            return preset_config(str(config)), None, f"preset {config}"
        raise CheckpointError(f"{config}: no such config file (nor a preset name)")
    ibq_config, use_ema = read_ibq_yaml(path)
    return ibq_config, use_ema, str(path)


def read_lightning_checkpoint(
    path: Path, package: dict[str, Any], config: str | Path | ArchitectureConfig | None = None, ema: bool = True
) -> tuple[ArchitectureConfig, dict[str, torch.Tensor]]:
    """Config and generator weights (our key names) of a loaded Lightning checkpoint.

    ema=True takes LitEma's shadows when the model was trained with EMA (use_ema in the YAML; when
    the config is not a YAML, whenever the file has shadows), ema=False the raw parameters.
    Raises CheckpointError listing the first mismatched keys and shapes when config and weights differ.
    """
    import torch

    model_config, use_ema, config_source = resolve_config(path, config)
    state = package["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    try:  # ours -> shape; a config building more weights than the file holds stops at once
        expected = _expected_shapes(model_config, max_parameters=len(state))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error} ({config_source})") from None
    names = {upstream_name(key): key for key in expected}  # upstream -> ours
    shadows = {ema_name(upstream): upstream for upstream in names}
    if len(shadows) != len(names):
        raise CheckpointError(f"{config_source}: LitEma's dot-free names are ambiguous for this layout")
    has_shadows = any(key in state for key in shadows)
    take_ema = ema and (use_ema if use_ema is not None else has_shadows)
    if take_ema and not has_shadows:
        raise CheckpointError(
            f"{path}: the config says use_ema: True but the checkpoint has no model_ema.* weights; "
            "pass --no-ema (ema=False) to load the raw weights"
        )
    ignored = {key for key in state if key.startswith(IGNORED_PREFIXES) or key in EMA_BOOKKEEPING}
    unexpected = [key for key in state if key not in names and key not in ignored and key not in shadows]

    weights: dict[str, torch.Tensor] = {}
    missing, wrong_shape = [], []
    for upstream, ours in names.items():
        key = ema_name(upstream) if take_ema else upstream
        if key not in state:
            missing.append(key)
            continue
        tensor = state[key]
        if tuple(tensor.shape) != expected[ours]:
            wrong_shape.append(f"{key} {list(tensor.shape)} in the checkpoint, {list(expected[ours])} from the config")
            continue
        if not tensor.dtype.is_floating_point:
            wrong_shape.append(f"{key} has dtype {tensor.dtype}, not floating point")
            continue
        weights[ours] = tensor
    problems = [
        f"{label}: " + ", ".join(keys[:SHOWN]) + (f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
        for label, keys in (("shape mismatch", wrong_shape), ("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: the weights do not match {config_source}; " + "; ".join(problems))
    return model_config, weights


def _expected_shapes(config: ArchitectureConfig, max_parameters: int | None = None) -> dict[str, tuple[int, ...]]:
    """Our state-dict shapes for this config, from a model built on the meta device (no memory)."""
    from .model import expected_state_shapes

    return expected_state_shapes(config, max_parameters)
