"""Reduced-precision ONNX artifacts (fp16, int8 QDQ) made from the fp32 export, the lookup kept fp32.

    gsq-export --ckpt model.pt --target onnx --precision fp16 --out out/model-onnx-fp16
    gsq-export --ckpt model.pt --target onnx --precision int8 --calib-images photos/ --out out/model-onnx-int8

fp16: every float tensor of the encoder / decoder becomes fp16 (onnxconverter-common's converter);
the quantizer's nodes (normalise, MatMul, Add, ArgMax) and their constants stay fp32, with Casts at
the border, and the graph's inputs and outputs stay fp32/int64 so runtimes feed the same arrays.
int8: static QDQ quantization (onnxruntime.quantization, symmetric int8 weights per channel and
activations, MinMax calibration on the calibration images); the quantizer's nodes are excluded.
Symmetric int8 QDQ is also the form TensorRT's explicit quantization and OpenVINO read, so those
targets reuse these graphs (one calibration, one exclusion list).

Reduced precisions are validated like fp32, but their thresholds (settable by flags) only warn; the
quantizer graph, being fp32 end to end, must still pick optimal codes, and non-finite output fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gsq_core.model import GSQTokenizer

from . import ExportError
from .calibration import fit_to_size, multiple_of, photos_for, validation_batches
from .graphs import GRAPH_NAMES
from .manifest import MANIFEST_NAME, file_checksum
from .staging import StageLog, check_destination, install_artifact, raise_if_failed, staging_folder
from .validation import TOLERANCES, Tolerances, validate_graphs

ONNX_PRECISIONS = ("fp32", "fp16", "int8")
LOOKUP_SCOPE = "/quantizer/"  # torch.onnx names nodes by module path; TokenizeGraph.quantizer
LOOKUP_OPS = ("MatMul", "ArgMax")  # what must be inside the kept-fp32 region, or the export is wrong
MAX_CALIBRATION_BATCH = 4
# int8 goes where the arithmetic is: convolutions and the attention's matrix products. Normalisation,
# SiLU and residual adds stay fp32 (quantizing them too costs most of the agreement, little speed).
INT8_OPS = ("Conv", "MatMul", "Gemm")
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types


def lookup_node_names(graph_name: str, proto: Any) -> list[str]:
    """Names of the nodes that make up the quantizer lookup, which stay fp32 in every precision.

    The quantizer graph is the lookup and nothing else (all its nodes); in the tokenize graph it is
    the nodes under the quantizer module's scope. Raises ExportError when the region found lacks a
    MatMul and an ArgMax, so a renamed scope cannot silently put the lookup in reduced precision.
    """
    nodes = list(proto.graph.node)
    if graph_name == "quantizer":
        chosen = nodes
    elif graph_name == "tokenize":
        chosen = [node for node in nodes if node.name.startswith(LOOKUP_SCOPE)]
    else:
        return []
    found = {node.op_type for node in chosen}
    missing = [op for op in LOOKUP_OPS if op not in found]
    if missing:
        raise ExportError(
            f"{graph_name} graph: could not find the quantizer lookup ({', '.join(missing)} missing under "
            f"{LOOKUP_SCOPE!r}); refusing to convert it to reduced precision"
        )
    return [node.name for node in chosen]


def latent_producer_names(graph_name: str, proto: Any) -> list[str]:
    """The node that writes the latent (the encoder's last layer), kept fp32 in int8 builds.

    Static QDQ quantizes a quantized node's output too, so without this the lookup would read a
    latent rounded to 255 levels, whatever precision the lookup itself runs in.
    """
    if graph_name == "encoder":
        latent_names = {output.name for output in proto.graph.output}
    elif graph_name == "tokenize":
        lookup = set(lookup_node_names(graph_name, proto))
        produced_in_lookup = {name for node in proto.graph.node if node.name in lookup for name in node.output}
        latent_names = {
            name
            for node in proto.graph.node
            if node.name in lookup
            for name in node.input
            if name and name not in produced_in_lookup
        }
    else:
        return []
    return [node.name for node in proto.graph.node if set(node.output) & latent_names]


def convert_fp16(proto: Any, keep_fp32: Iterable[str]) -> Any:
    """fp16 copy of an ONNX model: keep_fp32 nodes, graph inputs and outputs stay fp32."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ExportError(
            "--precision fp16 needs onnxconverter-common: pip install 'gsq-deploy[fp16]' (or onnxconverter-common)"
        ) from None
    import warnings

    keep_fp32 = set(keep_fp32)
    original_casts = {node.name for node in proto.graph.node if node.op_type == "Cast"} - keep_fp32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "values truncated to fp16 range" notes
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=sorted(keep_fp32), disable_shape_infer=False
        )
    # The converter retypes every float tensor but leaves Cast(to=float) as it is (e.g. the element
    # count the adaptive norm divides by); in the converted region such a Cast must produce fp16.
    for node in converted.graph.node:
        if node.name in original_casts:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == FLOAT:
                    attribute.i = FLOAT16
    return converted


