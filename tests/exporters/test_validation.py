"""Export validation fails a bad graph, for every check it makes (issue 11: tests that can fail).

exporters.validation.validate_graphs runs against runners that return the eager model's own outputs,
then the same outputs with one planted fault each: latent off by 1e-3, a non-optimal token, low
token agreement, a blurred or NaN reconstruction, a graph that cannot run. No export is needed:
a runner is anything with run_graph(name, value).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from tests.conftest import FLEXGEN, expected_vectors

from gsq_deploy.exporters import ExportError
from gsq_deploy.exporters.graphs import ShapePlan, graph_specs
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_deploy.exporters.validation import summary_line, validate_graphs
from gsq_core import load_tokenizer


@pytest.fixture(scope="module")
def model():
    return load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt")


@pytest.fixture(scope="module")
def images():
    return expected_vectors("gsq_f8_magvit")["input_64x64"][:1]


@pytest.fixture(scope="module")
def specs(model):
    return graph_specs(model, ShapePlan.dynamic())


class EagerRunner:
    """Runs every graph with the eager model; `fault(name, output)` may change an output."""

    def __init__(self, model, fault=None):
        self.model, self.fault = model, fault

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor = torch.from_numpy(value)
            if name == "encoder":
                output = self.model.encode_latent(tensor)
            elif name == "quantizer":
                output = self.model.quantizer.codes(tensor)
            elif name == "tokenize":
                output = self.model.encode(tensor)
            else:
                output = self.model.decode(tensor)
        output = output.numpy().copy()
        return output if self.fault is None else self.fault(name, output)

    def encode(self, images: np.ndarray) -> np.ndarray:  # the runtime call users make (validation's paths)
        return self.run_graph("tokenize", images) if self.fault is None else self.fault("encode", self._plain("tokenize", images))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.run_graph("decoder", codes) if self.fault is None else self.fault("decode", self._plain("decoder", codes))

    def _plain(self, name: str, value: np.ndarray) -> np.ndarray:
        return EagerRunner(self.model).run_graph(name, value)


def validate(model, specs, images, names, fault=None, precision="fp32", tolerances=None):
    chosen, plan = [specs[name] for name in names], PrecisionPlan.parse(precision)
    return validate_graphs(model, chosen, EagerRunner(model, fault), [images], plan, tolerance_overrides=tolerances)


def one_token_off(name, codes):
    codes = codes.copy()
    codes[0, 0, 0, 0] = (codes[0, 0, 0, 0] + 1) % 1024
    return codes


def test_the_eager_model_passes_every_check(model, specs, images):
    report = validate(model, specs, images, list(specs))
    assert report["passed"] and report["failures"] == [] and report["warnings"] == []
    for name, result in report["graphs"].items():
        assert result["passed"] and result["errors"] == [], name
    assert report["graphs"]["tokenize"]["token_agreement"] == 1.0
    assert report["graphs"]["tokenize"]["max_score_gap"] <= 1e-6
    assert report["graphs"]["encoder"]["latent_relative_error"] == 0.0
    assert report["graphs"]["decoder"]["recon_identical"]
    assert "passed, token agreement 100.00%" in summary_line(report, 1)


def test_a_latent_off_by_a_thousandth_fails(model, specs, images):
    report = validate(model, specs, images, ["encoder"], lambda name, latent: latent * np.float32(1.001))
    assert not report["passed"]
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("encoder: latent error")
    assert report["graphs"]["encoder"]["latent_relative_error"] == pytest.approx(1e-3, rel=1e-3)
    assert "FAILED" in summary_line(report, 1)


def test_a_latent_just_inside_the_limit_passes(model, specs, images):
    report = validate(model, specs, images, ["encoder"], lambda name, latent: latent * np.float32(1.00005))
    assert report["passed"], report["failures"]


def test_a_nan_latent_fails_even_where_misses_only_warn(model, specs, images):
    def nan(name, latent):
        latent[0, 0, 0, 0] = np.nan
        return latent

    report = validate(model, specs, images, ["encoder"], nan, precision="fp16")
    assert not report["passed"] and report["failures"][0].startswith("encoder: latent error")


def test_a_non_optimal_token_fails_fp32(model, specs, images):
    report = validate(model, specs, images, ["tokenize"], one_token_off)
    assert not report["passed"] and report["warnings"] == []
    assert len(report["failures"]) == 1 and "tokenize: a token is not an optimal choice" in report["failures"][0]
    assert report["graphs"]["tokenize"]["disagreements"] == 1


def test_low_token_agreement_is_judged_by_its_limit(model, specs, images):
    """fp16 builds hold tokenize to a token agreement: a miss is a warning, a met limit is silent."""
    warned = validate(model, specs, images, ["tokenize"], one_token_off, precision="fp16",
                      tolerances={"min_token_agreement": 1.0})  # fmt: skip
    assert warned["passed"] and warned["failures"] == []
    assert len(warned["warnings"]) == 1 and "tokenize: token agreement" in warned["warnings"][0]
    met = validate(model, specs, images, ["tokenize"], one_token_off, precision="fp16",
                   tolerances={"min_token_agreement": 0.99})  # fmt: skip
    assert met["passed"] and met["warnings"] == []


def test_a_blurred_reconstruction_fails(model, specs, images):
    def blurred(name, recon):
        return recon + np.float32(0.01) * np.sign(recon)

    report = validate(model, specs, images, ["decoder", "detokenize"], blurred)
    assert not report["passed"] and len(report["failures"]) == 2
    assert all("reconstruction PSNR against eager" in failure for failure in report["failures"])


def test_a_nan_reconstruction_fails_even_where_misses_only_warn(model, specs, images):
    def nan(name, recon):
        recon[0, 0, 0, 0] = np.nan
        return recon

    report = validate(model, specs, images, ["detokenize"], nan, precision="fp16")
    assert not report["passed"]
    assert report["failures"] == ["detokenize: the reconstruction holds NaN or infinite values"]
    assert report["graphs"]["detokenize"]["recon_finite"] is False


def test_a_graph_that_cannot_run_fails(model, specs, images):
    def broken(name, output):
        raise RuntimeError("Non-zero status code returned while running Conv node\ndetail")

    report = validate(model, specs, images, ["encoder"], broken, precision="fp16")
    assert not report["passed"]
    assert report["failures"] == ["encoder: failed to run on input [1, 3, 64, 64]: Non-zero status code returned while running Conv node"]


def test_fp32_misses_fail_and_reduced_precision_misses_warn(model, specs, images):
    def off(name, latent):
        return latent * np.float32(1.05)

    fp32 = validate(model, specs, images, ["encoder"], off)
    assert not fp32["passed"] and fp32["warnings"] == []
    fp16 = validate(model, specs, images, ["encoder"], off, precision="fp16")
    assert fp16["passed"] and fp16["failures"] == [] and fp16["warnings"][0].startswith("encoder: latent error")
    assert fp16["graphs"]["encoder"]["tolerances"]["warn_only"] is True
    assert fp16["graphs"]["encoder"]["tolerances"]["max_score_gap"] is None  # 'no limit' is written as null in JSON


def test_overrides_do_not_loosen_fp32(model, specs, images):
    loose = {"max_latent_relative_error": 1.0}
    report = validate(model, specs, images, ["encoder"], lambda n, x: x * np.float32(1.001), tolerances=loose)
    assert not report["passed"] and report["graphs"]["encoder"]["tolerances"]["max_latent_relative_error"] == 1e-4


# -- what the report records, and the runtime calls validation judges (paths) ---------------------------
def noisy_images(name, images):
    return images + np.random.default_rng(3).normal(scale=0.5, size=images.shape).astype(np.float32)


def test_paths_judge_the_calls_users_make_at_their_parts_precision(model, specs, images):
    """An OpenVINO bf16 encoder answers encode with two graphs: validation also judges the calls."""
    mixed = "encoder=fp32,decoder=int8"
    runner = EagerRunner(model)
    plan = PrecisionPlan.parse(mixed)
    report = validate_graphs(model, [specs["encoder"]], runner, [images], plan, image_names=["a.png"], paths=("encode", "decode"))
    assert report["passed"] and report["warnings"] == [] and set(report["paths"]) == {"encode", "decode"}
    assert set(report["graphs"]) == {"encoder"}
    assert (report["paths"]["encode"]["precision"], report["paths"]["decode"]["precision"]) == ("fp32", "int8")
    assert report["paths"]["encode"]["token_agreement"] == 1.0 and report["paths"]["encode"]["passed"]
    decode = report["paths"]["decode"]
    assert decode["psnr_vs_input_drop_db"] == pytest.approx(0.0, abs=1e-9)
    assert decode["eager_psnr_vs_input_db"] == pytest.approx(decode["psnr_vs_input_db"])
    assert decode["tolerances"]["max_input_psnr_drop_db"] == 0.3  # int8's, the decoder's precision
    assert report["precision"] == mixed and report["precisions"] == plan.to_manifest()
    assert report["images"] == {"names": ["a.png"], "batches": [list(images.shape)]}
    assert report["tolerance_overrides"] == {}
    assert summary_line(report, 1) == (
        "validated 1 graphs and encode / decode against eager on 1 images: passed, token agreement 100.00%, "
        "PSNR vs input +0.00 dB against eager"
    )


def test_a_bad_path_warns_or_fails_by_its_parts_precision(model, specs, images):
    def fault(name, output):
        return noisy_images(name, output) if name == "decode" else one_token_off(name, output)

    runner, overrides = EagerRunner(model, fault), {"max_input_psnr_drop_db": 0.1}
    plan = PrecisionPlan("fp32", "int8")
    report = validate_graphs(model, [], runner, [images], plan, None, overrides, ("encode", "decode"))
    assert not report["passed"] and report["failures"] == [
        f for f in report["failures"] if f.startswith("encode: a token is not an optimal choice")
    ]
    assert len(report["failures"]) == 1 and not report["paths"]["encode"]["passed"]
    assert report["paths"]["decode"]["passed"]  # the int8 decoder's misses only warn
    assert any(w.startswith("decode: PSNR against the input images") for w in report["warnings"])
    assert report["paths"]["decode"]["psnr_vs_input_drop_db"] > 0.1 and report["tolerance_overrides"] == overrides
    line = summary_line(report, 1)
    assert line.startswith("validated 0 graphs and encode / decode against eager on 1 images: FAILED")
    assert f", {len(report['warnings'])} warning(s)" in line
    assert line.count("\n  warning: ") == len(report["warnings"]) >= 2


def test_warnings_of_every_graph_are_kept(model, specs, images):
    def off(name, output):
        return output * np.float32(1.05) if name == "encoder" else one_token_off(name, output)

    report = validate(model, specs, images, ["encoder", "tokenize"], off, precision="fp16", tolerances={"min_token_agreement": 1.0})
    assert report["passed"]
    assert [w.split(":")[0] for w in report["warnings"]] == ["encoder", "tokenize"]
    assert report["graphs"]["encoder"]["precision"] == report["graphs"]["tokenize"]["precision"] == "fp16"


def test_unknown_overrides_and_silent_errors_are_named(model, specs, images):
    for precision in ("fp16", "fp32"):  # refused, not ignored, where fp32's fixed tolerances apply too
        with pytest.raises(ExportError, match=r"tolerance overrides \['max_score_gap'\]: only min_token_agreement, "):
            validate(model, specs, images, ["encoder"], precision=precision, tolerances={"max_score_gap": 1.0})

    def silent(name, output):
        raise MemoryError()  # no message: the report names the error's type

    report = validate(model, specs, images, ["encoder"], silent)
    assert report["failures"] == ["encoder: failed to run on input [1, 3, 64, 64]: MemoryError"]


# -- the one tolerance table: its flag fields are gsq-export's threshold flags ------------------------
@pytest.mark.parametrize(
    "parameter, value, field",
    [
        ("min_token_agreement", 0.9, "min_token_agreement"),
        ("max_latent_error", 0.5, "max_latent_relative_error"),
        ("min_recon_psnr", 20.0, "min_recon_psnr_db"),
        ("max_input_psnr_drop", 1.5, "max_input_psnr_drop_db"),
    ],
)
def test_each_threshold_flag_sets_its_tolerance_on_reduced_graphs_only(parameter, value, field):
    from gsq_deploy.exporters.target_options import export_options
    from gsq_deploy.exporters.validation import OVERRIDABLE, TOLERANCES, tolerances_for

    assert OVERRIDABLE == ("min_token_agreement", "max_latent_relative_error", "min_recon_psnr_db", "max_input_psnr_drop_db")
    options = export_options("onnx", {"precision": "decoder=int8", parameter: value})
    assert options["precision"] == PrecisionPlan("fp32", "int8") and options["tolerance_overrides"] == {field: value}
    assert getattr(tolerances_for("int8", options["tolerance_overrides"]), field) == value
    assert tolerances_for("fp32", options["tolerance_overrides"]) == TOLERANCES["fp32"]
    with pytest.raises(ExportError) as caught:
        export_options("onnx", {"precision": "fp32", parameter: value})
    assert str(caught.value) == (
        "--min-token-agreement / --max-latent-error / --min-recon-psnr / --max-input-psnr-drop set warning thresholds of "
        "reduced precisions; fp32 is held to fixed tolerances"
    )
