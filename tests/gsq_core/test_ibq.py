"""SEED-Voken IBQ: the official checkpoint layout loads safely and reproduces the upstream vectors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import CONFORMANCE_SIZES, IBQ, IBQ_MODEL, ibq_expected
from gsq_core import CheckpointError, load_tokenizer
from gsq_core.fidelity import score_gaps
from gsq_core.images import read_image

ROOT = Path(__file__).resolve().parents[2]
CKPT = IBQ_MODEL.with_suffix(".ckpt")
YAML = IBQ_MODEL.with_suffix(".yaml")
# Tolerances of tests/fixtures/ibq/README.md (measured noise of upstream against itself, with margin).
LATENT_RELATIVE, LATENT_MAX_ABS, RECON_MAX_ABS, NEAR_TIE = 1e-4, 2e-4, 1e-4, 1e-3


@pytest.fixture(scope="module")
def ibq_model():
    return load_tokenizer(CKPT)  # finds ibq_tiny_f4_k1024.yaml beside it; EMA weights


@pytest.fixture(scope="module")
def expected():
    return ibq_expected()


def assert_tokens_match(codes: np.ndarray, expected: dict, size: str) -> None:
    """Identical wherever upstream's top-2 gap is >= 1e-3; below it, upstream's best or runner-up."""
    indices, second, gap = expected[f"indices_{size}"], expected[f"second_{size}"], expected[f"top2_gap_{size}"]
    assert codes.shape == indices.shape and codes.dtype == np.int64
    clear = gap >= NEAR_TIE
    assert np.array_equal(codes[clear], indices[clear])
    near = ~clear
    assert np.all((codes[near] == indices[near]) | (codes[near] == second[near]))


@pytest.mark.parametrize("size", CONFORMANCE_SIZES)
def test_latent_tokens_and_decode_match_upstream(ibq_model, expected, size):
    images = torch.from_numpy(expected[f"input_{size}"])
    latent = ibq_model.encode_latent(images).detach().numpy()
    reference = expected[f"latent_{size}"]
    assert latent.shape == reference.shape
    assert np.linalg.norm(latent - reference) <= LATENT_RELATIVE * np.linalg.norm(reference)
    assert np.abs(latent - reference).max() <= LATENT_MAX_ABS
    codes = ibq_model.encode(images).numpy()
    assert_tokens_match(codes, expected, size)
    assert score_gaps(latent, codes, ibq_model.quantizer.lookup_spec()).max() <= 1e-6  # optimal for our latent
    indices = torch.from_numpy(expected[f"indices_{size}"])
    np.testing.assert_array_equal(ibq_model.codes_to_latent(indices).numpy(), expected[f"quantized_{size}"])
    recon = ibq_model.decode(indices).numpy()
    assert np.abs(recon - expected[f"recon_{size}"]).max() <= RECON_MAX_ABS


def test_raw_weights_reproduce_indices_raw(expected):
    raw = load_tokenizer(CKPT, ema=False)
    for size in CONFORMANCE_SIZES:
        codes = raw.encode(torch.from_numpy(expected[f"input_{size}"])).numpy()
        np.testing.assert_array_equal(codes, expected[f"indices_raw_{size}"])
        assert (codes == expected[f"indices_{size}"]).mean() < 0.8  # really the other weights


def test_png_inputs_through_our_image_reader(ibq_model, expected):
    """Our reader computes uint8 / 127.5 - 1 in float32 (flex_gen's way), upstream in float64: 1 ulp
    apart on some pixels, far inside the tolerances."""
    for size in CONFORMANCE_SIZES:
        paths = sorted((IBQ / "ibq_tiny_f4_k1024_images").glob(f"{size}_*.png"))
        images = np.stack([read_image(path).pixels for path in paths])
        np.testing.assert_allclose(images, expected[f"input_{size}"], rtol=0, atol=1.2e-7)
        codes = ibq_model.encode(torch.from_numpy(images)).numpy()
        assert_tokens_match(codes, expected, size)


def test_model_facts(ibq_model):
    assert ibq_model.family == "ibq"
    assert (ibq_model.num_embed, ibq_model.num_group, ibq_model.downsample_factor) == (1024, 1, 4)
    assert ibq_model.quantizer.token_layout == "BHW" and ibq_model.quantizer.lookup_normalization == "none"
    assert not ibq_model.quantizer.uses_distance
    assert ibq_model.config.summary().startswith("ibq IBQ f4 D=16")


def _copy_checkpoint(tmp_path: Path, name: str = "model.ckpt", with_yaml: bool = True) -> Path:
    target = tmp_path / name
    shutil.copyfile(CKPT, target)
    if with_yaml:
        shutil.copyfile(YAML, target.with_suffix(".yaml"))
    return target


def test_config_beside_the_checkpoint_or_explicit(tmp_path, expected):
    (tmp_path / "alone").mkdir()
    lonely = _copy_checkpoint(tmp_path / "alone", with_yaml=False)
    with pytest.raises(CheckpointError, match=r"does not record its model; pass its YAML with --config"):
        load_tokenizer(lonely)
    explicit = load_tokenizer(lonely, config=YAML)
    beside = load_tokenizer(_copy_checkpoint(tmp_path))
    images = torch.from_numpy(expected["input_64x64"])
    assert torch.equal(explicit.encode(images), beside.encode(images))
    # The flags mean nothing for files that carry their own config: say so instead of ignoring them.
    native = beside.save(tmp_path / "native.safetensors")
    with pytest.raises(CheckpointError, match="carries its own model config"):
        load_tokenizer(native, config=YAML)
    with pytest.raises(CheckpointError, match="--no-ema"):
        load_tokenizer(native, ema=False)


def test_native_round_trip_records_the_family(ibq_model, tmp_path, expected):
    from safetensors import safe_open

    path = ibq_model.save(tmp_path / "ibq.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["family"] == "ibq"
    reloaded = load_tokenizer(path)
    assert reloaded.config == ibq_model.config
    images = torch.from_numpy(expected["input_96x128"])
    assert torch.equal(reloaded.encode(images), ibq_model.encode(images))


def _write_yaml(path: Path, edit) -> Path:
    document = yaml.safe_load(YAML.read_text())
    edit(document["model"]["init_args"])
    path.write_text(yaml.safe_dump(document))
    return path


def test_yaml_that_does_not_match_lists_keys_and_shapes(tmp_path):
    checkpoint = _copy_checkpoint(tmp_path, with_yaml=False)
    wider = _write_yaml(tmp_path / "wider.yaml", lambda args: args["ddconfig"].update(ch=64))
    with pytest.raises(CheckpointError) as error:
        load_tokenizer(checkpoint, config=wider)
    message = str(error.value)
    assert "do not match" in message and "wider.yaml" in message and "\n" not in message
    assert "model_ema.encoderconv_inweight [32, 3, 3, 3] in the checkpoint, [64, 3, 3, 3] from the config" in message
    deeper = _write_yaml(tmp_path / "deeper.yaml", lambda args: args["ddconfig"].update(num_res_blocks=2))
    with pytest.raises(CheckpointError, match=r"missing: model_ema\.encoderdown0block1norm1weight"):
        load_tokenizer(checkpoint, config=deeper)
    bigger = _write_yaml(tmp_path / "bigger.yaml", lambda args: args.update(n_embed=2048))
    with pytest.raises(CheckpointError, match=r"quantizeembeddingweight \[1024, 16\] in the checkpoint, \[2048, 16\]"):
        load_tokenizer(checkpoint, config=bigger)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a["ddconfig"].pop("double_z"), "double_z is true"),
        (lambda a: a["ddconfig"].update(give_pre_end=True), "give_pre_end"),
        (lambda a: a["ddconfig"].update(out_ch=1), "out_ch=1 differs"),
        (lambda a: a["ddconfig"].pop("z_channels"), "lacks z_channels"),
        (lambda a: a.update(remap="used_codes.npy"), "remapping"),
        (lambda a: a["ddconfig"].update(ch=48), "not divisible by 32"),
    ],
    ids=["double_z-default", "give_pre_end", "out_ch", "missing-key", "remap", "groupnorm"],
)
def test_configs_upstream_cannot_run_are_refused(tmp_path, edit, message):
    checkpoint = _copy_checkpoint(tmp_path, with_yaml=False)
    with pytest.raises(CheckpointError, match=message):
        load_tokenizer(checkpoint, config=_write_yaml(tmp_path / "bad.yaml", edit))


def test_other_lightning_models_and_bad_yaml_are_refused(tmp_path):
    checkpoint = _copy_checkpoint(tmp_path, with_yaml=False)
    lfq = tmp_path / "lfq.yaml"
    lfq.write_text("model:\n  class_path: src.Open_MAGVIT2.models.lfqgan.VQModel\n  init_args: {}\n")
    with pytest.raises(CheckpointError, match="not SEED-Voken's IBQ"):
        load_tokenizer(checkpoint, config=lfq)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_tokenizer(checkpoint, config=broken)
    with pytest.raises(CheckpointError, match="no such config file"):
        load_tokenizer(checkpoint, config=tmp_path / "nothing.yaml")


class _RunsCommand:
    """A pickle payload that would run a shell command when unpickled by plain pickle.loads."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_lightning_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    package = torch.load(CKPT, weights_only=True)
    package["callbacks"] = {"ModelCheckpoint": _RunsCommand(marker)}
    hostile = tmp_path / "hostile.ckpt"
    torch.save(package, hostile)
    shutil.copyfile(YAML, hostile.with_suffix(".yaml"))
    with pytest.raises(CheckpointError, match=r"refusing to load: its pickle references (posix|nt|os)\.system"):
        load_tokenizer(hostile)
    assert not marker.exists()
    for command in (["-m", "gsq_core", "info", str(hostile)], ["-m", "exporters", "--ckpt", str(hostile),
                                                                 "--out", str(tmp_path / "out")]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "refusing" in result.stderr and "Traceback" not in result.stderr
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "lossconfig, entropy, quant",
    [
        ({"params": {"entropy_loss_weight": 0.05, "quant_loss_weight": 0.5}}, 0.05, 0.5),  # taming's params
        ({"init_args": {"entropy_loss_weight": 0.2, "quant_loss_weight": 2.0}}, 0.2, 2.0),  # LightningCLI's init_args
        ({"params": {"quant_loss_weight": 3.0}, "init_args": {"quant_loss_weight": 9.0}}, 1.0, 3.0),  # params first
        ({"params": "not a mapping"}, 1.0, 1.0),  # VQLPIPSWithDiscriminator's defaults
        ("not a mapping", 1.0, 1.0),
        (None, 1.0, 1.0),
    ],
)
def test_training_weights_come_from_the_loss_block(lossconfig, entropy, quant):
    from gsq_core.checkpoint_ibq import ibq_config_from_init_args

    args = yaml.safe_load(YAML.read_text())["model"]["init_args"]
    args["lossconfig"] = lossconfig
    config, use_ema = ibq_config_from_init_args(args)
    assert use_ema is True
    assert (config.quantizer.entropy_loss_weight, config.quant_loss_weight) == (entropy, quant)
    args["use_entropy_loss"] = False
    assert ibq_config_from_init_args(args)[0].quantizer.entropy_loss_weight == 0.0
