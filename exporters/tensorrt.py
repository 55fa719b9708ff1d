"""TensorRT engines built from the exported ONNX graphs, validated against eager on the GPU.

    gsq-export --ckpt model.pt --target trt --precision fp16 \\
        --min-shape 1x64x64 --opt-shape 4x256x256 --max-shape 8x512x512 --out out/model-trt

- Shapes: one optimization profile per engine from --min/--opt/--max-shape (BxHxW images; latent and
  token grids follow from the downsampling factor). A --static export builds for its fixed shape.
- Precision: fp32, fp16, bf16 (builder flags on the fp32 graphs) and int8 (explicit quantization:
  the symmetric QDQ graphs of exporters.onnx_precision, calibrated over --calib-images; TensorRT 10
  deprecates implicit calibrators). In every reduced precision the lookup's layers (normalise,
  MatMul, Add, ArgMax) are constrained to fp32 (layer.precision, output types, and
  OBEY_PRECISION_CONSTRAINTS), so a flipped token can only come from the encoder's rounding.
- Token ids are int32 at the engine boundary (exporters.tensorrt_compat); runtimes.trt converts.
- Engines only run on the GPU model and TensorRT version that built them: the manifest records the
  GPU name, compute capability and TensorRT version, and runtimes.trt refuses any other.
- A timing cache (--timing-cache FILE) is read when present and written back after the build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.model import GSQTokenizer
from runtimes.trt import INSTALL_HINT, missing_requirements  # what engines need is the runtime's to say

from . import ExportError
from .calibration import multiple_of, photos_for, validation_batches
from .manifest import file_checksum
from .onnx_precision import SourceArtifact, exported_onnx, lookup_node_names, validate_into_manifest
from .staging import StageLog, check_destination, install_artifact, raise_if_failed, staging_folder
from .tensorrt_compat import prepare_for_tensorrt, tensorrt_problems
from .validation import Tolerances

TARGET = "trt"
TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_WORKSPACE_MB = 4096


def require_tensorrt(what: str = "--target trt") -> Any:
    """The tensorrt module on a CUDA machine, or ExportError in one line saying what is missing."""
    missing = missing_requirements()
    if missing:
        raise ExportError(f"{what} needs TensorRT and a CUDA GPU: {'; '.join(missing)}. Install: {INSTALL_HINT}")
    import tensorrt

    return tensorrt


@dataclass(frozen=True)
class ProfileShapes:
    """Image batch and size range of an optimization profile: (batch, height, width) each."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def parse(cls, minimum: str | None, optimum: str | None, maximum: str | None, factor: int) -> "ProfileShapes":
        """From 'BxHxW' strings (defaults: 1 x 2f x 2f, 1x256x256, 8x512x512), checked."""
        default_opt = (1, multiple_of(256, factor), multiple_of(256, factor))
        shapes = (
            _parse_bhw(minimum, "--min-shape") if minimum else (1, 2 * factor, 2 * factor),
            _parse_bhw(optimum, "--opt-shape") if optimum else default_opt,
            _parse_bhw(maximum, "--max-shape") if maximum else (8, multiple_of(512, factor), multiple_of(512, factor)),
        )
        for label, shape in zip(("--min-shape", "--opt-shape", "--max-shape"), shapes):
            if shape[1] % factor or shape[2] % factor:
                raise ExportError(f"{label} {_bhw_text(shape)}: height and width must be multiples of {factor}")
        for axis in range(3):
            if not shapes[0][axis] <= shapes[1][axis] <= shapes[2][axis]:
                raise ExportError(
                    f"profile shapes must satisfy min <= opt <= max on every axis, got "
                    f"{' <= '.join(_bhw_text(shape) for shape in shapes)}"
                )
        return cls(*shapes)

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _parse_bhw(text: str, label: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ExportError(f"{label} {text!r}: expected BxHxW with positive integers, e.g. 1x256x256")
    batch, height, width = (int(part) for part in parts)
    return batch, height, width


def _bhw_text(shape: tuple[int, int, int]) -> str:
    return "x".join(str(value) for value in shape)


def input_shapes(entry: dict[str, Any], image_shape: tuple[int, int, int], factor: int) -> list[int]:
    """The concrete input shape of a graph for one (batch, height, width) image shape."""
    batch, height, width = image_shape
    symbolic = {
        "batch": batch,
        "height": height,
        "width": width,
        "token_height": height // factor,
        "token_width": width // factor,
    }
    return [symbolic[dim] if isinstance(dim, str) else int(dim) for dim in entry["inputs"][0]["shape"]]


def export_tensorrt(
    model: GSQTokenizer,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    validate: bool = True,
    calib_images: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tolerances: Tolerances | None = None,
    **onnx_options: Any,
) -> dict:
    """ONNX export (QDQ for int8) into a temporary folder, then build_engines into out_dir."""
    require_tensorrt()  # before any work: one clear line on machines without TensorRT or a GPU
    if precision not in TRT_PRECISIONS:
        raise ExportError(
            f"TensorRT precision {precision!r} is not supported; choose one of {', '.join(TRT_PRECISIONS)}"
        )
    out_dir = Path(out_dir)
    with exported_onnx(
        model,
        out_dir,
        "int8" if precision == "int8" else "fp32",  # TensorRT makes fp16/bf16 itself from fp32 graphs
        calib_images=calib_images,
        overwrite=overwrite,
        progress=progress,
        onnx_options=onnx_options,
    ) as onnx_dir:
        return build_engines(
            model,
            onnx_dir,
            out_dir,
            precision=precision,
            min_shape=min_shape,
            opt_shape=opt_shape,
            max_shape=max_shape,
            workspace_mb=workspace_mb,
            timing_cache=timing_cache,
            validate=validate,
            calib_images=calib_images,
            overwrite=overwrite,
            progress=progress,
            tolerances=tolerances,
        )


def build_engines(
    model: GSQTokenizer,
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    validate: bool = True,
    calib_images: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tolerances: Tolerances | None = None,
) -> dict:
    """Build one engine per graph of an ONNX artifact, validate them on the GPU, write the manifest."""
    import onnx

    trt = require_tensorrt()
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    source = SourceArtifact.read(onnx_dir)
    factor = model.downsample_factor
    batch, size = source.fixed_shape()
    if batch is not None and size is not None:
        fixed = (batch, size[0], size[1])
        profile = ProfileShapes(fixed, fixed, fixed)
    else:
        profile = ProfileShapes.parse(min_shape, opt_shape, max_shape, factor)
    log = StageLog(progress)
    with staging_folder(out_dir) as staging:
        manifest = dict(source.manifest)
        manifest["graphs"], manifest["files"] = {}, {}
        (staging / "onnx").mkdir()
        cache_path = Path(timing_cache) if timing_cache else None
        for name, onnx_entry in source.graphs.items():
            log.start()
            proto = onnx.load(str(source.graph_path(name)))
            keep_fp32 = lookup_node_names(name, proto)
            prepared = prepare_for_tensorrt(proto)
            problems = tensorrt_problems(prepared)
            if problems:
                raise ExportError(f"{name} graph is not TensorRT-compatible: {'; '.join(problems[:3])}")
            onnx_name = f"onnx/{onnx_entry['file']}"
            onnx.save(prepared, str(staging / onnx_name))
            engine_name = Path(onnx_entry["file"]).with_suffix(".engine").name
            shapes = {
                key: input_shapes(onnx_entry, value, factor)
                for key, value in zip(("min", "opt", "max"), (profile.min, profile.opt, profile.max))
            }
            layers_fp32 = build_engine(
                trt,
                staging / onnx_name,
                staging / engine_name,
                onnx_entry["inputs"][0]["name"],
                shapes,
                precision,
                keep_fp32,
                workspace_mb,
                cache_path,
            )
            entry = {
                **onnx_entry,
                "file": engine_name,
                "onnx": onnx_name,
                "precision": precision,
                "inputs": [_int32_codes(tensor) for tensor in onnx_entry["inputs"]],
                "outputs": [_int32_codes(tensor) for tensor in onnx_entry["outputs"]],
                "profile": shapes,
                "fp32_layers": layers_fp32,
            }
            manifest["graphs"][name] = entry
            for file_name in (engine_name, onnx_name):
                manifest["files"][file_name] = file_checksum(staging / file_name)
            size_mb = (staging / engine_name).stat().st_size / 1e6
            log.done(f"built {engine_name} ({size_mb:.1f} MB, {precision}, {layers_fp32} lookup layers fp32)")
        manifest["target"] = TARGET
        manifest["precision"] = precision
        manifest["tensorrt"] = {
            **engine_compatibility(trt),
            "profile": profile.to_dict(),
            "workspace_mb": workspace_mb,
            "codes_dtype": "int32",
            "timing_cache": str(cache_path) if cache_path else None,
        }
        manifest["tools"] = {**manifest.get("tools", {}), "tensorrt": trt.__version__}
        manifest["validation"] = None
        if validate:
            photos = photos_for(calib_images)
            batches = [b for b in validation_batches(photos, factor, batch, size) if _within(b.shape, profile)]
            if not batches:
                raise ExportError(
                    f"no validation batch fits the profile {profile.to_dict()}; widen --min-shape / --max-shape "
                    "(validation uses batches of up to 8 images at about 96x96 and 80x144) or pass --no-validate"
                )
            runner = TrtGraphRunner(staging, manifest["graphs"])
            runtime = f"TensorRT {trt.__version__} on {manifest['tensorrt']['gpu']}"
            validate_into_manifest(
                model, manifest, runner, photos, batches, precision, tolerances, calib_images, runtime, log
            )
        install_artifact(staging, out_dir, manifest, log)
    raise_if_failed(manifest)
    return manifest


def build_engine(
    trt: Any,
    onnx_path: Path,
    engine_path: Path,
    input_name: str,
    shapes: dict[str, list[int]],
    precision: str,
    keep_fp32: list[str],
    workspace_mb: int,
    timing_cache: Path | None,
) -> int:
    """Parse, configure and build one engine; returns how many layers were constrained to fp32."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT's ONNX parser rejected it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ layers set the scales
    constrained = 0
    if precision != "fp32":
        constrained = constrain_to_fp32(trt, network, keep_fp32)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.name}: TensorRT could not build an engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = timing_cache.with_name(f".{timing_cache.name}.tmp")
        tmp.write_bytes(bytes(cache.serialize()))  # the build added its new timings to it
        tmp.replace(timing_cache)
    return constrained


def constrain_to_fp32(trt: Any, network: Any, keep_fp32: list[str]) -> int:
    """Pin the lookup's layers (named after their ONNX nodes, plus parser suffixes) to fp32."""
    float_types = {trt.float32, trt.float16, trt.bfloat16}
    prefixes = tuple(keep_fp32)
    layers = [network.get_layer(index) for index in range(network.num_layers)]
    # A layer belongs to the lookup when its name or an output tensor's name (the parser names both
    # after the ONNX node, "<node>" and "<node>_output_0", helper layers at least one of them) does.
    chosen = [
        layer
        for layer in layers
        if prefixes
        and (
            layer.name.startswith(prefixes)
            or any(layer.get_output(i).name.startswith(prefixes) for i in range(layer.num_outputs))
        )
    ]
    # The constants they read (the normalised codebook, the bias) are named after their ONNX
    # initializers, not nodes: pin those too, or an fp16 build would round the codebook.
    read = {
        layer.get_input(i).name for layer in chosen for i in range(layer.num_inputs) if layer.get_input(i) is not None
    }
    chosen_names = {layer.name for layer in chosen}
    chosen += [
        layer
        for layer in layers
        if layer.type == trt.LayerType.CONSTANT and layer.name not in chosen_names and layer.get_output(0).name in read
    ]
    count = 0
    for layer in chosen:
        if layer.type == trt.LayerType.CONSTANT and layer.get_output(0).dtype not in float_types:
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in float_types:
                layer.set_output_type(output, trt.float32)
        count += 1
    if keep_fp32 and count == 0:
        raise ExportError(
            "no TensorRT layer matched the quantizer lookup's ONNX node names; "
            "refusing to build it in reduced precision"
        )
    return count


def engine_compatibility(trt: Any) -> dict[str, Any]:
    """The GPU and TensorRT version an engine built now is tied to."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"version": trt.__version__, "gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def _int32_codes(tensor: dict[str, Any]) -> dict[str, Any]:
    return {**tensor, "dtype": "int32"} if tensor["name"] == "codes" else tensor


def _within(shape: tuple[int, ...], profile: ProfileShapes) -> bool:
    batch, _, height, width = shape
    return all(low <= value <= high for low, value, high in zip(profile.min, (batch, height, width), profile.max))


class TrtGraphRunner:
    """run_graph(name, feed) over the engines in a staging folder, for validation (torch CUDA buffers)."""

    def __init__(self, artifact_dir: Path, entries: dict[str, dict[str, Any]]):
        self.artifact_dir = artifact_dir
        self.entries = entries
        self._engines: dict[str, Any] = {}

    def __call__(self, name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        import tensorrt as trt
        import torch

        if name not in self._engines:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine((self.artifact_dir / self.entries[name]["file"]).read_bytes())
            self._engines[name] = (runtime, engine, engine.create_execution_context())
        _, engine, context = self._engines[name]
        ((input_name, value),) = feed.items()
        if value.dtype == np.int64:
            value = value.astype(np.int32)
        device_input = torch.from_numpy(np.ascontiguousarray(value)).cuda()
        context.set_input_shape(input_name, tuple(device_input.shape))
        output_name = self.entries[name]["outputs"][0]["name"]
        output_shape = tuple(context.get_tensor_shape(output_name))
        output_dtype = torch.int32 if self.entries[name]["outputs"][0]["dtype"] == "int32" else torch.float32
        device_output = torch.empty(output_shape, dtype=output_dtype, device="cuda")
        context.set_tensor_address(input_name, device_input.data_ptr())
        context.set_tensor_address(output_name, device_output.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{name}: TensorRT execution failed")
        stream.synchronize()
        result = device_output.cpu().numpy()
        return result.astype(np.int64) if result.dtype == np.int32 else result