@dataclass(frozen=True)
class SourceArtifact:
    """An artifact this package just wrote, read back as the input of a conversion (exporters do not
    import runtimes; the runtimes' loader does the full checks for users)."""

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def read(cls, directory: str | Path) -> "SourceArtifact":
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ExportError(f"{directory}: no {MANIFEST_NAME}; convert an artifact directory written by gsq-export")
        return cls(Path(directory), json.loads(path.read_text()))

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def graph_path(self, name: str) -> Path:
        return self.directory / self.graphs[name]["file"]

    def fixed_shape(self) -> tuple[int | None, tuple[int, int] | None]:
        shapes = self.manifest.get("shapes") or {}
        size = shapes.get("image_size")
        return shapes.get("batch"), (tuple(size) if size else None)  # type: ignore[return-value]


class _FeedReader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(source: Path, destination: Path, keep_fp32: list[str], feeds: list[dict[str, np.ndarray]]) -> None:
    """Static QDQ int8 (symmetric, per-channel weights, MinMax) of source's INT8_OPS into destination."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = constants_to_initializers(onnx.load(str(source)))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice ("consider pre-processing") at WARNING
    try:
        quantize_static(
            proto,
            str(destination),
            _FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    finally:
        root.setLevel(level)


def constants_to_initializers(proto: Any) -> Any:
    """Move Constant nodes' tensors to initializers (the quantizer reads weights and biases there)."""
    from onnx import numpy_helper

    kept = []
    for node in proto.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            proto.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto


