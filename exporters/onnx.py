"""Export a GSQTokenizer to ONNX graphs plus manifest.json, validated against eager in ONNX Runtime.

Exporter choice (torch 2.13): the TorchScript-based torch.onnx exporter (dynamo=False). The
torch.export-based exporter fails on the attention blocks (3-D scaled_dot_product_attention is not
translated) and takes ~15x longer; the TorchScript exporter gives clean graphs that keep batch,
height and width symbolic, which validation checks by running shapes other than the traced ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ExportError, __version__
from .build import DEFAULT_OPSET, BuildStep, ExportOptions, SourceRequest, Target, export
from .manifest import build_manifest
from .precision import PrecisionPlan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gsq_core.model import GSQTokenizer

    from .graphs import GraphSpec, ShapePlan, TensorSpec

MIN_OPSET, MAX_OPSET = 14, 20  # SDPA needs 14; the TorchScript exporter stops at 20
ONNX_PRECISIONS = ("fp32", "fp16", "int8")

_NUMPY_DTYPES = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 16: "bfloat16"}


def export_onnx(model: GSQTokenizer, out_dir: str | Path, **options: Any) -> dict:
    """Write the fp32 ONNX graphs and manifest.json to out_dir, validated against eager; return the
    manifest. options: the fields of exporters.build.ExportOptions (opset, dynamic, graphs, ...)."""
    return export(model, out_dir, "onnx", ExportOptions(**options))


def _source(options: ExportOptions) -> SourceRequest | None:
    """fp32 graphs are traced from the model; reduced precisions convert the fp32 graphs."""
    if options.precisions == {"fp32"}:
        return None
    return SourceRequest("onnx", PrecisionPlan())


def _check(options: ExportOptions) -> None:
    import importlib.util

    from gsq_core.extras import install_hint

    if not MIN_OPSET <= options.opset <= MAX_OPSET:
        raise ExportError(
            f"opset {options.opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})"
        )
    if "fp16" in options.precisions and importlib.util.find_spec("onnxconverter_common") is None:
        raise ExportError(f"--precision fp16 needs onnxconverter-common: {install_hint('fp16')}")


def _build(step: BuildStep) -> dict[str, Any]:
    if step.source is None:
        return trace_graphs(step)
    from .onnx_precision import convert_precision

    return convert_precision(step)


def trace_graphs(step: BuildStep) -> dict[str, Any]:
    """Trace every graph asked for from the model into the staging folder; return the manifest."""
    from .graphs import graph_specs, lookup_plan

    model, options, staging, log = step.model, step.options, step.staging, step.log
    assert model is not None
    plan = _shape_plan(model, options.dynamic, options.image_size, options.batch_size)
    lookup = lookup_plan(model, options.code_block, options.lookup)
    specs = graph_specs(model, plan, lookup)
    entries: dict[str, dict[str, Any]] = {}
    for name in options.graphs:
        spec = specs[name]
        log.start()
        entries[name] = export_graph(
            spec.build(model), spec, staging / spec.file, options.opset, _example_inputs(model, spec)
        )
        size_mb = (staging / spec.file).stat().st_size / 1e6
        log.done(f"exported {spec.file} ({size_mb:.1f} MB, opset {options.opset}), onnx.checker passed")
    shapes = {
        "dynamic": options.dynamic,
        "batch": plan.batch if isinstance(plan.batch, int) else None,
        "image_size": [plan.height, plan.width] if isinstance(plan.height, int) else None,
    }
    manifest = build_manifest(
        model,
        target="onnx",
        precision="fp32",
        exporter_version=__version__,
        graphs=entries,
        artifact_dir=staging,
        shapes=shapes,
        source=options.source,
    )
    manifest["lookup"].update(lookup.manifest_facts())
    return manifest


TARGET = Target(
    name="onnx",
    precisions=ONNX_PRECISIONS,
    build=_build,
    source=_source,
    runtime="onnx",
    runtime_options=lambda options: {"provider": "cpu"},
    check=_check,
)


def export_graph(
    module: nn.Module, spec: GraphSpec, path: Path, opset: int, example_inputs: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    """Export one module to path, check it with onnx.checker; return its manifest entry."""
    import onnx
    import torch

    dynamic_axes = {tensor.name: tensor.dynamic_axes() for tensor in spec.inputs + spec.outputs}
    dynamic_axes = {name: axes for name, axes in dynamic_axes.items() if axes}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated, and torch's own shape assertions
        # (group_norm's batch-size check, split sizes) raise TracerWarnings; neither affects the
        # graph, and validation runs shapes other than the traced ones to prove it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # IBQ's downsampling pads right and bottom only; the exporter writes that Pad's reversed pad
        # list as a constant Slice with step -1, which it declines to fold (ONNX Runtime folds it).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
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
    return {"file": spec.file, "inputs": inputs, "outputs": outputs, "precision": "fp32", "opset": opset}


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
    from .graphs import ShapePlan

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
    import torch

    generator = torch.Generator().manual_seed(0)
    factor = model.downsample_factor
    symbolic = {"batch": 2, "height": 4 * factor, "width": 6 * factor, "token_height": 4, "token_width": 6}
    tensors = []
    for tensor in spec.inputs:
        shape = [symbolic[dim] if isinstance(dim, str) else dim for dim in tensor.shape]
        tensors.append(_example_tensor(tensor, shape, model.num_embed, generator))
    return tuple(tensors)


def _example_tensor(tensor: TensorSpec, shape: list[int], num_embed: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    if tensor.dtype == "int64":
        return torch.randint(0, num_embed, shape, generator=generator, dtype=torch.int64)
    return torch.rand(shape, generator=generator) * 2 - 1


