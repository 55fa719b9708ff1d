"""PrecisionPlan (exporters.precision): every spec it takes, every spec it refuses, the one string it
renders for the manifest, and the export that parses the user's --precision once and never again."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from gsq_deploy.exporters import GRAPH_NAMES, ExportError
from gsq_deploy.exporters.build import record_precisions
from gsq_deploy.exporters.precision import PRECISIONS, PrecisionPlan

ALL_PLANS = [PrecisionPlan(encoder, decoder) for encoder, decoder in itertools.product(PRECISIONS, repeat=2)]


# -- every valid form ------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_one_name_is_every_part(precision):
    plan = PrecisionPlan.parse(precision)
    assert (plan.encoder, plan.decoder, plan.single) == (precision, precision, precision)
    assert plan == PrecisionPlan.uniform(precision) and str(plan) == plan.slug == precision


@pytest.mark.parametrize("plan", ALL_PLANS, ids=str)
@pytest.mark.parametrize("separator", [",", "+"])
@pytest.mark.parametrize("reverse", [False, True], ids=["encoder-first", "decoder-first"])
def test_per_part_specs_in_any_order_and_separator(plan, separator, reverse):
    items = [f"encoder={plan.encoder}", f"decoder={plan.decoder}"]
    text = separator.join(reversed(items) if reverse else items)
    assert PrecisionPlan.parse(text) == plan
    assert PrecisionPlan.parse(f"  {text.replace('=', ' = ')}  ") == plan  # spaces around the pieces


@pytest.mark.parametrize(
    "text, encoder, decoder",
    [
        ("encoder=int8", "int8", "fp32"),  # a part not named is fp32
        ("decoder=bf16", "fp32", "bf16"),
        (" fp16 ", "fp16", "fp16"),
    ],
)
def test_a_part_not_named_is_fp32(text, encoder, decoder):
    assert PrecisionPlan.parse(text) == PrecisionPlan(encoder, decoder)


def test_graphs_follow_their_parts_and_the_lookup_is_fp32():
    plan = PrecisionPlan.parse("encoder=fp16,decoder=int8")
    assert {name: plan.for_graph(name) for name in GRAPH_NAMES} == {
        "encoder": "fp16",
        "quantizer": "fp32",
        "decoder": "int8",
        "tokenize": "fp16",
        "detokenize": "int8",
    }
    with pytest.raises(ExportError, match="unknown graph 'vocoder'"):
        plan.for_graph("vocoder")


# -- every refusal: one ExportError line naming the input --------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--precision is empty; give one of fp32, fp16, bf16, int8 or encoder=...,decoder=..."),
        ("   ", "--precision is empty"),
        ("fp64", "--precision 'fp64' is unknown; choose from fp32, fp16, bf16, int8"),
        ("encoder", "--precision 'encoder' is unknown"),
        ("encoder=", "--precision 'encoder=': 'encoder=' is not PART=PRECISION (e.g. decoder=int8)"),
        ("=int8", "'=int8' is not PART=PRECISION"),
        ("encoder=int8,", "'' is not PART=PRECISION"),
        ("encoder=int8,decoder", "'decoder' is not PART=PRECISION"),
        ("quantizer=int8", "the quantizer (the codebook lookup) is fp32 in every build; give a precision for encoder and/or decoder"),
        ("lookup=fp32", "the lookup (the codebook lookup) is fp32 in every build"),
        ("gripper=int8", "--precision 'gripper=int8': unknown part 'gripper'; choose from encoder, decoder"),
        ("encoder=int8+encoder=fp32", "the encoder is given twice"),
        ("decoder=fp8", "--precision 'decoder=fp8': precision 'fp8' for the decoder is unknown; choose from fp32, fp16, bf16, int8"),
        ("encoder=INT8", "precision 'INT8' for the encoder is unknown"),
    ],
)
def test_bad_specs_are_refused_in_one_line(text, message):
    with pytest.raises(ExportError) as caught:
        PrecisionPlan.parse(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("encoder, decoder, part", [("fp8", "fp32", "encoder"), ("fp32", "int4", "decoder")])
def test_a_plan_made_directly_is_checked_too(encoder, decoder, part):
    with pytest.raises(ExportError, match=f"precision '{(encoder if part == 'encoder' else decoder)}' for the {part} is unknown"):
        PrecisionPlan(encoder, decoder)


def test_a_plan_is_frozen_and_hashable():
    plan = PrecisionPlan.parse("decoder=int8")
    with pytest.raises(AttributeError):
        plan.decoder = "fp32"  # type: ignore[misc]
    assert len({plan, PrecisionPlan("fp32", "int8"), PrecisionPlan.parse("encoder=fp32+decoder=int8")}) == 1


# -- the one string: the manifest's `precision`, round trip -------------------------------------------
@pytest.mark.parametrize("plan", ALL_PLANS, ids=str)
def test_the_manifest_string_is_canonical_and_parses_back(plan):
    text = str(plan)
    assert PrecisionPlan.parse(text) == plan
    if plan.encoder == plan.decoder:
        assert text == plan.encoder
    else:
        assert text == f"encoder={plan.encoder},decoder={plan.decoder}"
    manifest = {"graphs": {name: {"lookup_precision": "int8"} for name in GRAPH_NAMES}}
    record_precisions(manifest, plan)
    written = json.loads(json.dumps(manifest))  # what manifest.json holds
    assert written["precision"] == text and PrecisionPlan.parse(written["precision"]) == plan
    assert written["precisions"] == {"encoder": plan.encoder, "quantizer": "fp32", "decoder": plan.decoder}
    assert {name: entry["precision"] for name, entry in written["graphs"].items()} == {
        name: plan.for_graph(name) for name in GRAPH_NAMES
    }
    assert {name for name, entry in written["graphs"].items() if "lookup_precision" in entry} == {"quantizer", "tokenize"}
    assert all(entry.get("lookup_precision", "fp32") == "fp32" for entry in written["graphs"].values())


def test_slugs_are_file_names_one_per_plan():
    slugs = {plan: plan.slug for plan in ALL_PLANS}
    assert len(set(slugs.values())) == len(ALL_PLANS)
    assert not any(character in slug for slug in slugs.values() for character in "=,/ ")
    assert slugs[PrecisionPlan("fp32", "int8")] == "encoder_fp32+decoder_int8"


@pytest.mark.parametrize(
    "text, available, label",
    [
        ("int8", ("fp32",), "int8"),
        ("decoder=bf16", ("fp32", "fp16", "int8"), "bf16 (the decoder)"),
        ("encoder=bf16,decoder=int8", ("fp32", "fp16", "int8"), "bf16 (the encoder)"),
        ("encoder=bf16,decoder=fp16", ("fp32",), "fp16 (the decoder)"),  # the first in PRECISIONS order
        ("encoder=fp16,decoder=int8", ("fp32", "fp16", "int8"), None),
    ],
)
def test_a_refusal_names_the_first_precision_a_target_lacks(text, available, label):
    assert PrecisionPlan.parse(text).unsupported(available) == label


# -- parsed once: a real export through gsq-export -----------------------------------------------------
def test_gsq_export_parses_the_precision_once(tmp_path, monkeypatch):
    """The whole export (the fp32 source artifact, the int8 conversion, the manifest, validation
    through the runtime) runs on the plan the CLI parsed; a second parse anywhere fails this."""
    from tests.conftest import tiny_gsq_model

    from gsq_deploy.exporters.cli import export_command
    from gsq_core.checkpoint import save_native

    checkpoint = save_native(tiny_gsq_model(), tmp_path / "tiny.safetensors")
    parse = PrecisionPlan.__dict__["parse"].__func__
    parsed: list[str] = []

    def counting_parse(cls, text):
        parsed.append(text)
        return parse(cls, text)

    monkeypatch.setattr(PrecisionPlan, "parse", classmethod(counting_parse))
    out = tmp_path / "out"
    args = ["--ckpt", str(checkpoint), "--precision", "decoder=int8", "--min-recon-psnr", "5", "--out", str(out)]
    result = CliRunner().invoke(export_command, [*args, "--graphs", "encoder,decoder"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert parsed == ["decoder=int8"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "encoder=fp32,decoder=int8" and manifest["validation"]["passed"]
    assert {name: entry["precision"] for name, entry in manifest["graphs"].items()} == {"encoder": "fp32", "decoder": "int8"}
    validation = manifest["validation"]
    assert validation["precision"] == manifest["precision"] and validation["tolerance_overrides"] == {"min_recon_psnr_db": 5.0}
    assert validation["graphs"]["decoder"]["tolerances"]["min_recon_psnr_db"] == 5.0  # the int8 decoder's threshold
    assert validation["graphs"]["encoder"]["tolerances"]["min_recon_psnr_db"] == 60.0  # fp32: never loosened
