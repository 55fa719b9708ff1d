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

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gsq_core.model import GSQTokenizer

from . import ExportError
from .manifest import file_checksum, write_manifest
from .onnx_precision import SourceArtifact
from .staging import StageLog, check_destination, install, raise_if_failed, staging_folder

TARGET = "triton"
TRITON_BACKENDS: dict[str, dict[str, str]] = {
    "onnxruntime": {"platform": "onnxruntime_onnx", "model_file": "model.onnx", "source_target": "onnx"},
    "tensorrt": {"platform": "tensorrt_plan", "model_file": "model.plan", "source_target": "trt"},
}
SERVED_GRAPHS = ("tokenize", "detokenize")
MODEL_VERSION = "1"
DEFAULT_MAX_BATCH = 8
QUEUE_DELAY_US = 2000  # how long the dynamic batcher waits to fill a batch
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def export_triton(
    model: GSQTokenizer,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    triton_backend: str = "onnxruntime",
    max_batch: int = DEFAULT_MAX_BATCH,
    model_prefix: str = "gsq",
    instance_kind: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **target_options: Any,
) -> dict:
    """Build the onnx (or trt) artifact at `precision` in a temporary folder, then make_repository."""
    if triton_backend not in TRITON_BACKENDS:
        raise ExportError(f"Triton backend {triton_backend!r}: choose one of {', '.join(TRITON_BACKENDS)}")
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.graphs-", dir=out_dir.parent) as work:
        graphs_dir = Path(work) / "graphs"
        graphs = target_options.pop("graphs", None) or list(SERVED_GRAPHS)
        graphs = [name for name in graphs if name in SERVED_GRAPHS] or list(SERVED_GRAPHS)
        if triton_backend == "tensorrt":
            from .tensorrt import export_tensorrt

            export_tensorrt(model, graphs_dir, precision=precision, graphs=graphs, progress=progress, **target_options)
        elif precision == "fp32":
            from .onnx import export_onnx

            target_options.pop("tolerances", None)  # fp32 ONNX validation has fixed tolerances
            export_onnx(model, graphs_dir, graphs=graphs, progress=progress, **target_options)
        else:
            from .onnx_precision import export_onnx_precision

            export_onnx_precision(
                model, graphs_dir, precision=precision, graphs=graphs, progress=progress, **target_options
            )
        return make_repository(
            graphs_dir,
            out_dir,
            triton_backend=triton_backend,
            max_batch=max_batch,
            model_prefix=model_prefix,
            instance_kind=instance_kind,
            overwrite=overwrite,
            progress=progress,
        )


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
    backend = TRITON_BACKENDS.get(triton_backend)
    if backend is None:
        raise ExportError(f"Triton backend {triton_backend!r}: choose one of {', '.join(TRITON_BACKENDS)}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", model_prefix):
        raise ExportError(f"Triton model name prefix {model_prefix!r}: use letters, digits, '_' or '-'")
    if max_batch < 1:
        raise ExportError(f"Triton max batch {max_batch} must be >= 1")
    if instance_kind not in (None, "cpu", "gpu"):
        raise ExportError(f"Triton instance kind {instance_kind!r}: choose cpu or gpu")
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    source = SourceArtifact.read(graphs_dir)
    if source.manifest["target"] != backend["source_target"]:
        raise ExportError(
            f"{graphs_dir}: the {triton_backend} backend serves {backend['source_target']} artifacts, "
            f"found {source.manifest['target']}"
        )
    served = [name for name in SERVED_GRAPHS if name in source.graphs]
    if not served:
        raise ExportError(f"{graphs_dir}: has neither a tokenize nor a detokenize graph to serve")
    dynamic_batch = source.fixed_shape()[0] is None
    profile_batch = (source.manifest.get("tensorrt") or {}).get("profile", {}).get("max", [None])[0]
    if dynamic_batch and profile_batch is not None and max_batch > profile_batch:
        raise ExportError(
            f"Triton max batch {max_batch} exceeds the engines' profile (max batch {profile_batch}); "
            f"lower --triton-max-batch or raise --max-shape"
        )
    log = StageLog(progress)
    with staging_folder(out_dir) as staging:
        manifest = dict(source.manifest)
        manifest["graphs"], manifest["files"], models = {}, {}, {}
        for name in served:
            entry = source.graphs[name]
            model_name = f"{model_prefix}_{name}"
            version_dir = staging / model_name / MODEL_VERSION
            version_dir.mkdir(parents=True)
            model_file = f"{model_name}/{MODEL_VERSION}/{backend['model_file']}"
            shutil.copyfile(source.graph_path(name), staging / model_file)
            config_file = f"{model_name}/config.pbtxt"
            config = model_config(
                model_name, backend["platform"], entry, max_batch if dynamic_batch else 0, instance_kind
            )
            (staging / config_file).write_text(config)
            manifest["graphs"][name] = {**entry, "file": model_file, "config": config_file, "triton_model": model_name}
            for file_name in (model_file, config_file):
                manifest["files"][file_name] = file_checksum(staging / file_name)
            models[model_name] = {"graph": name, "config": config_file, "version": MODEL_VERSION}
            log.done(f"wrote {model_name}/ ({backend['platform']}, max_batch_size {max_batch if dynamic_batch else 0})")
        manifest["triton"] = {
            "backend": triton_backend,
            "platform": backend["platform"],
            "served_from": source.manifest["target"],
            "max_batch_size": max_batch if dynamic_batch else 0,
            "dynamic_batching": dynamic_batch,
            "models": models,
        }
        manifest["target"] = TARGET
        problems = repository_problems(staging, manifest)
        if problems:
            raise ExportError(f"the Triton repository came out inconsistent: {'; '.join(problems)}")
        write_manifest(staging, manifest)
        install(staging, out_dir)
        log.done(f"wrote {out_dir}/manifest.json (tritonserver --model-repository {out_dir})")
    raise_if_failed(manifest)
    return manifest


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
