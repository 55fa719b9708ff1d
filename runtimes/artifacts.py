"""Read an exported artifact directory: manifest.json, checksums, model facts. numpy-free, torch-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsq_core.errors import GSQError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gsq-deploy-artifact"
SUPPORTED_FORMAT_VERSION = 1
_REQUIRED_KEYS = (
    "target",
    "precision",
    "num_embed",
    "num_group",
    "downsample_factor",
    "token_layout",
    "graphs",
    "files",
)


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

    def graph_path(self, name: str) -> Path:
        """Path of a graph's file; ArtifactError when the export did not include that graph."""
        if name not in self.graphs:
            raise ArtifactError(f"{self.directory}: has no {name} graph (exported: {', '.join(self.graphs)})")
        return self.directory / self.graphs[name]["file"]

    def fixed_shape(self) -> tuple[int | None, tuple[int, int] | None]:
        """(batch, (H, W)) a static export was built for; (None, None) for a dynamic one."""
        shapes = self.manifest.get("shapes") or {}
        size = shapes.get("image_size")
        return shapes.get("batch"), (tuple(size) if size else None)  # type: ignore[return-value]


def load_artifact(directory: str | Path, verify_checksums: bool = True) -> Artifact:
    """Read and check manifest.json in directory (format, required facts, file sizes and sha256)."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"{directory}: no such model directory")
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: is a file; --model takes an exported model directory (gsq-export --out)")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST_NAME}, so not an exported model directory (run gsq-export)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path}: not a gsq-deploy manifest (format should be {MANIFEST_FORMAT!r})")
    version = manifest.get("format_version")
    if version != SUPPORTED_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: manifest format_version {version!r} is not supported "
            f"(this version reads {SUPPORTED_FORMAT_VERSION}); re-export the model with this version of gsq-export"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest lacks {', '.join(missing)}")
    artifact = Artifact(directory, manifest)
    for name, entry in artifact.graphs.items():
        if entry.get("file") not in manifest["files"]:
            raise ArtifactError(f"{path}: graph {name} names file {entry.get('file')!r} without a checksum")
    if verify_checksums:
        for file_name, expected in manifest["files"].items():
            verify_file(directory / file_name, expected)
    return artifact


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
