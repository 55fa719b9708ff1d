"""Checkpoint formats: native .safetensors (config JSON in the metadata) and upstream flex_gen .pt."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ArchitectureConfig, ConfigError, QuantizerConfig, TokenizerConfig
from .errors import CheckpointError
from .checkpoint_ibq import is_lightning_checkpoint, read_lightning_checkpoint
from .families import DEFAULT_FAMILY, config_from_json, get_family
from .model import GSQTokenizer, expected_state_shapes
from .safe_pickle import load_config_pickle

NATIVE_FORMAT = "gsq-deploy"
NATIVE_FORMAT_VERSION = "1"

# Upstream state-dict names -> ours. Upstream misspells the encoder head ("fianl_layers") and calls
# the quantizer "quantizers"; everything else already has the same name.
UPSTREAM_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("encoder.fianl_layers.", "encoder.final_layers."),
    ("quantizers.", "quantizer."),
)

# Upstream constructor defaults (FlexTokenizer and its quantizers), applied to missing kwargs.
_UPSTREAM_MODEL_DEFAULTS: dict[str, Any] = {
    "input_channels": 3,
    "hidden_channels": 128,
    "encoder_layer_configs": (4, 3, 4, 3, 4),
    "decoder_layer_configs": (3, 4, 3, 4, 4),
    "channel_multipliers": (1, 2, 2, 4),
    "mid_block_attn": False,
    "attention_resolutions": (),
    "embedding_dim": 4,
    "use_adaptive_norm": False,
    "use_learnable_up_down_sample": False,
    "residual_conv_kernel_size": 3,
    "input_conv_kernel_size": 3,
    "output_conv_kernel_size": 3,
    "dropout_probability": 0.0,
    "quantizer_aux_loss_weight": 1.0,
}
_UPSTREAM_QUANTIZER_DEFAULT = {"quantize_type": "vq", "embed_dim": 4, "num_embed": 8192}
# Upstream quantizer kwarg -> our QuantizerConfig field.
_UPSTREAM_QUANTIZER_KEYS = {
    "num_embed": "num_embed",
    "embed_dim": "embed_dim",
    "num_group": "num_group",
    "use_uniform_init": "use_uniform_init",
    "use_l2_norm": "use_l2_norm",
    "use_l1_norm": "use_l1_norm",
    "force_1d_clip": "force_1d_clip",
    "commitment_loss_weight": "commitment_loss_weight",
    "argmin_func": "argmin_func",
    "lambda_entropy_loss": "entropy_loss_weight",
    "entropy_temperature": "entropy_temperature",
    "norm_distirbution_radius": "init_radius",
}
# Upstream options that only shape training (sampling among ties, extra regularisers).
_UPSTREAM_TRAINING_ONLY_KEYS = {"argmin_softmax_tau", "lambda_tcr_loss", "entropy_loss_type"}
_UPSTREAM_DEFAULTS_BY_TYPE = {
    "gsq": {"num_group": 1, "use_uniform_init": False, "use_l2_norm": False, "use_l1_norm": False},
    "vq": {"num_group": 1, "use_uniform_init": True, "use_l2_norm": False, "use_l1_norm": False},
}


# -- upstream -----------------------------------------------------------------------------------
def config_from_upstream_kwargs(kwargs: dict[str, Any]) -> TokenizerConfig:
    """Translate upstream FlexTokenizer constructor kwargs into a validated TokenizerConfig."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"the checkpoint's config must be a dict of constructor arguments, got {type(kwargs).__name__}")
    kwargs = dict(kwargs)
    quantizer_kwargs = dict(kwargs.pop("quantizer_config", None) or _UPSTREAM_QUANTIZER_DEFAULT)
    unknown = sorted(set(kwargs) - set(_UPSTREAM_MODEL_DEFAULTS))
    if unknown:
        raise CheckpointError(f"the checkpoint's config has constructor arguments this toolkit does not know: {', '.join(unknown)}")
    model_kwargs = {**_UPSTREAM_MODEL_DEFAULTS, **kwargs}
    if model_kwargs["attention_resolutions"] is None:
        model_kwargs["attention_resolutions"] = ()
    try:
        quantizer = _quantizer_from_upstream(quantizer_kwargs)
        return TokenizerConfig(**model_kwargs, quantizer=quantizer).validate()
    except ConfigError as error:
        raise CheckpointError(f"the checkpoint's config is invalid: {error}") from None


