"""Reduced-precision ONNX artifacts (fp16, int8 QDQ) made from the fp32 export, the lookup kept fp32.

    gsq-export --ckpt model.pt --target onnx --precision fp16 --out out/model-onnx-fp16
    gsq-export --ckpt model.pt --target onnx --precision int8 --calib-images photos/ --out out/model-onnx-int8

fp16: every float tensor of the encoder / decoder becomes fp16 (onnxconverter-common's converter);
the quantizer's nodes (normalise and the window or dense lookup), their constants and the values
passed between them stay fp32, with Casts at the border, and the graph's inputs and outputs stay fp32/int64 so runtimes feed the same arrays.
int8: static QDQ quantization (onnxruntime.quantization, symmetric int8 weights per channel and
activations, MinMax calibration on the calibration images); the quantizer's nodes are excluded.
Symmetric int8 QDQ is also the form TensorRT's explicit quantization and OpenVINO read, so those
targets reuse these graphs (one calibration, one exclusion list).

Reduced precisions are validated like fp32, but their thresholds (settable by flags) only warn; the
quantizer graph, being fp32 end to end, must still pick optimal codes, and non-finite output fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import ExportError
from .build import BuildStep
from .calibration import fit_to_size, multiple_of, photos_for
from .manifest import file_checksum

if TYPE_CHECKING:
    from pathlib import Path

    from gsq_core.model import GSQTokenizer

LOOKUP_SCOPE = "/quantizer/"  # torch.onnx names nodes by module path; TokenizeGraph.quantizer
# What the kept-fp32 region must contain, or the export is wrong: the ops of one of the lookup's
# forms (exporters.lookup_graph: the dense MatMul + ArgMax, or the window's Gather + ReduceMax + ReduceMin).
LOOKUP_SIGNATURES = {"dense": ("MatMul", "ArgMax"), "window": ("Gather", "ReduceMax", "ReduceMin")}
MAX_CALIBRATION_BATCH = 4
# int8 goes where the arithmetic is: convolutions and the attention's matrix products. Normalisation,
# SiLU and residual adds stay fp32 (quantizing them too costs most of the agreement, little speed).
INT8_OPS = ("Conv", "MatMul", "Gemm")
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types


def lookup_node_names(graph_name: str, proto: Any) -> list[str]:
    """Names of the nodes that make up the quantizer lookup, which stay fp32 in every precision.

    The quantizer graph is the lookup and nothing else (all its nodes); in the tokenize graph it is
    the nodes under the quantizer module's scope. Raises ExportError when the region found lacks the
    ops of both lookup forms (LOOKUP_SIGNATURES), so a renamed scope cannot silently put the lookup
    in reduced precision.
    """
    nodes = list(proto.graph.node)
    if graph_name == "quantizer":
        chosen = nodes
    elif graph_name == "tokenize":
        chosen = [node for node in nodes if node.name.startswith(LOOKUP_SCOPE)]
    else:
        return []
    found = {node.op_type for node in chosen}
    if not any(all(op in found for op in ops) for ops in LOOKUP_SIGNATURES.values()):
        forms = " or ".join(" + ".join(ops) for ops in LOOKUP_SIGNATURES.values())
        raise ExportError(
            f"{graph_name} graph: could not find the quantizer lookup (no {forms} under "
            f"{LOOKUP_SCOPE!r}); refusing to convert it to reduced precision"
        )
    return [node.name for node in chosen]


CODEBOOK = "codebook"  # the decoder graphs' raw codebook initializer (exporters.graphs.DecoderGraph)


def codebook_gather_names(graph_name: str, proto: Any) -> list[str]:
    """The Gather that reads the raw codebook in front of the decoder, kept fp32 in every precision.

    Empty for graphs without a decoder; ExportError when a decoder graph has none, so a renamed
    codebook cannot silently round the gathered code vectors.
    """
    if graph_name not in ("decoder", "detokenize"):
        return []
    chosen = [node.name for node in proto.graph.node if node.op_type == "Gather" and node.input[0] == CODEBOOK]
    if not chosen:
        raise ExportError(
            f"{graph_name} graph: could not find the Gather of the {CODEBOOK!r} initializer; "
            "refusing to convert it to reduced precision"
        )
    return chosen


def fp32_node_names(graph_name: str, proto: Any) -> list[str]:
    """Every node a reduced-precision build keeps fp32: the lookup, and the codebook gather."""
    return lookup_node_names(graph_name, proto) + codebook_gather_names(graph_name, proto)


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
    return drop_fp16_round_trips(converted, keep_fp32)


def drop_fp16_round_trips(proto: Any, keep_fp32: Iterable[str]) -> Any:
    """Remove the fp32 -> fp16 -> fp32 Cast pairs the converter puts between two kept-fp32 nodes.

    onnxconverter-common casts every kept node's outputs to fp16 and its inputs back to fp32, so a
    value passed from one lookup node to the next was rounded to fp16 on the way (the normalised
    vector, the scores): the lookup ran on fp16 values in fp32 ops. Here a kept node's output feeds
    the kept nodes that read it directly; the fp16 copy stays only for consumers outside the region.
    """
    keep_fp32 = set(keep_fp32)
    nodes = list(proto.graph.node)
    producer = {name: node for node in nodes for name in node.output}
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in proto.graph.output}

    def cast_to(node: Any, element_type: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == element_type for a in node.attribute)

    renamed: dict[str, str] = {}
    dropped: set[int] = set()
    for down in nodes:
        if not cast_to(down, FLOAT16) or down.input[0] not in producer or producer[down.input[0]].name not in keep_fp32:
            continue
        fp32_value, fp16_value = down.input[0], down.output[0]
        for up in readers.get(fp16_value, []):
            if cast_to(up, FLOAT) and all(reader.name in keep_fp32 for reader in readers.get(up.output[0], [])):
                renamed[up.output[0]] = fp32_value
                dropped.add(id(up))
        still_read = [r for r in readers.get(fp16_value, []) if id(r) not in dropped]
        if not still_read and fp16_value not in graph_outputs:
            dropped.add(id(down))
    kept_nodes = [node for node in nodes if id(node) not in dropped]
    for node in kept_nodes:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del proto.graph.node[:]
    proto.graph.node.extend(kept_nodes)
    return proto


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


def convert_precision(step: BuildStep) -> dict[str, Any]:
    """Build step of the reduced-precision ONNX target: convert each graph of the fp32 source
    artifact to its precision (fp16, int8 QDQ) in the staging folder; return the manifest."""
    import onnx

    model, source, options, staging, log = step.model, step.source, step.options, step.staging, step.log
    assert model is not None and source is not None
    names = [name for name in source.graphs if name in options.graphs]
    precisions = {name: options.precision.for_graph(name) for name in names}
    int8_inputs = {source.graphs[name]["inputs"][0]["name"] for name in names if precisions[name] == "int8"}
    photos = photos_for(options.calib_images) if int8_inputs else []
    batch, size = source.fixed_shape()
    factor = model.downsample_factor
    feeds = calibration_feeds(model, photos, size or (multiple_of(128, factor),) * 2, batch) if int8_inputs else {}
    manifest = source.manifest_copy()
    manifest["graphs"] = {}
    for name in names:
        entry = dict(source.graphs[name])
        precision = precisions[name]
        source_path = source.graph_path(name)
        target_path = staging / entry["file"]
        proto = onnx.load(str(source_path))
        keep = fp32_node_names(name, proto)
        log.start()
        if precision == "fp32" or len(keep) == len(proto.graph.node):
            shutil.copyfile(source_path, target_path)  # fp32, or the lookup and nothing else: stays fp32
        elif precision == "fp16":
            onnx.save(convert_fp16(proto, keep), str(target_path))
        else:
            keep = keep + latent_producer_names(name, proto)
            quantize_int8(source_path, target_path, keep, feeds[entry["inputs"][0]["name"]])
        onnx.checker.check_model(str(target_path), full_check=True)
        entry.update(fp32_nodes=len(keep))
        manifest["graphs"][name] = entry
        kept = f"{len(keep)} lookup / latent / codebook nodes kept fp32"
        log.done(f"converted {entry['file']} to {precision} ({kept})" if precision != "fp32" else f"copied {entry['file']} (fp32)")
    manifest["files"] = {entry["file"]: file_checksum(staging / entry["file"]) for entry in manifest["graphs"].values()}
    used = set(precisions.values())
    manifest["reduced_precision"] = {
        "from": "fp32 ONNX export",
        "kept_fp32": "quantizer lookup (all its nodes and the values between them), codebook gather, graph inputs and outputs"
        + (", the layer that writes the latent" if "int8" in used else ""),
        "method": "; ".join(
            method
            for precision, method in (
                ("fp16", "fp16: onnxconverter-common float16"),
                ("int8", "int8: onnxruntime static QDQ, symmetric int8, per-channel weights, MinMax"),
            )
            if precision in used
        ),
        "calibration_images": None
        if "int8" not in used
        else {
            "source": str(options.calib_images) if options.calib_images else "scikit-image samples",
            "names": [name for name, _ in photos],
        },
    }
    manifest["tools"] = {**manifest.get("tools", {}), **_tool_versions(used)}
    return manifest


def _tool_versions(precisions: set[str]) -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if "fp16" in precisions:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    return versions
