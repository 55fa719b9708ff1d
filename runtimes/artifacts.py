"""Read an exported artifact directory: manifest.json, checksums, model facts. numpy-free, torch-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from gsq_core.errors import GSQError

from .schema import AnyOf, Bool, Int, ListOf, MapOf, Nullable, Number, Obj, SchemaError, Str
from .schema import check as check_schema

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gsq-deploy-artifact"
SUPPORTED_FORMAT_VERSION = 1
# What a graph is built in (graphs.<name>.precision; the parts' `precisions`): the codebook lookup is
# fp32 in every build. OpenVINO graphs also carry the INFERENCE_PRECISION_HINT they are compiled with.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
OPENVINO_HINTS = ("f32", "f16", "bf16")
LOOKUP_GRAPHS = ("quantizer", "tokenize")  # the graphs that hold the codebook lookup


class ArtifactError(GSQError):
    """An artifact directory is missing, incomplete, modified or unusable by this runtime."""


class BackendUnavailableError(GSQError):
    """An optional inference engine or execution provider is not installed on this machine."""


@dataclass(frozen=True)
class Artifact:
    """A checked artifact directory and its manifest."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def num_embed(self) -> int:
        return int(self.manifest["num_embed"])

    @property
    def num_group(self) -> int:
        return int(self.manifest["num_group"])

    @property
    def downsample_factor(self) -> int:
        return int(self.manifest["downsample_factor"])

    @property
    def token_layout(self) -> str:
        return str(self.manifest["token_layout"])

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    @property
    def lookup_scratch_bytes_per_vector(self) -> int:
        """Bytes the exported lookup holds per looked-up vector (manifest["lookup"]
        ["scratch_bytes_per_vector"]: a row of the dense score block, or the window lookup's few
        candidates). Manifests written before that field (dense lookups only) give one fp32 row of
        the [vectors, code_block] score block."""
        lookup = self.manifest.get("lookup") or {}
        if "scratch_bytes_per_vector" in lookup:
            return int(lookup["scratch_bytes_per_vector"])
        return 4 * min(self.num_embed, int(lookup.get("code_block", self.num_embed)))

    def graph_path(self, name: str) -> Path:
        """Path of a graph's file; ArtifactError when the export did not include that graph."""
        if name not in self.graphs:
            raise ArtifactError(f"{self.directory}: has no {name} graph (exported: {', '.join(self.graphs)})")
        return contained_path(self.directory, self.graphs[name]["file"], f"graph {name}'s file")

    def fixed_shape(self) -> tuple[int | None, tuple[int, int] | None]:
        """(batch, (H, W)) a static export was built for; (None, None) for a dynamic one."""
        shapes = self.manifest.get("shapes") or {}
        size = shapes.get("image_size")
        return shapes.get("batch"), (tuple(size) if size else None)  # type: ignore[return-value]


MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is a few KB; anything this large is not one
MAX_DIRECTORY_ENTRIES = 10_000  # an artifact holds a few dozen files

_SHA256 = Str(pattern="[0-9a-f]{64}")
_TENSOR = Obj(
    required={"name": Str(), "dtype": Str(), "shape": ListOf(AnyOf((Int(min=0), Str()), "an integer or a name"), max_items=16)}
)
_GRAPH = Obj(
    required={"file": Str(max_length=1024)},
    optional={
        "weights": Str(max_length=1024),
        "inputs": ListOf(_TENSOR),
        "outputs": ListOf(_TENSOR),
        "precision": Str(choices=PRECISIONS),
        "lookup_precision": Str(choices=("fp32",)),  # on the graphs that hold the codebook lookup
        "inference_precision": Str(choices=OPENVINO_HINTS),  # OpenVINO: the hint this graph is compiled with
    },
)
# The fields runtimes read, by type. Writers may add fields (a newer exporter, another helper's lookup
# options): unknown fields are allowed, known ones must have their type.
MANIFEST_SCHEMA = Obj(
    required={
        "format": Str(),
        "format_version": Int(),
        "target": Str(),
        "precision": Str(),
        "num_embed": Int(min=1, max=2**31 - 1),
        "num_group": Int(min=1, max=2**16),
        "downsample_factor": Int(min=1, max=2**12),
        "token_layout": Str(choices=("BHWG", "BHW")),
        "graphs": MapOf(_GRAPH, min_items=1, max_items=64),
        "files": MapOf(Obj(required={"sha256": _SHA256, "size": Int(min=0)}), max_items=1024),
    },
    optional={
        "input_channels": Int(min=1, max=64),
        "group_dim": Int(min=1),
        "embed_dim": Int(min=1),
        "min_token_positions": Int(min=1, max=2**16),
        "config": Obj(),
        "lookup": Obj(
            optional={
                "code_block": Int(min=1),
                "code_blocks": Int(min=1),
                "bias": Bool(),
                "normalization": Str(),
                "method": Str(),  # "window" | "dense" today; informational
                "scratch_bytes_per_vector": Int(min=1, max=2**40),
                "window": Int(min=1),
                "cells": Int(min=1),
                "extra_codes": Int(min=0),
            }
        ),
        "shapes": Obj(
            optional={"dynamic": Bool(), "batch": Nullable(Int(min=1, max=2**20)), "image_size": Nullable(ListOf(Int(min=1, max=2**20), length=2))}
        ),
        "validation": Nullable(Obj(optional={"passed": Bool(), "failures": ListOf(Str())})),
        "source": Obj(optional={"checkpoint": Str(), "sha256": Nullable(_SHA256)}),
        "tensorrt": Obj(),
        # per part: {"encoder": ..., "quantizer": "fp32", "decoder": ...}; `precision` is its spec string
        "precisions": Obj(
            required={"encoder": Str(choices=PRECISIONS), "decoder": Str(choices=PRECISIONS)},
            optional={"quantizer": Str(choices=("fp32",))},
        ),
        "image_range": ListOf(Number(), length=2),
    },
)


