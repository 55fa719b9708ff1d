"""OpenVINO IR artifacts (graph.xml + graph.bin) converted from the ONNX graphs, validated against eager.

    gsq-export --ckpt model.pt --target openvino --precision fp32|fp16|int8 --out out/model-ov

Each precision is converted from the ONNX graph of the same precision (exporters.onnx_precision),
so the quantizer lookup stays fp32 in every variant by construction:
- fp32: the fp32 ONNX graphs as they are.
- fp16: weights stored in fp16 (the fp16 ONNX graphs, lookup and I/O fp32). OpenVINO's own
  compress_to_fp16 would also round the normalised codebook, which moves the lookup's scores.
- int8: the symmetric QDQ ONNX graphs; OpenVINO turns QuantizeLinear/DequantizeLinear pairs into
  FakeQuantize and runs int8 kernels on CPUs with int8 support. One calibration (onnxruntime's, over
  --calib-images) and one lookup exclusion list serve ONNX, OpenVINO and TensorRT alike; NNCF is
  not needed for that.
Validation compiles on CPU with INFERENCE_PRECISION_HINT=f32: CPUs with AMX (and some with
AVX512_BF16) otherwise run fp32 IR in bf16, which flips tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsq_core.extras import install_hint

from . import ExportError
from .build import BuildStep, ExportOptions, SourceRequest, Target, export
from .manifest import file_checksum

OPENVINO_PRECISIONS = ("fp32", "fp16", "int8")


def require_openvino() -> Any:
    """The openvino module, or ExportError with the install command."""
    from runtimes.openvino import import_openvino

    try:
        openvino = import_openvino()  # without OpenVINO's telemetry, whose fork hung exports
    except ImportError:
        raise ExportError(
            f"--target openvino needs the openvino package, which is not installed: {install_hint('openvino')}"
        ) from None
    return openvino


def _check() -> None:
    require_openvino()


def export_openvino(model: Any, out_dir: str | Path, **options: Any) -> dict:
    """ONNX export at the same precision into a temporary folder, converted to IR in out_dir.
    options: the fields of exporters.build.ExportOptions."""
    return export(model, out_dir, "openvino", ExportOptions(**options))


def convert_ir(step: BuildStep) -> dict[str, Any]:
    """Build step: convert every graph of the ONNX source artifact (any precision) to OpenVINO IR."""
    ov = require_openvino()
    source, staging, log = step.source, step.staging, step.log
    assert source is not None
    precision = source.manifest["precision"]
    manifest = source.manifest_copy()
    manifest["graphs"], manifest["files"] = {}, {}
    for name, onnx_entry in source.graphs.items():
        log.start()
        xml_name = Path(onnx_entry["file"]).with_suffix(".xml").name
        # Core.read_model reads ONNX through the frontend directly. ov.convert_model (ovc) would
        # also send OpenVINO's telemetry, which forks a process from a background thread: a fork
        # while this thread is inside an OpenBLAS call deadlocks it (the export hang of issue 11;
        # runtimes.openvino.import_openvino keeps the telemetry out altogether).
        ov.save_model(
            ov.Core().read_model(str(source.graph_path(name))), str(staging / xml_name), compress_to_fp16=False
        )
        bin_name = Path(xml_name).with_suffix(".bin").name
        entry = {**onnx_entry, "file": xml_name, "weights": bin_name, "converted_from": onnx_entry["file"]}
        manifest["graphs"][name] = entry
        for file_name in (xml_name, bin_name):
            manifest["files"][file_name] = file_checksum(staging / file_name)
        size_mb = (staging / bin_name).stat().st_size / 1e6
        log.done(f"converted {onnx_entry['file']} to {xml_name} + {bin_name} ({size_mb:.1f} MB, {entry['precision']})")
    manifest["target"] = "openvino"
    manifest["openvino"] = {
        "converted_from": f"ONNX {precision} graphs",
        "inference_precision_hint": "f32",
        "note": "runtimes.openvino compiles with INFERENCE_PRECISION_HINT=f32 so fp32 stays fp32 on AMX/bf16 CPUs",
    }
    manifest["tools"] = {**manifest.get("tools", {}), "openvino": ov.get_version()}
    return manifest


TARGET = Target(
    name="openvino",
    precisions=OPENVINO_PRECISIONS,
    build=convert_ir,
    # each precision from the ONNX graphs of the same precision: the lookup is fp32 by construction
    source=lambda options: SourceRequest("onnx", options.precision, options.graph_precisions),
    runtime="openvino",
    runtime_options=lambda options: {"device": "CPU", "inference_precision": "f32"},
    check=lambda options: _check(),
)
