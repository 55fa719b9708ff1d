"""Working-memory budget of model work: what one encode or decode needs, known before it runs. Torch-free.

Image files and token files are small, but the work they ask for is not: a 7.8 MB PNG of
8000 x 8000 pixels takes a convolutional encoder past 14 GB, a 262 KB token file with a 1024 x 1024
grid asks the decoder for an 8192 x 8192 image. Every inference entry point (GSQTokenizer.encode /
decode, every runtime) therefore estimates the work of one image from the model's configuration,
refuses an image whose estimate is over the budget (with the `--resize` way out), and runs batches
in chunks that fit it. Images in a batch never interact, so tokens are identical to running the
whole batch at once (decoded pixels agree to float rounding, which varies with the batch size).

The estimate (bytes per image pixel) is K x the largest activation of the network per image pixel,
4 bytes x max over levels of channels / 4**level, plus single-head attention's score matrices and,
for exported graphs, the codebook lookup's score block. K = WORK_ACTIVATIONS was measured
(docs/security.md): encode and decode hold at most 4.1 and 3.6 such activations at once in eager
PyTorch and ONNX Runtime; K = 5 leaves margin.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InputError

Direction = Literal["encode", "decode"]

DEFAULT_MEMORY_BUDGET = 3 * 2**30  # keeps a process under 4 GB with the runtime and model loaded
MEMORY_BUDGET_ENV = "GSQ_MEMORY_BUDGET"
WORK_ACTIVATIONS = 5
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40}


def memory_budget() -> int:
    """Bytes of working memory one model call may use: $GSQ_MEMORY_BUDGET (e.g. 8G, 512M) or 3 GiB."""
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    return parse_bytes(text, MEMORY_BUDGET_ENV) if text else DEFAULT_MEMORY_BUDGET


def parse_bytes(text: str, what: str) -> int:
    """'3G', '512M', '1.5GB', '1000000' -> bytes; InputError otherwise."""
    number = text.strip().lower()
    unit = number.lstrip("0123456789.")
    try:
        value = float(number[: len(number) - len(unit)]) * _UNITS[unit.strip()]
    except (ValueError, KeyError):
        raise InputError(f"{what}={text!r} is not a size; use bytes or a number with K, M, G or T, e.g. 8G") from None
    if value < 1:
        raise InputError(f"{what}={text!r} must be positive")
    return int(value)


@dataclass(frozen=True)
class ActivationProfile:
    """What the working-memory estimate needs to know of an architecture."""

    hidden: int  # channels at level 0 (full resolution) per multiplier unit
    multipliers: tuple[int, ...]  # per level; level i runs at 1 / 2**i of the image side
    attention_factors: frozenset[int]  # downsampling factors at which single-head attention runs


def _flex_profile(config: Any) -> ActivationProfile:
    multipliers = tuple(int(m) for m in config.channel_multipliers)
    factors = {int(r) for r in config.attention_resolutions}
    if config.mid_block_attn:
        factors.add(2 ** (len(multipliers) - 1))
    return ActivationProfile(int(config.hidden_channels), multipliers, frozenset(factors))


def _ibq_profile(config: Any) -> ActivationProfile:
    encoder, decoder = config.attention_levels()
    factors = {2**level for level, (e, d) in enumerate(zip(encoder, decoder)) if e or d}
    factors.add(config.downsample_factor)  # the middle block always attends
    return ActivationProfile(int(config.ch), tuple(int(m) for m in config.ch_mult), frozenset(factors))


# family name -> its profile; a new family adds one line here (else its models are refused, not guessed).
PROFILES: dict[str, Callable[[Any], ActivationProfile]] = {"flex": _flex_profile, "ibq": _ibq_profile}


def activation_profile(config: Any) -> ActivationProfile:
    """The profile of a config object or its dict (a manifest's "config")."""
    from .errors import ConfigError
    from .families import config_from_dict

    if isinstance(config, Mapping):
        config = config_from_dict(dict(config))
    family = getattr(config, "family", "flex")
    if family not in PROFILES:
        raise ConfigError(f"no working-memory profile for model family {family!r}; add one to gsq_core.budgets.PROFILES")
    return PROFILES[family](config)


def work_bytes(
    config: Any, height: int, width: int, direction: Direction, lookup_bytes_per_token: int = 0
) -> int:
    """Estimated peak working memory (bytes) to encode or decode one height x width image.

    config: an architecture config or its dict (a manifest's "config"). lookup_bytes_per_token: the
    lookup's scratch per token position when it is not blocked (exported graphs); 0 for eager.
    """
    profile = activation_profile(config)
    hidden, multipliers = profile.hidden, profile.multipliers
    pixels = height * width
    widest = 0.0
    for level, multiplier in enumerate(multipliers):
        channels = hidden * multiplier
        if direction == "decode" and level + 1 < len(multipliers):
            # upsampling into this level first makes the next level's channels at this resolution
            channels = max(channels, hidden * multipliers[level + 1])
        widest = max(widest, channels / 4**level)
    total = WORK_ACTIVATIONS * 4 * widest * pixels + 24 * pixels  # + the image itself, in and out
    for level_factor in profile.attention_factors:
        tokens = pixels / level_factor**2
        total += 2 * 4 * tokens * tokens  # scores and their softmax, [N, N] fp32 each
    factor = 2 ** (len(multipliers) - 1)
    total += lookup_bytes_per_token * (pixels // (factor * factor))
    return int(total)


def check_work(
    config: Any, height: int, width: int, direction: Direction, label: str = "", lookup_bytes_per_token: int = 0
) -> int:
    """Bytes one image of this size needs; InputError naming the size and the way out when over the budget."""
    needed = work_bytes(config, height, width, direction, lookup_bytes_per_token)
    budget = memory_budget()
    if needed > budget:
        what = f"{label}: " if label else ""
        largest = largest_square(config, direction, budget, lookup_bytes_per_token)
        thing = "encoding a" if direction == "encode" else "decoding tokens of a"
        raise InputError(
            f"{what}{thing} {height}x{width} image needs about {needed / 2**30:.1f} GiB of working memory with "
            f"this model, over the budget of {budget / 2**30:.1f} GiB; resize the images (--resize HxW, "
            f"at most about {largest}x{largest} here) or, if this machine has the memory, raise "
            f"${MEMORY_BUDGET_ENV} (e.g. {MEMORY_BUDGET_ENV}={max(1, -(-needed // 2**30) + 1)}G)"
        )
    return needed


def batch_limit(config: Any, height: int, width: int, direction: Direction, lookup_bytes_per_token: int = 0) -> int:
    """Most images of this size one call may take within the budget (at least 1; check_work first)."""
    needed = work_bytes(config, height, width, direction, lookup_bytes_per_token)
    return max(1, memory_budget() // max(1, needed))


def largest_square(config: Any, direction: Direction, budget: int, lookup_bytes_per_token: int = 0) -> int:
    """Largest side S (a multiple of the model's factor) whose S x S image fits the budget."""
    factor = 2 ** (len(activation_profile(config).multipliers) - 1)
    low, high = 0, 1 << 16
    while high - low > 1:  # work grows with the side, so bisect on multiples of the factor
        middle = (low + high) // 2
        side = middle * factor
        if work_bytes(config, side, side, direction, lookup_bytes_per_token) <= budget:
            low = middle
        else:
            high = middle
    return low * factor
