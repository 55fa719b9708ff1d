"""Hostile checkpoints: configs checked against the weights' shapes on the meta device before any
model is built, and the restricted config unpickler held to a depth, size and expansion budget."""

from __future__ import annotations

import json
import pickle
import shutil
import time

import pytest
import torch
from tests.conftest import FLEXGEN, IBQ
from tests.hostile_support import assert_one_line_error, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gsq_core import CheckpointError, load_tokenizer
from gsq_core.api import resolve_checkpoint
from gsq_core.safe_pickle import MAX_PICKLE_BYTES, load_config_pickle


def default_with_config(tmp_path, **changes) -> str:
    """The default model's 5.9 MB of weights with its config metadata changed."""
    source = resolve_checkpoint("default")
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    path = tmp_path / "forged.safetensors"
    save_file(load_file(str(source)), str(path), metadata={**metadata, "config": json.dumps(config)})
    return str(path)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"quantizer": {"num_embed": 2**31 - 1}}, "quantizer.codebook.weight [1024, 2] != [2147483647, 2]"),
        ({"hidden_channels": 8192}, "[8192, 3, 3, 3]"),
        ({"encoder_layer_configs": [0, 100_000, 1, 1, 1]}, "builds more than"),
        ({"channel_multipliers": [1, 1, 1, 2048]}, "shape mismatch"),
    ],
    ids=["V=2^31-1", "hidden-8192", "100k-layers", "wide-multiplier"],
)
def test_config_claiming_a_huge_model_is_refused_before_building(tmp_path, changes, fragment):
    path = default_with_config(tmp_path, **changes)
    started = time.monotonic()
    with pytest.raises(CheckpointError) as caught:
        load_tokenizer(path)
    assert fragment in str(caught.value)
    assert time.monotonic() - started < 60  # nothing built, nothing allocated


def test_cli_answers_a_forged_config_in_one_line_within_4_gb(tmp_path):
    path = default_with_config(tmp_path, quantizer={"num_embed": 2**31 - 1})
    result = run_cli(["-m", "gsq_core", "info", path])
    assert_one_line_error(result, "forged.safetensors", "do not match")


def test_ibq_yaml_claiming_a_huge_model_is_refused_before_building(tmp_path):
    checkpoint = tmp_path / "tiny.ckpt"
    shutil.copy(IBQ / "ibq_tiny_f4_k1024.ckpt", checkpoint)
    yaml_text = (IBQ / "ibq_tiny_f4_k1024.yaml").read_text()
    for forged, fragment in (("num_res_blocks: 100000", "builds more than"), ("ch: 8192", "shape mismatch")):
        original = "num_res_blocks: 1" if "num_res_blocks" in forged else "ch: 32"
        (tmp_path / "tiny.yaml").write_text(yaml_text.replace(original, forged, 1))
        with pytest.raises(CheckpointError, match=fragment):
            load_tokenizer(checkpoint)


# -- the config pickle -------------------------------------------------------------------------------------
def upstream_with_config_bytes(tmp_path, config: bytes):
    package = torch.load(FLEXGEN / "gsq_f8_magvit.pt", map_location="cpu", weights_only=True)
    package["config"] = config
    path = tmp_path / "forged.pt"
    torch.save(package, path)
    return path


def nested_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of a list nested `depth` deep (2 bytes per level)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def billion_laughs() -> bytes:
    value = ["lol"] * 10
    for _ in range(20):
        value = [value] * 10  # 10**21 strings once expanded, 500 bytes pickled
    return pickle.dumps({"hidden_channels": value}, protocol=2)


def cycle() -> bytes:
    looped: list = []
    looped.append(looped)
    return pickle.dumps({"hidden_channels": looped}, protocol=2)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (nested_pickle(200_000), "levels deep"),
        (billion_laughs(), "billion laughs"),
        (cycle(), "reference cycle"),
        (pickle.dumps({"x": "y" * (MAX_PICKLE_BYTES + 1)}, protocol=2), "more than a config needs"),
    ],
    ids=["nested-200k", "billion-laughs", "cycle", "oversized"],
)
def test_config_pickle_budgets(tmp_path, data, fragment):
    assert len(data) < 10**7
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=fragment):
        load_config_pickle(data)
    assert time.monotonic() - started < 10
    with pytest.raises(CheckpointError, match=fragment):
        load_tokenizer(upstream_with_config_bytes(tmp_path, data))


def test_cli_answers_a_nested_config_pickle_in_one_line(tmp_path):
    path = upstream_with_config_bytes(tmp_path, nested_pickle(200_000))
    result = run_cli(["-m", "gsq_core", "info", str(path)])
    assert_one_line_error(result, "forged.pt", "levels deep")


def test_shared_references_within_budget_still_load():
    shared = [1, 2, 3]
    config = pickle.dumps({"encoder_layer_configs": shared, "decoder_layer_configs": shared}, protocol=2)
    assert load_config_pickle(config) == {"encoder_layer_configs": [1, 2, 3], "decoder_layer_configs": [1, 2, 3]}
