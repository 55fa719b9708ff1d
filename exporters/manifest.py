"""manifest.json of an artifact directory: what is inside, shapes, precision, checksums, validation."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The format is defined where it is read (runtimes.artifacts), so writer and reader cannot drift apart.
from gsq_deploy.runtimes.artifacts import MANIFEST_FORMAT, MANIFEST_NAME, file_sha256
from gsq_deploy.runtimes.artifacts import SUPPORTED_FORMAT_VERSION as MANIFEST_FORMAT_VERSION

if TYPE_CHECKING:
    from gsq_core.model import GSQTokenizer


def file_checksum(path: str | Path) -> dict[str, Any]:
    """{'sha256': hex digest, 'size': bytes} of a file."""
    return {"sha256": file_sha256(Path(path)), "size": os.path.getsize(path)}


def model_facts(model: GSQTokenizer) -> dict[str, Any]:
    """Model facts every runtime needs without loading the checkpoint."""
    from .graphs import lookup_bias

    quantizer = model.quantizer
    return {
        "family": model.family,
        "config": model.config.to_dict(),
        "num_embed": model.num_embed,
        "num_group": model.num_group,
        "group_dim": quantizer.group_dim,
        "embed_dim": model.config.embedding_dim,
        "input_channels": model.config.input_channels,
        "downsample_factor": model.downsample_factor,
        "token_layout": quantizer.token_layout,
        # The decoder's smallest token grid, h * w (2 where adaptive group norm needs a variance).
        "min_token_positions": model.min_token_positions,
        "lookup": {
            "normalization": quantizer.lookup_normalization,
            # score = normalize(x) . c (+ bias -|c|^2/2 when "bias"), argmax over codes.
            "bias": lookup_bias(model) is not None,
            "ties": "lowest index",
        },
        "image_range": [-1.0, 1.0],
    }


def build_manifest(
    model: GSQTokenizer,
    *,
    target: str,
    precision: str,
    exporter_version: str,
    graphs: dict[str, dict[str, Any]],
    artifact_dir: Path,
    shapes: dict[str, Any],
    source: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest; checksums are taken of every graph file now in artifact_dir."""
    import onnx
    import torch

    files = {entry["file"]: file_checksum(artifact_dir / entry["file"]) for entry in graphs.values()}
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "exporter_version": exporter_version,
        "target": target,
        "precision": precision,
        **model_facts(model),
        "shapes": shapes,
        "graphs": graphs,
        "files": files,
        "source": source or {},
        "tools": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
        "validation": validation,
    }


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically (tmp file + rename)."""
    path = Path(artifact_dir) / MANIFEST_NAME
    handle, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(manifest, out, indent=2, sort_keys=False, allow_nan=False)
            out.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
