"""TensorRT engines built with Polygraphy from the exported ONNX graphs, validated on the GPU.

    gsq-export --ckpt model.pt --target trt --precision fp16 \\
        --min-shape 1x64x64 --opt-shape 4x256x256 --max-shape 8x512x512 --out out/model-trt

Each engine is built by Polygraphy's loaders (pip install 'gsq-deploy[trt]'): the network parsed
from the ONNX graph (NetworkFromOnnxPath), a post-processing step that pins the lookup to fp32
(PostprocessNetwork), a builder config with the optimization profile, the precision flags,
precision constraints, the workspace limit and a timing cache (CreateConfig), and the build
itself (EngineBytesFromNetwork), which merges what it timed back into the timing cache file.
- Shapes: one optimization profile per engine from --min/--opt/--max-shape (BxHxW images; latent and
  token grids follow from the downsampling factor). A --static export builds for its fixed shape.
- Precision: fp32, fp16, bf16 (builder flags on the fp32 graphs) and int8 (explicit quantization:
  the symmetric QDQ graphs of exporters.onnx_precision, calibrated over --calib-images; TensorRT 10
  deprecates implicit calibrators). In every reduced precision the lookup's layers (normalise,
  MatMul, Add, ArgMax) and the constants they read are constrained to fp32 (layer precision, output
  types, and precision constraints "obey"), so a flipped token can only come from the encoder's rounding.
- Token ids are int32 at the engine boundary (exporters.tensorrt_compat); runtimes.trt converts.
- Engines only run on the GPU model and TensorRT version that built them: the manifest records the
  GPU name, compute capability and TensorRT version, and runtimes.trt refuses any other.
- Validation opens the staged engines with runtimes.trt (Polygraphy's TrtRunner), as users do.
No TensorRT or GPU is reachable where this was written: the build is checked statically here
(exporters.tensorrt_compat, the Polygraphy loader chain and the fp32 pinning with stand-ins, in
tests/exporters/test_targets_tensorrt.py), and for real on a machine with both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gsq_deploy.runtimes.trt import cuda_device_facts, missing_requirements, trt_install_hint

from . import ExportError, flag
from .build import BuildStep, ExportOptions, SourceRequest, Target, export
from .calibration import multiple_of
from .manifest import file_checksum
from .onnx_precision import fp32_node_names
from .tensorrt_compat import prepare_for_tensorrt, tensorrt_problems

TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_WORKSPACE_MB = 4096


@dataclass(frozen=True)
class TensorRTOptions:
    """gsq-export's TensorRT options (--target trt, and --target triton --triton-backend tensorrt)."""

    OWNER: ClassVar[str] = "TensorRT"
    USE_WITH: ClassVar[str] = "--target trt"

    min_shape: str | None = flag(None, "--min-shape", "trt: smallest BxHxW of the optimization profile.")
    opt_shape: str | None = flag(None, "--opt-shape", "trt: BxHxW the engines are tuned for.")
    max_shape: str | None = flag(None, "--max-shape", "trt: largest BxHxW of the optimization profile.")
    workspace_mb: int = flag(
        DEFAULT_WORKSPACE_MB, "--workspace-mb", f"trt: builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MB}).",
        type=("int_range", 16),
    )  # fmt: skip
    timing_cache: Path | None = flag(
        None, "--timing-cache", "trt: timing cache file, read if present and updated.", type="path"
    )


def require_tensorrt(what: str = "--target trt") -> Any:
    """The tensorrt module on a CUDA machine, or ExportError in one line saying what is missing."""
    missing = missing_requirements()
    if missing:
        raise ExportError(f"{what} needs TensorRT and a CUDA GPU: {'; '.join(missing)}. Install: {trt_install_hint()}")
    import tensorrt

    return tensorrt


def export_tensorrt(model: Any, out_dir: str | Path, **options: Any) -> dict:
    """ONNX export (QDQ for int8) into a temporary folder, then engines into out_dir. options: the
    fields of exporters.build.ExportOptions, and trt=TensorRTOptions(...)."""
    trt_options = options.pop("trt", None)
    target_options = (trt_options,) if trt_options is not None else ()
    return export(model, out_dir, "trt", ExportOptions(**options, target_options=target_options))