def calibration_feeds(
    model: GSQTokenizer, photos: list[tuple[str, np.ndarray]], size: tuple[int, int], batch: int | None
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs per graph input name: 'images' batches and the eager 'codes' of them."""
    import torch

    images = np.stack([fit_to_size(pixels, *size) for _, pixels in photos])
    step = batch or MAX_CALIBRATION_BATCH
    image_batches = [images[start : start + step] for start in range(0, len(images), step)]
    if batch is not None:  # a static export takes exactly `batch` images per run
        image_batches = [np.resize(chunk, (batch, *chunk.shape[1:])) for chunk in image_batches]
    with torch.no_grad():
        code_batches = [model.encode(torch.from_numpy(chunk)).numpy() for chunk in image_batches]
    return {"images": [{"images": b} for b in image_batches], "codes": [{"codes": c} for c in code_batches]}


def convert_onnx_artifact(
    model: GSQTokenizer,
    fp32_dir: str | Path,
    out_dir: str | Path,
    precision: str,
    *,
    calib_images: str | Path | None = None,
    validate: bool = True,
    tolerances: Tolerances | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a fp16 or int8 artifact to out_dir from an fp32 ONNX artifact of the same model."""
    from .onnx import OrtGraphRunner

    if precision not in ONNX_PRECISIONS[1:]:
        raise ExportError(f"ONNX precision {precision!r} is not supported; choose one of {', '.join(ONNX_PRECISIONS)}")
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    source = SourceArtifact.read(fp32_dir)
    if source.manifest["target"] != "onnx" or source.manifest["precision"] != "fp32":
        raise ExportError(
            f"{fp32_dir}: needs an fp32 ONNX artifact, found {source.manifest['target']} {source.manifest['precision']}"
        )
    log = StageLog(progress)
    photos = photos_for(calib_images)
    names = [name for name in GRAPH_NAMES if name in source.graphs]
    batch, size = source.fixed_shape()
    factor = model.downsample_factor
    feeds = (
        calibration_feeds(model, photos, size or (multiple_of(128, factor),) * 2, batch) if precision == "int8" else {}
    )

    with staging_folder(out_dir) as staging:
        import onnx

        manifest = dict(source.manifest)
        manifest["graphs"] = {}
        for name in names:
            entry = dict(source.graphs[name])
            source_path = source.graph_path(name)
            target_path = staging / entry["file"]
            keep = lookup_node_names(name, onnx.load(str(source_path)))
            log.start()
            if name == "quantizer":
                shutil.copyfile(source_path, target_path)  # the lookup and nothing else: stays fp32
            elif precision == "fp16":
                onnx.save(convert_fp16(onnx.load(str(source_path)), keep), str(target_path))
            else:
                input_name = entry["inputs"][0]["name"]
                keep = keep + latent_producer_names(name, onnx.load(str(source_path)))
                quantize_int8(source_path, target_path, keep, feeds[input_name])
            onnx.checker.check_model(str(target_path), full_check=True)
            entry.update(precision=precision, fp32_nodes=len(keep))
            manifest["graphs"][name] = entry
            log.done(f"converted {entry['file']} to {precision} ({len(keep)} lookup / latent nodes kept fp32)")
        manifest["precision"] = precision
        manifest["files"] = {
            entry["file"]: file_checksum(staging / entry["file"]) for entry in manifest["graphs"].values()
        }
        manifest["reduced_precision"] = {
            "from": "fp32 ONNX export",
            "kept_fp32": "quantizer lookup (normalise, MatMul, Add, ArgMax), graph inputs and outputs"
            + (", the layer that writes the latent" if precision == "int8" else ""),
            "method": "onnxconverter-common float16"
            if precision == "fp16"
            else "onnxruntime static QDQ, symmetric int8, per-channel weights, MinMax",
            "calibration_images": None
            if precision == "fp16"
            else {
                "source": str(calib_images) if calib_images else "scikit-image samples",
                "names": [name for name, _ in photos],
            },
        }
        manifest["tools"] = {**manifest.get("tools", {}), **_tool_versions(precision)}
        manifest["validation"] = None
        if validate:
            batches = validation_batches(photos, factor, batch, size)
            runner = OrtGraphRunner(staging, manifest["graphs"])
            runtime = "onnxruntime CPUExecutionProvider"
            validate_into_manifest(
                model, manifest, runner, photos, batches, precision, tolerances, calib_images, runtime, log
            )
        install_artifact(staging, out_dir, manifest, log)
    raise_if_failed(manifest)
    return manifest


def require_exact_lookup(report: dict) -> None:
    """The fp32 quantizer graph of a reduced-precision build must still pick optimal codes (hard failure)."""
    result = report["graphs"].get("quantizer")
    if result is not None and result["max_score_gap"] > TOLERANCES["fp32"].max_score_gap:
        failure = (
            f"quantizer: the fp32 lookup picked a non-optimal code (score gap {result['max_score_gap']:.3g} "
            f"> {TOLERANCES['fp32'].max_score_gap:g}); the lookup is not running in fp32"
        )
        result["passed"] = False
        report["failures"].append(failure)
        report["passed"] = False


def summary_line(report: dict, image_count: int) -> str:
    """One stage line: verdict, warnings and the tokenize graph's agreement."""
    verdict = "passed" if report["passed"] else "FAILED"
    tokens = report["graphs"].get("tokenize") or report["graphs"].get("quantizer")
    agreement = f", token agreement {tokens['token_agreement']:.2%}" if tokens else ""
    warnings = f", {len(report['warnings'])} warning(s)" if report.get("warnings") else ""
    line = f"validated {len(report['graphs'])} graphs against eager on {image_count} images: {verdict}"
    line += agreement + warnings
    for warning in report.get("warnings", []):
        line += f"\n  warning: {warning}"
    return line


def validate_into_manifest(
    model: GSQTokenizer,
    manifest: dict,
    runner: Any,
    photos: list,
    batches: list[np.ndarray],
    precision: str,
    tolerances: Tolerances | None,
    calib_images: str | Path | None,
    runtime: str,
    log: StageLog,
) -> None:
    """Validate a converted artifact's graphs against eager with `runner`; store the report in the manifest."""
    log.start()
    report = validate_graphs(
        model,
        list(manifest["graphs"]),
        runner,
        batches,
        precision,
        image_names=[name for name, _ in photos],
        tolerances=tolerances or TOLERANCES[precision],
    )
    report["images"]["source"] = str(calib_images) if calib_images else "scikit-image samples"
    report["runtime"] = runtime
    require_exact_lookup(report)
    manifest["validation"] = report
    log.done(summary_line(report, sum(len(b) for b in batches)))


def _tool_versions(precision: str) -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if precision == "fp16":
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    return versions


@contextlib.contextmanager
def exported_onnx(
    model: GSQTokenizer,
    out_dir: Path,
    precision: str,
    *,
    calib_images: str | Path | None,
    overwrite: bool,
    progress: bool,
    onnx_options: dict[str, Any],
) -> Iterator[Path]:
    """An unvalidated ONNX artifact at `precision` (fp32, or fp16/int8 converted from it) in a
    temporary folder beside out_dir, for a target built from ONNX graphs; removed on exit."""
    from .onnx import export_onnx

    check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.onnx-", dir=out_dir.parent) as work:
        onnx_dir = Path(work) / "fp32"
        export_onnx(model, onnx_dir, validate=False, progress=progress, **onnx_options)
        if precision != "fp32":
            reduced = Path(work) / precision
            convert_onnx_artifact(
                model, onnx_dir, reduced, precision, calib_images=calib_images, validate=False, progress=progress
            )
            onnx_dir = reduced
        yield onnx_dir


def export_onnx_precision(model: GSQTokenizer, out_dir: str | Path, *, precision: str, **options: Any) -> dict:
    """fp32 ONNX export into a temporary folder, then convert_onnx_artifact to `precision`."""
    convert_keys = ("calib_images", "validate", "overwrite", "progress", "tolerances")
    convert_options = {key: options.pop(key) for key in convert_keys if key in options}
    out_dir = Path(out_dir)
    with exported_onnx(
        model,
        out_dir,
        "fp32",
        calib_images=None,
        overwrite=bool(convert_options.get("overwrite")),
        progress=convert_options.get("progress", True),
        onnx_options=options,
    ) as fp32_dir:
        return convert_onnx_artifact(model, fp32_dir, out_dir, precision, **convert_options)
