"""Checkpoint loading: upstream .pt (safely), native .safetensors, and clear errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FLEXGEN
from gsq_core import CheckpointError, load_tokenizer
from gsq_core.checkpoint import UPSTREAM_KEY_PREFIXES, atomic_write, config_from_upstream_kwargs, save_native
from gsq_core.safe_pickle import load_config_pickle

ROOT = Path(__file__).resolve().parents[2]


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
    from tests.conftest import expected_vectors

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


# -- upstream constructor kwargs, by hand (gsq_core.checkpoint's translation table) -----------------------
def _kwargs(**quantizer) -> dict:
    """Upstream kwargs of a small VQ model; quantizer= entries replace its quantizer_config."""
    return {"hidden_channels": 32, "embedding_dim": 8, "quantizer_config": {"quantize_type": "vq", "embed_dim": 8, "num_embed": 64, **quantizer}}


def test_upstream_defaults_fill_what_the_kwargs_leave_out():
    config = config_from_upstream_kwargs({})  # upstream's constructor defaults: VQ, V = 8192, embed_dim 4
    assert (config.hidden_channels, config.embedding_dim, config.attention_resolutions) == (128, 4, ())
    quantizer = config.quantizer
    assert (quantizer.quantize_type, quantizer.num_embed, quantizer.embed_dim, quantizer.num_group) == ("vq", 8192, 4, 1)
    assert quantizer.use_uniform_init and quantizer.argmin_func == "random"
    untyped = config_from_upstream_kwargs({"embedding_dim": 8, "quantizer_config": {"embed_dim": 8, "num_embed": 64}})
    assert untyped.quantizer.quantize_type == "vq" and untyped.quantizer.num_embed == 64
    assert config_from_upstream_kwargs({**_kwargs(), "attention_resolutions": None}).attention_resolutions == ()


def test_upstream_argmin_none_means_plain_argmin():
    assert config_from_upstream_kwargs(_kwargs(argmin_func=None)).quantizer.argmin_func == "argmin"
    assert config_from_upstream_kwargs(_kwargs(argmin_func="random")).quantizer.argmin_func == "random"


def test_upstream_kwargs_that_are_not_a_dict_or_unknown_are_named():
    with pytest.raises(CheckpointError, match=r"^the checkpoint's config must be a dict of constructor arguments, got list$"):
        config_from_upstream_kwargs([1, 2])
    with pytest.raises(CheckpointError, match=r"^the checkpoint's config has constructor arguments this toolkit does not know: "
                                              r"alpha_extra, zeta_extra$"):
        config_from_upstream_kwargs({**_kwargs(), "zeta_extra": 1, "alpha_extra": 2})
    with pytest.raises(CheckpointError, match=r"^the checkpoint's config is invalid: .*num_embed"):
        config_from_upstream_kwargs(_kwargs(num_embed=0))


def test_unknown_quantizer_options_fail_for_vq_and_warn_for_gsq():
    training_only = {"argmin_softmax_tau": 0.1, "lambda_tcr_loss": 0.0, "entropy_loss_type": "x"}
    assert config_from_upstream_kwargs(_kwargs(**training_only)).quantizer.num_embed == 64  # silently ignored
    with pytest.raises(CheckpointError, match=r"^unknown VQ quantizer options in the checkpoint: alpha_opt, zeta_opt$"):
        config_from_upstream_kwargs(_kwargs(zeta_opt=1, alpha_opt=2, **training_only))
    gsq = _kwargs(quantize_type="GSQ", num_group=2, zeta_opt=1, alpha_opt=2, **training_only)
    with pytest.warns(UserWarning, match=r"^ignoring GSQ quantizer options that upstream also ignores: alpha_opt, zeta_opt$"):
        config = config_from_upstream_kwargs(gsq)
    assert (config.quantizer.quantize_type, config.quantizer.num_group) == ("gsq", 2)


# -- writing files ------------------------------------------------------------------------------------------
def test_atomic_write_goes_through_a_hidden_temporary_beside_the_target(tmp_path):
    target = tmp_path / "new" / "deeper" / "model.safetensors"
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert not target.exists()
        tmp.write_bytes(b"weights")

    atomic_write(target, write)
    (tmp,) = seen
    assert tmp.parent == target.parent and tmp.name.startswith(".model.safetensors.") and tmp.name.endswith(".tmp")
    assert target.read_bytes() == b"weights" and sorted(target.parent.iterdir()) == [target]
    with pytest.raises(FileExistsError, match=r"model\.safetensors already exists; pass overwrite=True"):
        atomic_write(target, write)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"), overwrite=True)
    assert target.read_bytes() == b"new"

    def fails(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails, overwrite=True)
    assert target.read_bytes() == b"new" and sorted(target.parent.iterdir()) == [target]  # no temporary left


def test_save_native_refuses_to_replace_unless_asked(tmp_path):
    from tests.conftest import tiny_gsq_model

    model = tiny_gsq_model()
    path = save_native(model, tmp_path / "tiny.safetensors")
    with pytest.raises(FileExistsError):
        save_native(model, path)
    with torch.no_grad():
        model.quantizer.codebook.weight.mul_(2)
    save_native(model, path, overwrite=True)
    assert torch.equal(load_tokenizer(path).quantizer.codebook.weight, model.quantizer.codebook.weight)


def test_ibq_upstream_name_names_a_key_it_cannot_map():
    from gsq_core.checkpoint_ibq import upstream_name

    assert upstream_name("encoder.quant_conv.weight") == "quant_conv.weight"
    with pytest.raises(KeyError, match="quantizer.scale"):
        upstream_name("quantizer.scale")