@dataclass(frozen=True)
class ProfileShapes:
    """Image batch and size range of an optimization profile: (batch, height, width) each."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def parse(cls, minimum: str | None, optimum: str | None, maximum: str | None, factor: int) -> ProfileShapes:
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

    def holds(self, images_shape: tuple[int, ...]) -> bool:
        """Whether a [B, C, H, W] image batch lies inside the profile."""
        batch, _, height, width = images_shape
        return all(low <= value <= high for low, value, high in zip(self.min, (batch, height, width), self.max))


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


def engine_profile(step: BuildStep) -> ProfileShapes:
    """The profile every engine of this build gets: a static source's fixed shape, else the flags'."""
    assert step.source is not None and step.model is not None
    batch, size = step.source.fixed_shape()
    if batch is not None and size is not None:
        fixed = (batch, size[0], size[1])
        return ProfileShapes(fixed, fixed, fixed)
    trt_options = step.options.options_of(TensorRTOptions)
    factor = step.model.downsample_factor
    return ProfileShapes.parse(trt_options.min_shape, trt_options.opt_shape, trt_options.max_shape, factor)


def build_engines(step: BuildStep) -> dict[str, Any]:
    """Build step: one engine per graph of the ONNX source artifact, with Polygraphy's loaders."""
    import onnx

    trt = require_tensorrt()
    source, staging, log, options = step.source, step.staging, step.log, step.options
    assert source is not None and step.model is not None
    factor = step.model.downsample_factor
    profile = engine_profile(step)
    trt_options = options.options_of(TensorRTOptions)
    manifest = source.manifest_copy()
    manifest["graphs"], manifest["files"] = {}, {}
    (staging / "onnx").mkdir()
    for name, onnx_entry in source.graphs.items():
        log.start()
        precision = options.precision.for_graph(name)
        proto = onnx.load(str(source.graph_path(name)))
        keep_fp32 = fp32_node_names(name, proto)
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
        plan = EnginePlan(onnx_entry["inputs"][0]["name"], shapes, precision, keep_fp32, trt_options)
        layers_fp32 = build_engine(trt, staging / onnx_name, staging / engine_name, plan)
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
    name, capability = cuda_device_facts(0)
    manifest["target"] = "trt"
    manifest["tensorrt"] = {
        "version": trt.__version__,
        "gpu": name,
        "compute_capability": capability,
        "profile": profile.to_dict(),
        "workspace_mb": trt_options.workspace_mb,
        "codes_dtype": "int32",
        "timing_cache": str(trt_options.timing_cache) if trt_options.timing_cache else None,
        "built_with": "polygraphy",
    }
    manifest["tools"] = {**manifest.get("tools", {}), "tensorrt": trt.__version__, **_polygraphy_version()}
    return manifest


@dataclass(frozen=True)
class EnginePlan:
    """What one engine is built for: its input's profile shapes, precision and fp32 region."""

    input_name: str
    shapes: dict[str, list[int]]  # min / opt / max input shape
    precision: str
    keep_fp32: list[str]  # ONNX node names of the lookup
    options: TensorRTOptions


def engine_loader(trt: Any, onnx_path: Path, plan: EnginePlan) -> tuple[Any, LookupPins]:
    """Polygraphy's loader chain for one engine (not run yet), and the pinning step's record."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessNetwork,
        Profile,
    )

    reduced = plan.precision != "fp32"
    pins = LookupPins(trt, plan.keep_fp32 if reduced else [])
    network = PostprocessNetwork(NetworkFromOnnxPath(str(onnx_path)), func=pins, name="pin the lookup to fp32")
    cache = plan.options.timing_cache
    config = CreateConfig(
        fp16=plan.precision == "fp16",
        bf16=plan.precision == "bf16",
        int8=plan.precision == "int8",  # explicit quantization: the QDQ layers carry the scales
        profiles=[Profile().add(plan.input_name, plan.shapes["min"], plan.shapes["opt"], plan.shapes["max"])],
        precision_constraints="obey" if reduced else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: plan.options.workspace_mb << 20},
        load_timing_cache=str(cache) if cache is not None and Path(cache).is_file() else None,
    )
    loader = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache) if cache else None)
    return loader, pins


def build_engine(trt: Any, onnx_path: Path, engine_path: Path, plan: EnginePlan) -> int:
    """Build one engine with Polygraphy and write it; returns how many layers were pinned to fp32."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    loader, pins = engine_loader(trt, onnx_path, plan)
    if plan.options.timing_cache is not None:
        Path(plan.options.timing_cache).parent.mkdir(parents=True, exist_ok=True)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            serialized = loader()
    except PolygraphyException as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else "see the TensorRT log above"
        raise ExportError(f"{onnx_path.name}: TensorRT could not build an engine: {message}") from None
    engine_path.write_bytes(bytes(serialized))
    return pins.count


