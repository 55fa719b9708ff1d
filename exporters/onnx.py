"""Export a GSQTokenizer to ONNX graphs plus manifest.json, validated against eager in ONNX Runtime.

Exporter choice (torch 2.13): the TorchScript-based torch.onnx exporter (dynamo=False). The
torch.export-based exporter fails on the attention blocks (3-D scaled_dot_product_attention is not
translated) and takes ~15x longer; the TorchScript exporter gives clean graphs that keep batch,
height and width symbolic, which validation checks by running shapes other than the traced ones.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from gsq_core.model import GSQTokenizer

from . import GRAPH_NAMES, ExportError, __version__, select_graphs
from .calibration import photos_for, validation_batches
from .graphs import LOOKUP_CODE_BLOCK, GraphSpec, ShapePlan, TensorSpec, graph_specs
from .manifest import build_manifest
from .staging import StageLog, check_destination, install_artifact, raise_if_failed, staging_folder
from .validation import validate_graphs

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 20  # SDPA needs 14; the TorchScript exporter stops at 20
PRECISION = "fp32"
TARGET = "onnx"

_NUMPY_DTYPES = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 16: "bfloat16"}


def export_onnx(
    model: GSQTokenizer,
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    image_size: tuple[int, int] | None = None,
    batch_size: int | None = None,
    graphs: Iterable[str] = GRAPH_NAMES,
    validate: bool = True,
    calib_images: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    code_block: int = LOOKUP_CODE_BLOCK,
    source: dict[str, Any] | None = None,
) -> dict:
    """Write the ONNX graphs and manifest.json to out_dir; return the manifest.

    Raises ExportError for bad options or an existing out_dir (without overwrite), and
    ExportValidationError (after writing the artifacts, manifest marked failed) when a graph
    disagrees with eager beyond tolerance.
    """
    out_dir = Path(out_dir)
    names = select_graphs(graphs)
    plan = _shape_plan(model, dynamic, image_size, batch_size)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    check_destination(out_dir, overwrite)
    log = StageLog(progress)
    photos = photos_for(calib_images) if validate else []
    model, was_training = _cpu_fp32(model), model.training
    specs = graph_specs(model, plan, code_block)

    try:
        with staging_folder(out_dir) as staging:
            model.eval()
            entries: dict[str, dict[str, Any]] = {}
            for name in names:
                spec = specs[name]
                log.start()
                entries[name] = export_graph(
                    spec.build(model), spec, staging / spec.file, opset, _example_inputs(model, spec)
                )
                size_mb = (staging / spec.file).stat().st_size / 1e6
                log.done(f"exported {spec.file} ({size_mb:.1f} MB, opset {opset}), onnx.checker passed")
            shapes = {
                "dynamic": dynamic,
                "batch": plan.batch if isinstance(plan.batch, int) else None,
                "image_size": [plan.height, plan.width] if isinstance(plan.height, int) else None,
            }
            manifest = build_manifest(
                model,
                target=TARGET,
                precision=PRECISION,
                exporter_version=__version__,
                graphs=entries,
                artifact_dir=staging,
                shapes=shapes,
                source=source,
            )
            manifest["lookup"].update(code_block=code_block, code_blocks=-(-model.num_embed // code_block))
            if validate:
                batches = validation_batches(photos, model.downsample_factor, batch_size, plan_size(plan))
                runner = OrtGraphRunner(staging, entries)
                log.start()
                manifest["validation"] = validate_graphs(
                    model, names, runner, batches, PRECISION, image_names=[name for name, _ in photos]
                )
                manifest["validation"]["images"]["source"] = str(calib_images) if calib_images else "scikit-image samples"
                manifest["validation"]["runtime"] = "onnxruntime CPUExecutionProvider"
                verdict = "passed" if manifest["validation"]["passed"] else "FAILED"
                log.done(f"validated {len(names)} graphs against eager on {sum(len(b) for b in batches)} images: {verdict}")
            install_artifact(staging, out_dir, manifest, log)
    finally:
        model.train(was_training)
    raise_if_failed(manifest)
    return manifest


def export_graph(
    module: nn.Module, spec: GraphSpec, path: Path, opset: int, example_inputs: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    """Export one module to path, check it with onnx.checker; return its manifest entry."""
    import onnx

    dynamic_axes = {tensor.name: tensor.dynamic_axes() for tensor in spec.inputs + spec.outputs}
    dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if axes}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated, and torch's own shape assertions
        # (group_norm's batch-size check, split sizes) raise TracerWarnings; neither affects the
        # graph, and validation runs shapes other than the traced ones to prove it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                example_inputs,
                str(path),
                dynamo=False,
                input_names=[tensor.name for tensor in spec.inputs],
                output_names=[tensor.name for tensor in spec.outputs],
                dynamic_axes=dynamic_axes or None,
                opset_version=opset,
                do_constant_folding=True,
            )
    proto = onnx.load(str(path))
    proto.graph.name = spec.name
    proto.doc_string = f"gsq-deploy {spec.name} graph (exporter {__version__})"
    proto.producer_name = "gsq-deploy"
    proto.producer_version = __version__
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    inputs = [_tensor_entry(value) for value in proto.graph.input]
    outputs = [_tensor_entry(value) for value in proto.graph.output]
    expected_inputs = [tensor.to_dict() for tensor in spec.inputs]
    expected_outputs = [tensor.to_dict() for tensor in spec.outputs]
    if inputs != expected_inputs or outputs != expected_outputs:
        raise ExportError(
            f"{spec.file}: exported I/O {inputs} -> {outputs} differs from the planned "
            f"{expected_inputs} -> {expected_outputs}"
        )
    return {"file": spec.file, "inputs": inputs, "outputs": outputs, "precision": PRECISION, "opset": opset}


class OrtGraphRunner:
    """run_graph(name, feed) over ONNX Runtime CPU sessions, one per graph, created once."""

    def __init__(self, artifact_dir: Path, entries: dict[str, dict[str, Any]]):
        self.artifact_dir = artifact_dir
        self.entries = entries
        self._sessions: dict[str, Any] = {}

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        import onnxruntime

        if name not in self._sessions:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            path = str(self.artifact_dir / self.entries[name]["file"])
            self._sessions[name] = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return self._sessions[name].run(None, feed)[0]


def _cpu_fp32(model: GSQTokenizer) -> GSQTokenizer:
    """The model itself when it is already fp32 on CPU, else an fp32 CPU copy (the caller's stays put)."""
    parameter = next(model.parameters())
    if parameter.device.type == "cpu" and parameter.dtype == torch.float32:
        return model
    return copy.deepcopy(model).float().cpu()


def plan_size(plan: ShapePlan) -> tuple[int, int] | None:
    """The fixed (H, W) of a static plan, None when dynamic."""
    return (plan.height, plan.width) if isinstance(plan.height, int) and isinstance(plan.width, int) else None


def _tensor_entry(value) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    shape: list[int | str] = []
    for dim in tensor_type.shape.dim:
        shape.append(dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value))
    return {
        "name": value.name,
        "dtype": _NUMPY_DTYPES.get(tensor_type.elem_type, str(tensor_type.elem_type)),
        "shape": shape,
    }