def _quantizer_from_upstream(kwargs: dict[str, Any]) -> QuantizerConfig:
    quantize_type = str(kwargs.pop("quantize_type", "vq")).lower()
    if quantize_type not in _UPSTREAM_DEFAULTS_BY_TYPE:
        raise CheckpointError(
            f"quantize_type={quantize_type!r} in the checkpoint is not supported; this toolkit runs 'gsq' and 'vq'"
        )
    fields = {"quantize_type": quantize_type, **_UPSTREAM_DEFAULTS_BY_TYPE[quantize_type]}
    ignored = []
    for key, value in kwargs.items():
        if key in _UPSTREAM_QUANTIZER_KEYS:
            fields[_UPSTREAM_QUANTIZER_KEYS[key]] = value
        elif key not in _UPSTREAM_TRAINING_ONLY_KEYS:
            ignored.append(key)
    if ignored:
        if quantize_type == "vq":  # upstream VectorQuantizer has no **kwargs: these would fail there too
            raise CheckpointError(f"unknown VQ quantizer options in the checkpoint: {', '.join(sorted(ignored))}")
        warnings.warn(f"ignoring GSQ quantizer options that upstream also ignores: {', '.join(sorted(ignored))}")
    fields.setdefault("argmin_func", "random")
    if fields["argmin_func"] is None:  # upstream treats None as plain argmin
        fields["argmin_func"] = "argmin"
    return QuantizerConfig(**fields)