def contained_path(directory: Path, name: Any, what: str) -> Path:
    """directory / name, refused (ArtifactError) unless name is a plain relative path whose real
    location, symlinks followed, is inside directory. Checked before anything is opened or hashed."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{directory}: {what} {name!r} is not a file name")
    pure = PurePosixPath(name)
    windows = PureWindowsPath(name)  # refused on every OS, so an artifact means the same everywhere
    if pure.is_absolute() or windows.drive or windows.root or ".." in pure.parts or ".." in windows.parts:
        raise ArtifactError(
            f"{directory}: {what} {name!r} points outside the artifact folder (absolute or '..'); refusing to open it"
        )
    root = directory.resolve()
    resolved = (root / pure).resolve()
    if resolved != root and root not in resolved.parents:
        raise ArtifactError(
            f"{directory}: {what} {name!r} is a symlink (or under one) that leads outside the artifact folder, "
            f"to {resolved}; refusing to open it"
        )
    return directory / pure


def load_artifact(directory: str | Path, verify_checksums: bool = True) -> Artifact:
    """Read and check manifest.json in directory: size, JSON, format, every field's type
    (MANIFEST_SCHEMA), every named file inside the folder, then file sizes and sha256."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"{directory}: no such model directory")
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: is a file; --model takes an exported model directory (gsq-export --out)")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST_NAME}, so not an exported model directory (run gsq-export)")
    path = contained_path(directory, MANIFEST_NAME, "its manifest")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {size:,} bytes, too large for a manifest (at most {MAX_MANIFEST_BYTES:,})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ArtifactError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path}: not a gsq-deploy manifest (format should be {MANIFEST_FORMAT!r})")
    version = manifest.get("format_version")
    if version != SUPPORTED_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: manifest format_version {version!r} is not supported "
            f"(this version reads {SUPPORTED_FORMAT_VERSION}); re-export the model with this version of gsq-export"
        )
    try:
        check_schema(manifest, MANIFEST_SCHEMA, "")
    except SchemaError as error:
        raise ArtifactError(f"{path}: {error}") from None
    for file_name in manifest["files"]:
        contained_path(directory, file_name, "listed file")
    for name, entry in manifest["graphs"].items():
        for key in ("file", "weights"):
            if key in entry:
                contained_path(directory, entry[key], f"graph {name}'s {key}")
                if entry[key] not in manifest["files"]:
                    raise ArtifactError(f"{path}: graph {name} names {key} {entry[key]!r} without a checksum")
    check_no_escaping_links(directory)
    if verify_checksums:
        for file_name, expected in manifest["files"].items():
            verify_file(directory / file_name, expected)
    return Artifact(directory, manifest)


def check_no_escaping_links(directory: Path) -> None:
    """ArtifactError when any entry of the folder is a symlink that leads outside it (a graph's
    external data or an engine's side file could be read through one without being listed)."""
    root = directory.resolve()
    for count, entry in enumerate(directory.rglob("*")):
        if count >= MAX_DIRECTORY_ENTRIES:
            raise ArtifactError(f"{directory}: holds more than {MAX_DIRECTORY_ENTRIES:,} entries; not an artifact folder")
        if entry.is_symlink():
            target = entry.resolve()
            if target != root and root not in target.parents:
                raise ArtifactError(
                    f"{entry}: a symlink that leads outside the artifact folder (to {target}); refusing the folder"
                )


def verify_file(path: Path, expected: dict[str, Any]) -> None:
    """Raise ArtifactError unless path exists with the manifest's size and sha256."""
    if not path.is_file():
        raise ArtifactError(f"{path}: listed in {MANIFEST_NAME} but missing")
    size = path.stat().st_size
    if size != expected.get("size"):
        raise ArtifactError(
            f"{path}: size {size} bytes differs from {MANIFEST_NAME} ({expected.get('size')}); the file was "
            "modified or truncated, re-export the model"
        )
    if file_sha256(path) != expected.get("sha256"):
        raise ArtifactError(
            f"{path}: sha256 checksum mismatch with {MANIFEST_NAME}; the file was modified, re-export the model"
        )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