def _shape_plan(
    model: GSQTokenizer, dynamic: bool, image_size: tuple[int, int] | None, batch_size: int | None
) -> ShapePlan:
    factor = model.downsample_factor
    if dynamic:
        if image_size is not None or batch_size is not None:
            raise ExportError("--image-size and --batch-size fix the graph's shapes: use them with --static")
        return ShapePlan.dynamic()
    if image_size is None:
        raise ExportError("a static export needs --image-size HxW (and optionally --batch-size, default 1)")
    height, width = image_size
    if height <= 0 or width <= 0 or height % factor or width % factor:
        raise ExportError(f"image size {height}x{width} is not a positive multiple of the downsampling factor {factor}")
    if height // factor * (width // factor) < model.min_token_positions:
        raise ExportError(
            f"image size {height}x{width} gives a {height // factor}x{width // factor} token grid; this model's "
            f"decoder needs at least {model.min_token_positions} token positions"
        )
    batch = 1 if batch_size is None else batch_size
    if batch < 1:
        raise ExportError(f"batch size {batch} must be >= 1")
    return ShapePlan.static(batch, height, width, factor)


def _example_inputs(model: GSQTokenizer, spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: the fixed shape, or for symbolic axes batch 2 and a 4x6 token grid."""
    generator = torch.Generator().manual_seed(0)
    factor = model.downsample_factor
    symbolic = {"batch": 2, "height": 4 * factor, "width": 6 * factor, "token_height": 4, "token_width": 6}
    tensors = []
    for tensor in spec.inputs:
        shape = [symbolic[dim] if isinstance(dim, str) else dim for dim in tensor.shape]
        tensors.append(_example_tensor(tensor, shape, model.num_embed, generator))
    return tuple(tensors)


def _example_tensor(tensor: TensorSpec, shape: list[int], num_embed: int, generator: torch.Generator) -> torch.Tensor:
    if tensor.dtype == "int64":
        return torch.randint(0, num_embed, shape, generator=generator, dtype=torch.int64)
    return torch.rand(shape, generator=generator) * 2 - 1


