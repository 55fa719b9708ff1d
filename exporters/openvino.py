"""OpenVINO IR artifacts (graph.xml + graph.bin) converted from the ONNX graphs, validated against eager.

    gsq-export --ckpt model.pt --target openvino --precision fp32|fp16|bf16|int8 --out out/model-ov
    gsq-export --ckpt model.pt --target openvino --precision encoder=fp32,decoder=bf16 --out out/model-ov

Each graph is converted from the ONNX graph of its precision (exporters.onnx_precision; bf16 from
fp32), so the quantizer lookup stays fp32 in every variant by construction:
- fp32: the fp32 ONNX graphs as they are.
- fp16: weights stored in fp16 (the fp16 ONNX graphs, lookup and I/O fp32). OpenVINO's own
  compress_to_fp16 would also round the normalised codebook, which moves the lookup's scores.
- int8: the symmetric QDQ ONNX graphs; OpenVINO turns QuantizeLinear/DequantizeLinear pairs into
  FakeQuantize and runs int8 kernels on CPUs with int8 support. One calibration (onnxruntime's, over
  --calib-images) and one lookup exclusion list serve ONNX, OpenVINO and TensorRT alike; NNCF is
  not needed for that.
- bf16: the fp32 IR, compiled with INFERENCE_PRECISION_HINT=bf16 (CPUs with AVX512_BF16 or AMX).
Every graph records the hint it is compiled with (graphs.<name>.inference_precision): "bf16" for the
bf16 parts, "f32" for everything else (CPUs with AMX, and some with AVX512_BF16, otherwise run fp32
IR in bf16, which flips tokens). runtimes.openvino compiles each graph with its own hint.

The hint applies to a whole compiled model, and the lookup must stay f32. Inside a fused tokenize
graph it cannot: marking the lookup's layers precise (rt_info "precise") keeps its MatMul in f32,
but the CPU plugin's own rewrite of the normalisation (x / |x| into a fused Power/Multiply) runs in
bf16 regardless (measured on the default model: 17.5% of the tokens differ from an f32 lookup on
the same latent). So a bf16 encoder is never fused with the lookup: the artifact holds the encoder
(bf16 hint) and the quantizer (f32) instead of a tokenize graph, the runtime runs them in turn, and
the manifest says so (openvino.split). A bf16 decoder's detokenize graph is compiled whole in bf16:
its codebook gather feeds the first convolution, which reads its input in bf16 either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsq_core.extras import install_hint

from . import ExportError, select_graphs
from .build import BuildStep, ExportOptions, SourceRequest, Target, export
from .manifest import file_checksum
from .precision import LOOKUP_GRAPHS

OPENVINO_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BF16_HINT, F32_HINT = "bf16", "f32"
SPLIT_REASON = (
    "OpenVINO applies INFERENCE_PRECISION_HINT to a whole compiled model, and in a fused graph its CPU plugin "
    "still runs part of the lookup's normalisation in bf16: a bf16 encoder runs as the encoder graph (bf16) "
    "followed by the quantizer graph (f32)"
)


def require_openvino() -> Any:
    """The openvino module, or ExportError with the install command."""
    from gsq_deploy.runtimes.openvino import import_openvino

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
    source, staging, log, plan = step.source, step.staging, step.log, step.options.precision
    assert source is not None
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
        hint = BF16_HINT if plan.for_graph(name) == "bf16" else F32_HINT
        if hint != F32_HINT and name in LOOKUP_GRAPHS:  # _source never asks for this; a guard
            raise ExportError(f"{name} graph holds the codebook lookup: it cannot be compiled with the {hint} hint")
        entry = {
            **onnx_entry,
            "file": xml_name,
            "weights": bin_name,
            "converted_from": onnx_entry["file"],
            "inference_precision": hint,
        }
        manifest["graphs"][name] = entry
        for file_name in (xml_name, bin_name):
            manifest["files"][file_name] = file_checksum(staging / file_name)
        size_mb = (staging / bin_name).stat().st_size / 1e6
        log.done(
            f"converted {onnx_entry['file']} to {xml_name} + {bin_name} ({size_mb:.1f} MB, "
            f"{plan.for_graph(name)}, compiled with the {hint} hint)"
        )
    manifest["target"] = "openvino"
    manifest["openvino"] = {
        "converted_from": f"ONNX {source.manifest['precision']} graphs",
        "inference_precision_hints": {name: entry["inference_precision"] for name, entry in manifest["graphs"].items()},
        "note": "runtimes.openvino compiles each graph with its inference_precision hint; f32 keeps fp32 graphs "
        "exact on AMX/bf16 CPUs",
    }
    if split_tokenize(step.options):
        manifest["openvino"]["split"] = {"tokenize": ["encoder", "quantizer"], "reason": SPLIT_REASON}
        log.done("tokenize: not fused (bf16 encoder): the runtime runs encoder (bf16) then quantizer (f32)")
    manifest["tools"] = {**manifest.get("tools", {}), "openvino": ov.get_version()}
    return manifest


def split_tokenize(options: ExportOptions) -> bool:
    """Whether a tokenize graph asked for is written as encoder + quantizer (a bf16 encoder)."""
    return "tokenize" in options.graphs and options.precision.encoder == "bf16"


def _source(options: ExportOptions) -> SourceRequest:
    """Each part from the ONNX graphs of its precision (bf16: the fp32 graphs, compiled with the bf16
    hint): the lookup is fp32 by construction. A bf16 encoder's tokenize comes as encoder + quantizer."""
    graphs = list(options.graphs)
    if split_tokenize(options):
        graphs = [name for name in graphs if name != "tokenize"] + ["encoder", "quantizer"]
    precision = options.precision.map(lambda value: "fp32" if value == "bf16" else value)
    return SourceRequest("onnx", precision, graphs=tuple(select_graphs(graphs)))


TARGET = Target(
    name="openvino",
    precisions=OPENVINO_PRECISIONS,
    build=convert_ir,
    source=_source,
    runtime="openvino",
    runtime_options=lambda options: {"device": "CPU"},  # each graph's hint comes from the manifest
    check=lambda options: _check(),
)