class LookupPins:
    """The network post-processing step: pin the lookup's layers, and the constants they read, to fp32.

    TensorRT's ONNX parser names a layer after its ONNX node ("<node>", helper layers "<node>_...")
    and an output tensor "<node>_output_0", so a layer belongs to the lookup when its name or an
    output's name starts with a lookup node's name. The constants those layers read (the normalised
    codebook, the bias) are named after ONNX initializers, not nodes: they are found as the
    CONSTANT layers producing an input of a chosen layer, or an fp16 build would round the codebook.
    """

    def __init__(self, trt: Any, keep_fp32: list[str]):
        self.trt = trt
        self.prefixes = tuple(keep_fp32)
        self.count = 0

    def __call__(self, network: Any) -> None:
        if not self.prefixes:
            return
        trt = self.trt
        float_types = {trt.float32, trt.float16, trt.bfloat16}
        layers = [network.get_layer(index) for index in range(network.num_layers)]
        chosen = [
            layer
            for layer in layers
            if layer.name.startswith(self.prefixes)
            or any(layer.get_output(i).name.startswith(self.prefixes) for i in range(layer.num_outputs))
        ]
        read = {
            layer.get_input(i).name
            for layer in chosen
            for i in range(layer.num_inputs)
            if layer.get_input(i) is not None
        }
        chosen_names = {layer.name for layer in chosen}
        chosen += [
            layer
            for layer in layers
            if layer.type == trt.LayerType.CONSTANT
            and layer.name not in chosen_names
            and layer.get_output(0).name in read
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
        if count == 0:
            raise ExportError(
                "no TensorRT layer matched the quantizer lookup's ONNX node names; "
                "refusing to build it in reduced precision"
            )
        self.count = count


def _int32_codes(tensor: dict[str, Any]) -> dict[str, Any]:
    return {**tensor, "dtype": "int32"} if tensor["name"] == "codes" else tensor


def _polygraphy_version() -> dict[str, str]:
    import polygraphy

    return {"polygraphy": polygraphy.__version__}


def _source(options: ExportOptions) -> SourceRequest:
    """fp16 / bf16 engines are made by TensorRT from the fp32 graphs; int8 from the QDQ graphs (per
    part: a mixed build's encoder and decoder each from the graphs of their own precision)."""
    return SourceRequest("onnx", options.precision.map(lambda precision: "int8" if precision == "int8" else "fp32"))


def _check(options: ExportOptions) -> None:
    require_tensorrt()  # before any work: one clear line on machines without TensorRT or a GPU


def _fit_batches(batches: list[np.ndarray], manifest: dict[str, Any]) -> list[np.ndarray]:
    """The validation batches inside the engines' profile (the runtime splits larger batches)."""
    profile = ProfileShapes(**{key: tuple(value) for key, value in manifest["tensorrt"]["profile"].items()})
    fitting = [batch for batch in batches if profile.holds((profile.min[0],) + batch.shape[1:])]
    if not fitting:
        raise ExportError(
            f"no validation batch fits the profile {profile.to_dict()}; widen --min-shape / --max-shape "
            "(validation uses images of about 96x96 and 80x144) or pass --no-validate"
        )
    return fitting


TARGET = Target(
    name="trt",
    precisions=TRT_PRECISIONS,
    build=build_engines,
    source=_source,
    runtime="trt",
    runtime_options=lambda options: {"device": 0},
    option_types=(TensorRTOptions,),
    check=_check,
    fit_batches=_fit_batches,
)
