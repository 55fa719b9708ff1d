"""Benchmarks run end to end on tiny inputs (speed targets live in the benchmarks' printed ratios)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_module

from benchmarks.lookup_case import LookupCase
from benchmarks.lookup_worker import skip_reason

REPO = Path(__file__).parents[2]


def test_quantizer_benchmark_sweep_writes_report(tmp_path):
    out = tmp_path / "quantizer.json"
    args = ["--vocab-sizes", "256", "--groups", "4x2", "--batch-sizes", "2", "--image-size", "32", "--downsample", "8"]
    args += ["--methods", "eager,full,onnx,onnx_dense", "--repeats", "2", "--threads", "1", "--no-progress"]
    completed = run_module("benchmarks.quantizer", *args, "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(out.read_text())
    results = {record["method"]: record for record in report["results"]}
    assert set(results) == {"eager", "full", "onnx", "onnx_dense"}
    assert results["onnx"]["lookup"].startswith("window W=") and results["onnx_dense"]["lookup"] == "dense"
    for method, record in results.items():
        assert record["status"] == "ok", (method, record.get("reason"))
        assert record["num_vectors"] == 2 * 4 * 4 * 4
        assert 0 < record["min_ms"] <= record["median_ms"] <= record["max_ms"]
        assert record["peak_extra_mb"] >= 0
        assert record["checked_vectors"] == record["num_vectors"]  # d = 2: every vector is checked
        assert record["max_gap_vs_exact"] <= 1e-6, method  # fp32 paths may differ only on near-ties
    assert results["eager"]["agreement_vs_exact"] == 1.0  # d = 2 under l2: the exact search
    assert results["full"]["speedup_vs_full"] == 1.0
    assert report["target"] is None and report["machine"]["torch_threads"] == 1
    assert "eager" in completed.stdout and "median ms" in completed.stdout

    again = run_module("benchmarks.quantizer", *args, "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_quantizer_benchmark_skips_what_would_not_fit():
    case = LookupCase(num_embed=65536, num_group=8, group_dim=2, batch=8, method="full", max_matrix_gib=1.0)
    assert "4.0 GiB N x V matrix" in skip_reason(case)
    assert skip_reason(LookupCase(num_embed=65536, num_group=8, group_dim=2, batch=1, method="full")) is None


@pytest.mark.parametrize("bad", [["--groups", "8by2"], ["--vocab-sizes", "0"], ["--methods", "fastest"]])
def test_quantizer_benchmark_refuses_bad_options(tmp_path, bad):
    completed = run_module("benchmarks.quantizer", *bad, "--out", str(tmp_path / "q.json"))
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "error:" in completed.stderr


FIXTURES = REPO / "tests" / "fixtures" / "flexgen"
RESULT_FIELDS = [
    "backend",
    "precision",
    "device",
    "token_agreement",
    "max_score_gap",
    "max_disagreement_margin",
    "latent_max_abs_error",
    "recon_psnr_db",
    "psnr_vs_input_db",
    "ssim_vs_input",
    "encode_ms_p50",
    "encode_ms_p95",
    "decode_ms_p50",
    "decode_ms_p95",
    "throughput_img_s",
    "speedup_vs_eager",
    "peak_rss_mb",
    "torch_loaded",
    "artifact_mb",
    "codebook_usage",
    "codebook_perplexity",
    "encode_fraction_of_peak",
]


def test_compare_reports_torch_and_onnx_on_a_conformance_checkpoint(tmp_path):
    out = tmp_path / "report"
    images = [FIXTURES / "gsq_f8_magvit_images" / name for name in ("64x64_0.png", "96x128_0.png")]
    args = ["--ckpt", str(FIXTURES / "gsq_f8_magvit.pt"), "--images", *map(str, images)]
    args += ["--backends", "torch,onnx", "--precisions", "fp32,fp16,decoder=int8", "--batch-sizes", "1,2"]
    args += ["--repeats", "1", "--threads", "1", "--out", str(out), "--no-progress"]
    completed = run_module("benchmarks.compare", *args)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    results = {(r["backend"], r["precision"]): r for r in report["results"]}
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in report["skipped"]}
    assert {("torch", "fp32"), ("onnx", "fp32")} <= set(results)
    assert ("torch", "fp16") in skipped
    precisions = ("fp32", "fp16", "encoder=fp32,decoder=int8")  # the per-part spec, canonical
    assert set(results) | set(skipped) == {(b, p) for b in ("torch", "onnx") for p in precisions}
    # schema 2: the fields renamed in it are written under their old names too, and said so
    assert report["schema_version"] == 2
    assert set(report["deprecated_fields"]) == {"disagreement_max_margin", "recon_psnr_vs_eager_db"}
    for record in results.values():
        assert all(field in record for field in RESULT_FIELDS)
        assert record["disagreement_max_margin"] == record["max_disagreement_margin"]
        assert record["recon_psnr_vs_eager_db"] == record["recon_psnr_db"]
        info = record["runtime_info"]  # the worker's ModelInfo.to_dict()
        assert (info["backend"], info["num_embed"], info["device"]) == (record["backend"], 1024, record["device"])
        assert 0 < record["codebook_usage"] <= 1 and record["codebook_perplexity"] >= 1
    # fp32 disagreements may only be near-ties; reduced precisions report their margins.
    assert all(r["max_disagreement_margin"] <= 1e-5 for (_, precision), r in results.items() if precision == "fp32")
    assert results[("torch", "fp32")]["max_score_gap"] <= 1e-6  # eager's own tokens are optimal choices
    if ("onnx", "fp16") in results:  # needs onnxconverter-common (dev extra)
        assert results[("onnx", "fp16")]["token_agreement"] > 0.9
    onnx = results[("onnx", "fp32")]
    assert onnx["token_agreement"] == 1.0 and onnx["latent_max_abs_error"] < 1e-3
    assert results[("torch", "fp32")]["recon_identical"] and results[("torch", "fp32")]["speedup_vs_eager"] == 1
    # each worker's memory is its own: only the torch worker has torch loaded
    assert results[("torch", "fp32")]["torch_loaded"] and not onnx["torch_loaded"]
    assert report["model"]["num_embed"] == 1024 and report["model"]["flops_per_image"]["encode"] > 0
    assert report["machine"]["matmul_gflops"] > 0 and report["images"]["count"] == 2
    assert "| onnx | fp32 |" in (out / "report.md").read_text()
    assert (out / "speed_vs_fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "artifacts" / "onnx-fp32" / "manifest.json").is_file()
    # a mixed build: the fp32 encoder tokenizes like fp32, its int8 decoder is judged on eager's tokens
    mixed = results[("onnx", "encoder=fp32,decoder=int8")]
    assert mixed["max_score_gap"] <= 1e-5 and (out / "artifacts" / "onnx-encoder_fp32+decoder_int8").is_dir()
    assert mixed["detokenize_psnr_db"] < 100 and mixed["detokenize_psnr_vs_input_db"] is not None
    assert results[("torch", "fp32")]["detokenize_psnr_vs_input_db"] == results[("torch", "fp32")]["psnr_vs_input_db"]
    path = report["fastest_faithful_path"]
    assert path["tokenize"]["max_score_gap"] <= 1e-5 and path["detokenize"]["psnr_drop_db"] <= 0.3
    assert (out / "report.md").read_text().rstrip().splitlines()[-2].startswith("**Fastest faithful path**")

    again = run_module("benchmarks.compare", *args)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    "bad,message",
    [
        (["--ckpt", "missing.pt"], "no such checkpoint"),
        (["--images", "does/not/exist.png"], "no such file"),
    ],
)
def test_compare_refuses_bad_input_in_one_line(tmp_path, bad, message):
    args = {"--ckpt": str(FIXTURES / "gsq_f8_magvit.pt"), "--images": str(FIXTURES / "gsq_f8_magvit_images")}
    args.update(dict(zip(bad[::2], bad[1::2])))
    flat = [item for pair in args.items() for item in pair]
    completed = run_module("benchmarks.compare", *flat, "--out", str(tmp_path / "r"), "--no-progress")
    assert completed.returncode == 2 and message in completed.stderr and "Traceback" not in completed.stderr


def test_fastest_faithful_path_picks_the_fastest_result_that_meets_each_criterion():
    from benchmarks.compare import fastest_faithful_path

    def result(backend, precision, encode_ms, gap, decode_ms, psnr_db):
        return {
            "backend": backend, "precision": precision, "encode_ms_p50": encode_ms, "speedup_vs_eager": 60 / encode_ms,
            "max_score_gap": gap, "decode_ms_p50": decode_ms, "decode_speedup_vs_eager": 100 / decode_ms,
            "detokenize_psnr_vs_input_db": psnr_db,
        }  # fmt: skip

    results = [
        result("torch", "fp32", 60, 0.0, 100, 32.0),
        result("onnx", "fp32", 40, 1e-7, 90, 32.0),
        result("onnx", "int8", 30, 2e-3, 35, 31.0),  # fastest, but neither faithful tokens nor images
        result("openvino", "encoder=fp32,decoder=bf16", 50, 1e-7, 40, 31.75),
    ]
    path = fastest_faithful_path(results)
    assert (path["tokenize"]["backend"], path["tokenize"]["precision"]) == ("onnx", "fp32")
    assert path["detokenize"]["precision"] == "encoder=fp32,decoder=bf16"
    assert path["detokenize"]["psnr_drop_db"] == pytest.approx(0.25)
    results[3]["detokenize_psnr_vs_input_db"] = 31.6  # 0.4 dB below eager: no longer faithful
    assert fastest_faithful_path(results)["detokenize"]["backend"] == "onnx"


def test_compare_reads_per_part_precisions_and_refuses_bad_ones(tmp_path):
    from benchmarks.compare import precision_list
    from gsq_deploy.exporters.precision import PrecisionPlan

    assert precision_list("fp32,encoder=fp32+decoder=int8,int8,decoder=int8") == [
        PrecisionPlan("fp32", "fp32"),
        PrecisionPlan("fp32", "int8"),
        PrecisionPlan("int8", "int8"),
    ]
    args = ["--ckpt", str(FIXTURES / "gsq_f8_magvit.pt"), "--images", str(FIXTURES / "gsq_f8_magvit_images")]
    completed = run_module("benchmarks.compare", *args, "--precisions", "fp32,quantizer=int8", "--out", str(tmp_path / "r"))
    assert completed.returncode == 2 and "fp32 in every build" in completed.stderr and "Traceback" not in completed.stderr


def test_compare_passes_each_runtime_only_the_options_it_declares():
    from benchmarks.compare import runtime_options
    from gsq_deploy.runtimes import runtime_class

    assert runtime_options("onnx", 3) == {"threads": 3}
    assert runtime_options("openvino", 3) == {"threads": 3}
    assert runtime_options("trt", 3) == {}  # TensorRT takes a device, not threads
    assert runtime_options("torch", 3) == {}  # the reference's threads are set in its worker
    assert runtime_class("torch").torch_threads and not runtime_class("onnx").torch_threads


def test_compare_refuses_an_unknown_backend_before_any_work(tmp_path):
    """A typo in --backends ends the run at once in one line (it used to run torch, then skip the typo)."""
    import time

    args = ["--ckpt", str(FIXTURES / "gsq_f8_magvit.pt"), "--images", str(FIXTURES / "gsq_f8_magvit_images")]
    started = time.monotonic()
    completed = run_module("benchmarks.compare", *args, "--backends", "torch,bogus", "--out", str(tmp_path / "r"))
    assert time.monotonic() - started < 15  # no eager run, no export
    assert completed.returncode == 2 and not (tmp_path / "r").exists()
    assert completed.stderr.strip().splitlines() == [
        "error: --backends 'bogus' is not a backend; choose one of torch, onnx, openvino, trt"
    ]


# -- what the timings mean: a runtime whose calls take known (simulated) time ---------------------------
class ClockedRuntime:
    """A runtime whose encode / decode advance a fake clock by a known time per image."""

    torch_threads = False

    def __init__(self, clock: list[float], encode_s: float, decode_s: float):
        from gsq_deploy.runtimes import ModelInfo

        self.clock, self.encode_s, self.decode_s = clock, encode_s, decode_s
        self.info = ModelInfo("clocked", "unused", "0" * 64, "fp32", "cpu", 1, 1, 8, "BHWG")

    def encode(self, images):
        import numpy as np

        self.clock[0] += self.encode_s * images.shape[0]
        return np.zeros((images.shape[0], 1, 1, 1), np.int64)

    def decode(self, codes):
        import numpy as np

        self.clock[0] += self.decode_s * codes.shape[0]
        return np.zeros((codes.shape[0], 3, 8, 8), np.float32)

    def encode_latent(self, images):
        raise NotImplementedError

    def close(self):
        pass


def clocked_job(monkeypatch, tmp_path, encode_s: float, decode_s: float) -> dict:
    """benchmarks.backend_worker.run_job on a ClockedRuntime, with time.perf_counter on its clock."""
    import time

    import numpy as np
    from PIL import Image

    from gsq_deploy import runtimes
    from benchmarks.backend_worker import run_job

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(runtimes, "load_runtime", lambda *args, **kwargs: ClockedRuntime(clock, encode_s, decode_s))
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.full((8, 8, 3), 40 * index, np.uint8)).save(paths[-1])
    job = {"backend": "clocked", "model": "unused", "images": [str(p) for p in paths], "repeats": 3,
           "batch_sizes": [1, 4], "outputs": str(tmp_path / f"outputs-{encode_s}.npz")}  # fmt: skip
    return run_job(job)


def test_worker_throughput_and_latency_are_what_the_calls_took(monkeypatch, tmp_path):
    result = clocked_job(monkeypatch, tmp_path, encode_s=0.002, decode_s=0.010)
    assert result["status"] == "ok" and result["has_latent"] is False
    assert result["encode_ms"]["median_ms"] == pytest.approx(2.0)
    assert result["decode_ms"]["median_ms"] == pytest.approx(10.0)
    for batch in ("1", "4"):
        assert result["throughput"][batch]["encode_img_s"] == pytest.approx(500.0)
        assert result["throughput"][batch]["decode_img_s"] == pytest.approx(100.0)
    slow = clocked_job(monkeypatch, tmp_path, encode_s=0.004, decode_s=0.040)
    assert slow["throughput"]["4"]["encode_img_s"] == pytest.approx(250.0)
    assert slow["throughput"]["4"]["decode_img_s"] == pytest.approx(25.0)


def test_report_record_takes_the_best_batch_and_the_ratios_to_eager():
    from benchmarks.compare import result_record

    def worker(encode_ms, decode_ms, throughput):
        timing = lambda median: {"median_ms": median, "p95_ms": 2 * median, "spread_pct": 1.0}  # noqa: E731
        return {"throughput": throughput, "encode_ms": timing(encode_ms), "decode_ms": timing(decode_ms),
                "info": {"device": "cpu"}, "peak_rss_mb": 100.0, "torch_loaded": False}  # fmt: skip

    backend = worker(2.0, 10.0, {"1": {"encode_img_s": 400.0, "decode_img_s": 90.0},
                                 "8": {"encode_img_s": 500.0, "decode_img_s": 80.0}})  # fmt: skip
    eager = worker(4.0, 5.0, {"1": {"encode_img_s": 200.0, "decode_img_s": 150.0},
                              "8": {"encode_img_s": 250.0, "decode_img_s": 200.0}})  # fmt: skip
    extra = {"flops": {"encode": 1e9, "decode": 2e9}, "matmul_gflops": 1000.0, "artifact_mb": 1.0}
    record = result_record("onnx", "fp32", backend, {"token_agreement": 1.0}, eager, extra)
    assert record["throughput_img_s"] == 500.0 and record["decode_throughput_img_s"] == 90.0
    assert record["speedup_vs_eager"] == 2.0 and record["decode_speedup_vs_eager"] == 0.5
    assert record["throughput_speedup_vs_eager"] == 2.0
    assert record["encode_fraction_of_peak"] == pytest.approx(0.5) and record["decode_fraction_of_peak"] == pytest.approx(0.18)
    assert record["encode_ms_p95"] == 4.0 and record["decode_ms_p50"] == 10.0 and record["token_agreement"] == 1.0


def test_tokenize_throughput_plain_loop_encodes_every_photo_and_failures_fail_the_run(tmp_path):
    """The plain loop the gsq-tokenize benchmark times runs (as its own process) over every photo of a
    folder with the runtime's ModelInfo; a report with a failed measurement makes the command fail."""
    from PIL import Image

    from benchmarks.tokenize_throughput import failed_measurements, measure_plain
    from gsq_deploy.exporters.onnx import export_onnx
    from tests.conftest import tiny_gsq_model

    model_dir = tmp_path / "tiny-onnx"
    export_onnx(tiny_gsq_model(), model_dir, graphs=("tokenize",), validate=False, progress=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(40, 56), (64, 64), (90, 33)]):
        suffix = ".png" if index % 2 == 0 else ".jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"{index}{suffix}")
    plain = measure_plain(str(model_dir), photos, 32, 2)
    assert plain.get("status") != "error", plain
    assert plain["images"] == 3 and plain["images_per_s"] > 0
    report = {"runs": [{"plain": plain, "tokenize": [{"status": "ok"}, {"status": "error", "reason": "x"}]}]}
    assert failed_measurements(report) == 1
    report["runs"][0]["tokenize"].pop()
    assert failed_measurements(report) == 0
