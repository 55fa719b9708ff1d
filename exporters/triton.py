"""A Triton Inference Server model repository: tokenize and detokenize as two served models.

    gsq-export --ckpt model.pt --target triton --triton-backend onnxruntime --out out/model-triton
    tritonserver --model-repository out/model-triton

Layout (one version, 1):
    <out>/manifest.json                      what is inside, checksums, the graphs' validation report
    <out>/<prefix>_tokenize/config.pbtxt     images FP32 [B, 3, -1, -1] -> codes [B, -1, -1, G]
    <out>/<prefix>_tokenize/1/model.onnx     (model.plan for the TensorRT backend)
    <out>/<prefix>_detokenize/config.pbtxt   codes -> images
    <out>/<prefix>_detokenize/1/model.onnx

The model files are the ONNX graphs (any --precision) or TensorRT engines (--triton-backend
tensorrt, GPU machines only) exactly as the onnx / trt targets build and validate them; their
validation report is carried into manifest.json. Dynamic batching is on, with the batch axis as
Triton's batch dimension (max_batch_size); a --static export has no batch axis for Triton to use,
so it is written with max_batch_size 0 and full dims. Token ids are INT64 with onnxruntime and
INT32 with TensorRT (TensorRT's boundary type; clients cast). Triton only batches requests of the
same image size together.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import ExportError, flag
from .build import BuildStep, ExportOptions, SourceRequest, Target, convert, export, load_target
from .manifest import file_checksum
from .precision import PrecisionPlan
from .tensorrt import TensorRTOptions, require_tensorrt

TRITON_BACKENDS: dict[str, dict[str, str]] = {
    "onnxruntime": {"platform": "onnxruntime_onnx", "model_file": "model.onnx", "source_target": "onnx"},
    "tensorrt": {"platform": "tensorrt_plan", "model_file": "model.plan", "source_target": "trt"},
}
SERVED_GRAPHS = ("tokenize", "detokenize")
MODEL_VERSION = "1"
DEFAULT_MAX_BATCH = 8
QUEUE_DELAY_US = 2000  # how long the dynamic batcher waits to fill a batch
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


@dataclass(frozen=True)
class TritonOptions:
    """gsq-export's Triton options (--target triton)."""

    OWNER: ClassVar[str] = "Triton"
    USE_WITH: ClassVar[str] = "--target triton"

    backend: str = flag(
        "onnxruntime", "--triton-backend", "triton: what serves the models (default onnxruntime).",
        type=("choice", tuple(TRITON_BACKENDS)),
    )  # fmt: skip
    max_batch: int = flag(
        DEFAULT_MAX_BATCH, "--triton-max-batch",
        f"triton: max_batch_size of the dynamic batcher (default {DEFAULT_MAX_BATCH}).", type=("int_range", 1),
    )  # fmt: skip
    instance_kind: str | None = flag(
        None, "--triton-instance", "triton: instance kind (default: Triton's choice).", type=("choice", ("cpu", "gpu"))
    )
    model_prefix: str = "gsq"  # Triton model names: <prefix>_tokenize, <prefix>_detokenize

    def __post_init__(self) -> None:
        if self.backend not in TRITON_BACKENDS:
            raise ExportError(f"Triton backend {self.backend!r}: choose one of {', '.join(TRITON_BACKENDS)}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", self.model_prefix):
            raise ExportError(f"Triton model name prefix {self.model_prefix!r}: use letters, digits, '_' or '-'")
        if self.max_batch < 1:
            raise ExportError(f"Triton max batch {self.max_batch} must be >= 1")
        if self.instance_kind not in (None, "cpu", "gpu"):
            raise ExportError(f"Triton instance kind {self.instance_kind!r}: choose cpu or gpu")

    @property
    def source_target(self) -> str:
        return TRITON_BACKENDS[self.backend]["source_target"]


def export_triton(model: Any, out_dir: str | Path, triton: TritonOptions | None = None, **options: Any) -> dict:
    """Build and validate the onnx (or trt) graphs at the precision in a temporary folder, then write
    the repository. options: the fields of exporters.build.ExportOptions."""
    extra = tuple(options.pop("target_options", ()))
    return export(model, out_dir, "triton", ExportOptions(**options, target_options=(triton or TritonOptions(),) + extra))


