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

import numpy as np

from gsq_core.model import GSQTokenizer
from runtimes.openvino import INSTALL_HINT

from . import ExportError
from .calibration import photos_for, validation_batches
from .manifest import file_checksum
from .onnx_precision import ONNX_PRECISIONS, SourceArtifact, exported_onnx, validate_into_manifest
from .staging import StageLog, check_destination, install_artifact, raise_if_failed, staging_folder
from .validation import Tolerances

TARGET = "openvino"
OPENVINO_PRECISIONS = ONNX_PRECISIONS  # fp32, fp16, int8


def require_openvino() -> Any:
    """The openvino module, or ExportError with the install command."""
    try:
        import openvino
    except ImportError:
        raise ExportError(
            f"--target openvino needs the openvino package, which is not installed: {INSTALL_HINT}"
        ) from None
    return openvino


def export_openvino(
    model: GSQTokenizer,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    validate: bool = True,
    calib_images: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tolerances: Tolerances | None = None,
    **onnx_options: Any,
) -> dict:
    """ONNX export at `precision` into a temporary folder, then convert_to_openvino into out_dir."""
    require_openvino()
    if precision not in OPENVINO_PRECISIONS:
        raise ExportError(
            f"OpenVINO precision {precision!r} is not supported; choose one of {', '.join(OPENVINO_PRECISIONS)}"
        )
    out_dir = Path(out_dir)
    with exported_onnx(
        model,
        out_dir,
        precision,
        calib_images=calib_images,
        overwrite=overwrite,
        progress=progress,
        onnx_options=onnx_options,
    ) as onnx_dir:
        return convert_to_openvino(
            model,
            onnx_dir,
            out_dir,
            validate=validate,
            calib_images=calib_images,
            overwrite=overwrite,
            progress=progress,
            tolerances=tolerances,
        )


def convert_to_openvino(
    model: GSQTokenizer,
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    validate: bool = True,
    calib_images: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tolerances: Tolerances | None = None,
) -> dict:
    """Convert every graph of an ONNX artifact (any precision) to OpenVINO IR in out_dir; validate on CPU."""
    ov = require_openvino()
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    source = SourceArtifact.read(onnx_dir)
    if source.manifest["target"] != "onnx":
        raise ExportError(f"{onnx_dir}: needs an ONNX artifact, found target {source.manifest['target']!r}")
    precision = source.manifest["precision"]
    log = StageLog(progress)
    with staging_folder(out_dir) as staging:
        manifest = dict(source.manifest)
        manifest["graphs"], manifest["files"] = {}, {}
        for name, onnx_entry in source.graphs.items():
            log.start()
            xml_name = Path(onnx_entry["file"]).with_suffix(".xml").name
            # Core.read_model reads ONNX through the frontend directly. ov.convert_model (ovc) would
            # also start OpenVINO's telemetry, which forks a process from a background thread: a fork
            # while this thread is inside an OpenBLAS call deadlocks it (the export hang of issue 11).
            ov.save_model(
                ov.Core().read_model(str(source.graph_path(name))), str(staging / xml_name), compress_to_fp16=False
            )
            bin_name = Path(xml_name).with_suffix(".bin").name
            entry = {**onnx_entry, "file": xml_name, "weights": bin_name, "converted_from": onnx_entry["file"]}
            manifest["graphs"][name] = entry
            for file_name in (xml_name, bin_name):
                manifest["files"][file_name] = file_checksum(staging / file_name)
            size_mb = (staging / bin_name).stat().st_size / 1e6
            log.done(f"converted {onnx_entry['file']} to {xml_name} + {bin_name} ({size_mb:.1f} MB, {precision})")
        manifest["target"] = TARGET
        manifest["openvino"] = {
            "converted_from": f"ONNX {precision} graphs",
            "inference_precision_hint": "f32",
            "note": "runtimes.openvino compiles with INFERENCE_PRECISION_HINT=f32 so fp32 stays fp32 on AMX/bf16 CPUs",
        }
        manifest["tools"] = {**manifest.get("tools", {}), "openvino": ov.get_version()}
        manifest["validation"] = None
        if validate:
            photos = photos_for(calib_images)
            batch, size = source.fixed_shape()
            batches = validation_batches(photos, model.downsample_factor, batch, size)
            runner = OpenVinoGraphRunner(staging, manifest["graphs"])
            runtime = "openvino CPU, INFERENCE_PRECISION_HINT=f32"
            validate_into_manifest(
                model, manifest, runner, photos, batches, precision, tolerances, calib_images, runtime, log
            )
        install_artifact(staging, out_dir, manifest, log)
    raise_if_failed(manifest)
    return manifest


class OpenVinoGraphRunner:
    """run_graph(name, feed) over OpenVINO CPU compiled models (f32 inference hint), compiled once."""

    def __init__(self, artifact_dir: Path, entries: dict[str, dict[str, Any]]):
        self.artifact_dir = artifact_dir
        self.entries = entries
        self._compiled: dict[str, Any] = {}

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        if name not in self._compiled:
            core = require_openvino().Core()
            path = str(self.artifact_dir / self.entries[name]["file"])
            self._compiled[name] = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        compiled = self._compiled[name]
        return compiled(feed)[compiled.output(0)]
