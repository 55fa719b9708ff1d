"""ModelInfo: what a runtime says about the model it runs, typed and frozen (no torch here).

Built in one place for each kind of model: `artifact_model_info` (an exported artifact directory,
from its manifest) and `checkpoint_model_info` (a checkpoint run eagerly). Runtimes, gsq-tokenize's
manifest, the export validation report and the benchmarks all read it; `to_dict()` is its JSON form.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .artifacts import Artifact, file_sha256


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model on one backend: what tokens it makes and where it runs.

    model_sha256 identifies the model (an artifact: its manifest's file checksums; a checkpoint: its
    file, IBQ YAML and weights choice); fixed_image_size is a static export's (H, W), None when any
    size runs; validated is None for a checkpoint (nothing exported to validate); settings holds
    the backend's own runtime settings (threads, providers, session config, precision hints, ...).
    """

    backend: str
    model: str
    model_sha256: str
    precision: str
    device: str
    num_embed: int
    num_group: int
    downsample_factor: int
    token_layout: str
    min_token_positions: int = 1
    fixed_image_size: tuple[int, int] | None = None
    graphs: tuple[str, ...] = ()
    graph_precisions: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    validated: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "graph_precisions", _frozen(self.graph_precisions))
        object.__setattr__(self, "settings", _frozen(self.settings))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists, mappings as dicts)."""
        result: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Mapping):
                value = json.loads(json.dumps(dict(value), default=str))
            elif isinstance(value, tuple):
                value = list(value)
            result[item.name] = value
        return result


def artifact_sha256(artifact: Artifact) -> str:
    """The identity of an exported model: sha256 over its manifest's file checksums."""
    return hashlib.sha256(json.dumps(artifact.manifest["files"], sort_keys=True).encode()).hexdigest()


def checkpoint_sha256(checkpoint: Path, config: str | Path | None, ema: bool) -> str:
    """The identity of a checkpoint run eagerly: its file, an IBQ checkpoint's YAML, the weights choice."""
    digest = hashlib.sha256(file_sha256(checkpoint).encode())
    if config:  # an IBQ Lightning checkpoint's YAML decides the architecture too
        digest.update(file_sha256(Path(config)).encode())
    digest.update(b"ema" if ema else b"raw")
    return digest.hexdigest()


def artifact_model_info(
    backend: str, artifact: Artifact, device: str, settings: Mapping[str, Any] | None = None
) -> ModelInfo:
    """ModelInfo of an exported artifact, from its manifest alone."""
    manifest = artifact.manifest
    validation = manifest.get("validation")
    return ModelInfo(
        backend=backend,
        model=str(artifact.directory),
        model_sha256=artifact_sha256(artifact),
        precision=str(manifest["precision"]),
        device=device,
        num_embed=artifact.num_embed,
        num_group=artifact.num_group,
        downsample_factor=artifact.downsample_factor,
        token_layout=artifact.token_layout,
        min_token_positions=int(manifest.get("min_token_positions", 1)),
        fixed_image_size=artifact.fixed_shape()[1],
        graphs=tuple(artifact.graphs),
        # each graph's precision (gsq-export --precision encoder=...,decoder=...; the lookup is fp32)
        graph_precisions={name: entry.get("precision", manifest["precision"]) for name, entry in artifact.graphs.items()},
        validated=validation is not None and bool(validation.get("passed", False)),
        settings=settings,
    )


def checkpoint_model_info(
    backend: str, model: str, checkpoint: Path, tokenizer: Any, device: str, config: str | Path | None, ema: bool
) -> ModelInfo:
    """ModelInfo of a checkpoint (`model` as the user named it, `checkpoint` its file) loaded as a
    GSQTokenizer on any device; nothing is run."""
    return ModelInfo(
        backend=backend,
        model=model,
        model_sha256=checkpoint_sha256(checkpoint, config, ema),
        precision="fp32",
        device=device,
        num_embed=int(tokenizer.num_embed),
        num_group=int(tokenizer.num_group),
        downsample_factor=int(tokenizer.downsample_factor),
        token_layout=str(tokenizer.quantizer.token_layout),
        min_token_positions=int(tokenizer.min_token_positions),
        settings={"config": str(config) if config else None, "ema": ema},
    )
