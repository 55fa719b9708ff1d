"""Checkpoint loading: upstream .pt (safely), native .safetensors, and clear errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FLEXGEN
from gsq_core import CheckpointError, load_tokenizer
from gsq_core.checkpoint import UPSTREAM_KEY_PREFIXES, config_from_upstream_kwargs
from gsq_core.safe_pickle import load_config_pickle

ROOT = Path(__file__).resolve().parents[1]


class _RunsCommand:
    """A pickle payload that would run a shell command when unpickled by plain pickle.loads."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _upstream_package(name: str = "gsq_f8_magvit") -> dict:
    return torch.load(FLEXGEN / f"{name}.pt", weights_only=True)


def test_omegaconf_config_is_read_without_omegaconf_objects():
    kwargs = load_config_pickle(_upstream_package()["config"])
    assert kwargs["channel_multipliers"] == [1, 1, 2, 2]
    assert kwargs["quantizer_config"]["quantize_type"] == "gsq"
    assert "omegaconf" not in repr(kwargs)
    config = config_from_upstream_kwargs(kwargs)
    assert (config.quantizer.num_group, config.quantizer.group_dim, config.quantizer.num_embed) == (4, 4, 1024)


def test_hostile_config_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    package = _upstream_package()
    package["config"] = pickle.dumps({"hidden_channels": _RunsCommand(marker)})
    hostile = tmp_path / "hostile.pt"
    torch.save(package, hostile)
    with pytest.raises(CheckpointError, match="posix.system|os.system|nt.system"):
        load_tokenizer(hostile)
    assert not marker.exists()
    # The CLI says so in one line, without a traceback, and still runs nothing.
    result = subprocess.run(
        [sys.executable, "-m", "gsq_core", "info", str(hostile)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "refusing" in result.stderr
    assert not marker.exists()


def test_hostile_tensor_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile_outer.pt"
    torch.save({"model_state_dict": {}, "config": b"", "evil": _RunsCommand(marker)}, hostile)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_tokenizer(hostile)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 100, 4000, -1000])
def test_truncated_or_empty_files_give_clear_errors(tmp_path, cut):
    data = (FLEXGEN / "vq_f16_attn.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=str(broken)):
        load_tokenizer(broken)


def test_truncated_native_checkpoint(tmp_path):
    model = load_tokenizer(FLEXGEN / "vq_f16_attn.pt")
    path = model.save(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_tokenizer(path)


def test_missing_file_and_unknown_name():
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_tokenizer("/nonexistent/model.pt")
    with pytest.raises(CheckpointError, match="preset config"):
        load_tokenizer("gsq-f8-d64-g16-v8k")


def test_state_dict_mismatch_lists_keys(tmp_path):
    package = _upstream_package()
    state = package["model_state_dict"]
    del state["encoder.conv_in.bias"]
    state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"][:, :8]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "mismatch.pt"
    torch.save(package, path)
    with pytest.raises(CheckpointError) as info:
        load_tokenizer(path)
    message = str(info.value)
    assert "missing: encoder.conv_in.bias" in message
    assert "unexpected: extra.weight" in message
    assert "decoder.conv_in.weight [64, 8, 3, 3] != [64, 16, 3, 3]" in message


def test_unsupported_quantizer_type(tmp_path):
    package = _upstream_package("vq_f16_attn")
    kwargs = load_config_pickle(package["config"])
    kwargs["quantizer_config"]["quantize_type"] = "fsq"
    package["config"] = pickle.dumps(kwargs)
    path = tmp_path / "fsq.pt"
    torch.save(package, path)
    with pytest.raises(CheckpointError, match="'fsq'.*not supported"):
        load_tokenizer(path)


def test_native_round_trip_gives_identical_tokens(tmp_path):
    from conftest import expected_vectors

    model = load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt")
    path = model.save(tmp_path / "native.safetensors")
    with pytest.raises(FileExistsError):
        model.save(path)
    reloaded = load_tokenizer(path)
    assert reloaded.config == model.config
    images = torch.from_numpy(expected_vectors("gsq_f8_magvit")["input_96x128"])
    assert torch.equal(model.encode(images), reloaded.encode(images))
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_upstream_key_map_is_explicit():
    assert dict(UPSTREAM_KEY_PREFIXES) == {"encoder.fianl_layers.": "encoder.final_layers.", "quantizers.": "quantizer."}