def make_repository(
    graphs_dir: str | Path,
    out_dir: str | Path,
    *,
    triton_backend: str = "onnxruntime",
    max_batch: int = DEFAULT_MAX_BATCH,
    model_prefix: str = "gsq",
    instance_kind: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a Triton model repository serving the tokenize / detokenize graphs of an artifact."""
    triton = TritonOptions(triton_backend, max_batch, instance_kind, model_prefix)
    found = json.loads((Path(graphs_dir) / "manifest.json").read_text()) if (Path(graphs_dir) / "manifest.json").is_file() else {}
    plan = PrecisionPlan.parse(found.get("precision", "fp32"))  # the artifact's, as its manifest records it
    options = ExportOptions(precision=plan, overwrite=overwrite, progress=progress, target_options=(triton,))
    return convert(None, graphs_dir, out_dir, "triton", options)


def write_repository(step: BuildStep) -> dict[str, Any]:
    """Build step: the served graphs of the source artifact as a Triton model repository."""
    source, staging, log = step.source, step.staging, step.log
    assert source is not None
    triton = step.options.options_of(TritonOptions)
    backend = TRITON_BACKENDS[triton.backend]
    served = [name for name in SERVED_GRAPHS if name in source.graphs]
    if not served:
        raise ExportError(f"{source.directory}: has neither a tokenize nor a detokenize graph to serve")
    dynamic_batch = source.fixed_shape()[0] is None
    profile_batch = (source.manifest.get("tensorrt") or {}).get("profile", {}).get("max", [None])[0]
    if dynamic_batch and profile_batch is not None and triton.max_batch > profile_batch:
        raise ExportError(
            f"Triton max batch {triton.max_batch} exceeds the engines' profile (max batch {profile_batch}); "
            f"lower --triton-max-batch or raise --max-shape"
        )
    max_batch = triton.max_batch if dynamic_batch else 0
    manifest = source.manifest_copy()
    manifest["graphs"], manifest["files"], models = {}, {}, {}
    for name in served:
        entry = source.graphs[name]
        model_name = f"{triton.model_prefix}_{name}"
        version_dir = staging / model_name / MODEL_VERSION
        version_dir.mkdir(parents=True)
        model_file = f"{model_name}/{MODEL_VERSION}/{backend['model_file']}"
        shutil.copyfile(source.graph_path(name), staging / model_file)
        config_file = f"{model_name}/config.pbtxt"
        (staging / config_file).write_text(
            model_config(model_name, backend["platform"], entry, max_batch, triton.instance_kind)
        )
        manifest["graphs"][name] = {**entry, "file": model_file, "config": config_file, "triton_model": model_name}
        for file_name in (model_file, config_file):
            manifest["files"][file_name] = file_checksum(staging / file_name)
        models[model_name] = {"graph": name, "config": config_file, "version": MODEL_VERSION}
        log.done(f"wrote {model_name}/ ({backend['platform']}, max_batch_size {max_batch})")
    manifest["triton"] = {
        "backend": triton.backend,
        "platform": backend["platform"],
        "served_from": source.manifest["target"],
        "max_batch_size": max_batch,
        "dynamic_batching": dynamic_batch,
        "models": models,
    }
    manifest["target"] = "triton"
    # Triton serves the source's graphs as they are: the source's validation report stays with them.
    if manifest.get("validation"):
        manifest["validation"]["graphs"] = {
            name: result for name, result in manifest["validation"]["graphs"].items() if name in served
        }
    problems = repository_problems(staging, manifest)
    if problems:
        raise ExportError(f"the Triton repository came out inconsistent: {'; '.join(problems)}")
    return manifest


def _source(options: ExportOptions) -> SourceRequest:
    """The onnx (or trt) artifact of the served graphs at the precision, validated by its own runtime."""
    triton = options.options_of(TritonOptions)
    served = tuple(name for name in options.graphs if name in SERVED_GRAPHS) or SERVED_GRAPHS
    return SourceRequest(triton.source_target, options.precision, validate=True, graphs=served)


def _check(options: ExportOptions) -> None:
    """Precisions and options the chosen Triton backend has no build for."""
    triton = options.options_of(TritonOptions)
    source = load_target(triton.source_target)
    unsupported = options.precision.unsupported(source.precisions)
    if unsupported:
        raise ExportError(
            f"--precision {unsupported} is not available "
            f"for --target triton with --triton-backend {triton.backend} (choose {', '.join(source.precisions)})"
        )
    if triton.backend != "tensorrt" and any(isinstance(value, TensorRTOptions) for value in options.target_options):
        raise ExportError("TensorRT options (--min-shape, --workspace-mb, ...) need --target trt or --triton-backend tensorrt")
    if triton.backend == "tensorrt":
        require_tensorrt("--triton-backend tensorrt")


TARGET = Target(
    name="triton",
    precisions=("fp32", "fp16", "bf16", "int8"),
    build=write_repository,
    source=_source,
    runtime=None,  # Triton serves the source's graphs; their validation is the source's
    option_types=(TritonOptions, TensorRTOptions),
    check=_check,
)


def model_config(
    model_name: str, platform: str, entry: dict[str, Any], max_batch: int, instance_kind: str | None
) -> str:
    """config.pbtxt text of one served graph."""
    lines = [f'name: "{model_name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}"]
    for section, tensors in (("input", entry["inputs"]), ("output", entry["outputs"])):
        blocks = []
        for tensor in tensors:
            dims = tensor["shape"][1:] if max_batch > 0 else tensor["shape"]
            dims_text = ", ".join("-1" if isinstance(dim, str) else str(dim) for dim in dims)
            blocks.append(
                f'  {{\n    name: "{tensor["name"]}"\n    data_type: {TRITON_DTYPES[tensor["dtype"]]}\n'
                f"    dims: [ {dims_text} ]\n  }}"
            )
        lines.append(f"{section} [\n" + ",\n".join(blocks) + "\n]")
    if max_batch > 0:
        preferred = sorted({size for size in (max_batch // 2, max_batch) if size >= 1})
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(size) for size in preferred)} ]\n"
            f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n"
            "}"
        )
    if instance_kind is not None:
        lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: KIND_{instance_kind.upper()}\n  }}\n]")
    lines.append(f"version_policy: {{ specific: {{ versions: [ {MODEL_VERSION} ] }} }}")
    return "\n".join(lines) + "\n"


# -- reading configs back --------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse protobuf text format (the subset config.pbtxt uses) to dicts; repeated fields become lists."""
    tokens = [match for match in _tokenize(text)]
    position, fields = _parse_fields(tokens, 0, closing=None)
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r} in config text")
    return fields


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip():
                raise ValueError(f"cannot read config text at {text[position : position + 20]!r}")
            break
        position = match.end()
        if match.group(1) is None and match.group(0).strip():
            tokens.append(match.group(0).strip())
    return tokens