def state_dict_from_upstream(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename upstream state-dict keys to this toolkit's module names."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in UPSTREAM_KEY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


# -- native -------------------------------------------------------------------------------------
def save_native(model: GSQTokenizer, path: str | Path, overwrite: bool = False) -> Path:
    """Write model weights + config as one .safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_FORMAT_VERSION,
        "family": model.config.family,
        "config": model.config.to_json(),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite=overwrite)
    return path


def atomic_write(path: str | Path, write: Callable[[Path], Any], overwrite: bool = False) -> None:
    """Call write(tmp_path) on a temporary file beside path, then rename it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_native(path: Path) -> tuple[ArchitectureConfig, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file (truncated or corrupt?): {error}") from None
    if metadata.get("format") != NATIVE_FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: a .safetensors file without a gsq-deploy config in its metadata")
    if metadata.get("format_version") != NATIVE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {metadata.get('format_version')!r} is not supported "
            f"(this toolkit reads version {NATIVE_FORMAT_VERSION})"
        )
    try:
        # Files written before families existed record none: they are flex models.
        family = get_family(metadata.get("family", DEFAULT_FAMILY))
        config = config_from_json(metadata["config"])
        if config.family != family.name:
            raise ConfigError(f"the metadata names family {family.name!r}, its config is a {config.family!r} config")
    except ConfigError as error:
        raise CheckpointError(f"{path}: invalid config: {error}") from None
    return config, state_dict


def _load_torch_package(path: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain values only; anything else is refused unrun."""
    import re

    try:
        with path.open("rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        # mmap: a large checkpoint's tensors stay on disk until used (only zip archives can be mapped).
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # torch raises many types for damaged or hostile files
        text = str(error).strip()
        hostile = re.search(r"unsupported GLOBAL ([\w.]+)", text)
        if hostile:
            raise CheckpointError(
                f"{path}: refusing to load: its pickle references {hostile.group(1)}, which is not a tensor or plain "
                "value and could run code (read with weights_only=True; nothing was run)"
            ) from None
        message = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint with weights_only=True (truncated, corrupt, "
            f"or it holds objects other than tensors): {message}"
        ) from None


def _read_upstream(
    path: Path, config: str | Path | ArchitectureConfig | None = None, ema: bool = True
) -> tuple[ArchitectureConfig, dict[str, torch.Tensor]]:
    package = _load_torch_package(path)
    if is_lightning_checkpoint(package):
        return read_lightning_checkpoint(path, package, config, ema)
    _refuse_lightning_options(path, config, ema)
    if not isinstance(package, dict) or "model_state_dict" not in package:
        raise CheckpointError(f"{path}: no 'model_state_dict' in this checkpoint (not a flex_gen tokenizer checkpoint)")
    if "config" not in package:
        raise CheckpointError(f"{path}: no 'config' in this checkpoint; the model's architecture is unknown")
    try:
        kwargs = load_config_pickle(package["config"])
        config = config_from_upstream_kwargs(kwargs)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    state_dict = package["model_state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'model_state_dict' is not a mapping of names to tensors")
    return config, state_dict_from_upstream(state_dict)


def _file_kind(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(16)
    if head[:4] == b"PK\x03\x04" or head[:2] == b"\x80\x02":  # torch zip archive or legacy pickle
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def read_checkpoint(
    path: str | Path, config: str | Path | ArchitectureConfig | None = None, ema: bool = True
) -> tuple[ArchitectureConfig, dict[str, torch.Tensor]]:
    """Config and state dict (our key names) from a native, flex_gen or Lightning (IBQ) checkpoint file.

    config and ema apply to Lightning checkpoints only (gsq_core.checkpoint_ibq): the model's YAML
    (default: the one beside the file with the same stem) and EMA (default) or raw weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kind = _file_kind(path)
    if kind == "safetensors":
        _refuse_lightning_options(path, config, ema)
        return _read_native(path)
    if kind == "torch":
        return _read_upstream(path, config, ema)
    raise CheckpointError(
        f"{path}: neither a .safetensors file nor a PyTorch checkpoint (empty, truncated or another format)"
    )


def _refuse_lightning_options(path: Path, config: Any, ema: bool) -> None:
    """config / ema=False mean something only for Lightning checkpoints; elsewhere they are a mistake."""
    if config is not None:
        raise CheckpointError(f"{path}: carries its own model config; --config (config=) is for IBQ Lightning checkpoints")
    if not ema:
        raise CheckpointError(f"{path}: holds one set of weights; --no-ema (ema=False) is for IBQ Lightning checkpoints")


def weight_problems(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing, unexpected and wrongly shaped weights, first few of each, one phrase per kind."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [f"{k} {list(found[k])} != {list(v)}" for k, v in expected.items() if k in found and found[k] != v]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    return problems


def check_weights_match_config(config: ArchitectureConfig, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError unless the weights have exactly the names and shapes the config implies,
    decided on the meta device before any model is built (a config claiming V = 2**31 - 1 or
    hidden_channels 8192 beside small weights is refused without allocating anything)."""
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    try:
        expected = expected_state_shapes(config, max_parameters=len(found))
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None
    problems = weight_problems(expected, found)
    if problems:
        raise CheckpointError(f"{source}: weights do not match the checkpoint's config; " + "; ".join(problems))


def load_state_dict_checked(model: GSQTokenizer, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, raising CheckpointError naming the first mismatched keys and shapes."""
    expected = model.state_dict()
    problems = weight_problems({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state_dict.items()})
    if problems:
        raise CheckpointError(f"{source}: weights do not match the checkpoint's config; " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()})


def tokenizer_from_file(
    path: str | Path,
    device: str | torch.device = "cpu",
    config: str | Path | ArchitectureConfig | None = None,
    ema: bool = True,
) -> GSQTokenizer:
    """Build the model a checkpoint file describes and load its weights (eval mode); the config is
    checked against the weights' shapes before the model is built."""
    config, state_dict = read_checkpoint(path, config, ema)
    check_weights_match_config(config, state_dict, str(path))
    model = GSQTokenizer(config)
    load_state_dict_checked(model, state_dict, str(path))
    return model.to(device).eval()


def config_summary(config: ArchitectureConfig) -> str:
    """One line describing a model configuration."""
    return config.summary()