def _parse_fields(tokens: list[str], position: int, closing: str | None) -> tuple[int, dict[str, Any]]:
    fields: dict[str, Any] = {}
    while position < len(tokens) and tokens[position] != closing:
        name = tokens[position]
        position += 1
        if position < len(tokens) and tokens[position] == ":":
            position += 1
        position, value = _parse_value(tokens, position)
        if name in fields:
            previous = fields[name]
            fields[name] = (previous if isinstance(previous, list) else [previous]) + (
                value if isinstance(value, list) else [value]
            )
        else:
            fields[name] = value
        if position < len(tokens) and tokens[position] in (",", ";"):
            position += 1
    if closing is not None:
        if position >= len(tokens):
            raise ValueError(f"missing {closing!r} in config text")
        position += 1
    return position, fields


def _parse_value(tokens: list[str], position: int) -> tuple[int, Any]:
    if position >= len(tokens):
        raise ValueError("config text ends in the middle of a field")
    token = tokens[position]
    if token == "{":
        return _parse_fields(tokens, position + 1, "}")
    if token == "[":
        items, position = [], position + 1
        while position < len(tokens) and tokens[position] != "]":
            position, item = _parse_value(tokens, position)
            items.append(item)
            if position < len(tokens) and tokens[position] == ",":
                position += 1
        if position >= len(tokens):
            raise ValueError("missing ']' in config text")
        return position + 1, items
    if token.startswith('"'):
        return position + 1, token[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", token):
        return position + 1, int(token)
    if re.fullmatch(r"-?\d*\.\d+(e-?\d+)?", token):
        return position + 1, float(token)
    return position + 1, token  # enum names, true / false


def repository_problems(repository: Path, manifest: dict[str, Any]) -> list[str]:
    """Inconsistencies between a repository's configs, files and its manifest (empty when sound)."""
    problems = []
    triton = manifest["triton"]
    max_batch = triton["max_batch_size"]
    for name, entry in manifest["graphs"].items():
        model_name = entry["triton_model"]
        config_path = repository / entry["config"]
        if not config_path.is_file() or not (repository / entry["file"]).is_file():
            problems.append(f"{model_name}: config.pbtxt or the model file is missing")
            continue
        config = parse_pbtxt(config_path.read_text())
        if config.get("name") != model_name or config.get("platform") != triton["platform"]:
            problems.append(f"{model_name}: config names {config.get('name')!r} / {config.get('platform')!r}")
        if config.get("max_batch_size") != max_batch:
            problems.append(f"{model_name}: max_batch_size {config.get('max_batch_size')} != {max_batch}")
        if max_batch > 0 and "dynamic_batching" not in config:
            problems.append(f"{model_name}: no dynamic_batching")
        for section, tensors in (("input", entry["inputs"]), ("output", entry["outputs"])):
            declared = config.get(section, [])
            declared = declared if isinstance(declared, list) else [declared]
            if len(declared) != len(tensors):
                problems.append(f"{model_name}: {len(declared)} {section}s in config, {len(tensors)} in the graph")
                continue
            for spec, tensor in zip(declared, tensors):
                dims = tensor["shape"][1:] if max_batch > 0 else tensor["shape"]
                expected = [-1 if isinstance(dim, str) else int(dim) for dim in dims]
                if spec.get("name") != tensor["name"] or spec.get("data_type") != TRITON_DTYPES[tensor["dtype"]]:
                    problems.append(
                        f"{model_name}: {section} {spec.get('name')} {spec.get('data_type')} "
                        f"!= graph {tensor['name']} {tensor['dtype']}"
                    )
                if spec.get("dims") != expected:
                    problems.append(f"{model_name}: {section} {tensor['name']} dims {spec.get('dims')} != {expected}")
    return problems
