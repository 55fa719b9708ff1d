"""The one interface every runtime implements (numpy in, numpy out; no torch here)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gsq_core.budgets import Direction, batch_limit, check_work
from gsq_core.errors import InputError
from gsq_core.images import check_value_range

from .artifacts import Artifact, ArtifactError, load_artifact
from .info import ModelInfo, artifact_model_info


class TokenizerRuntime(ABC):
    """A loaded tokenizer on some backend.

    images: float32 [B, 3, H, W] in [-1, 1] (uint8 / 127.5 - 1), H and W multiples of downsample_factor.
    codes:  int64 [B, h, w, G] ([B, h, w] when token_layout is "BHW", plain VQ).

    Each backend class declares what it needs, so that callers (gsq-tokenize's worker plan, the
    benchmarks) never ask which backend they hold: `options`, the keyword options its constructor
    takes; `torch_threads`, whether its CPU threads are torch's intra-op threads of the process
    (set by the caller) rather than a `threads` option; `concurrent_calls`, whether one loaded runtime
    may run encode / decode from several threads at once; `runs_on_gpu(options)`, whether it runs on a
    GPU with these options; `describe(model, **options)`, the ModelInfo of a model without running it.
    """

    backend: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    torch_threads: ClassVar[bool] = False
    concurrent_calls: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def runs_on_gpu(cls, options: Mapping[str, Any]) -> bool:
        """Whether this backend with these options runs on a GPU (and so needs one per worker)."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """InputError naming an option this backend does not take."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            takes = ", ".join(cls.options) or "none"
            raise InputError(f"the {cls.backend} backend has no option {unknown[0]!r} (its options: {takes})")

    @classmethod
    def describe(cls, model: str | Path, **options: Any) -> ModelInfo:
        """The ModelInfo of `model` with these options. A GPU configuration is described from the
        model's files (the artifact manifest, the checkpoint's config), since the caller, a
        cluster's driver say, may have no GPU; a CPU one is opened here, so a bad option or model
        fails now rather than in a worker."""
        cls.check_options(options)
        if cls.runs_on_gpu(options):
            return cls.describe_files(model, options)
        runtime = cls(model, **options)
        try:
            return runtime.info
        finally:
            runtime.close()

    @classmethod
    @abstractmethod
    def describe_files(cls, model: str | Path, options: Mapping[str, Any]) -> ModelInfo:
        """The ModelInfo read from the model's files, without opening a device."""

    @abstractmethod
    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images -> token ids."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Token ids -> images float32 [B, 3, H, W] (unclipped)."""

    def encode_latent(self, images: np.ndarray) -> np.ndarray:
        """Images -> latent before quantization [B, D, h, w] (for fidelity reports), where available."""
        raise NotImplementedError(f"the {self.backend} runtime does not expose the latent")

    @abstractmethod
    def work_limit(self, height: int, width: int, direction: Direction) -> int:
        """Most height x width images one encode / decode call takes within the memory budget
        (gsq_core.budgets); InputError when one alone is over it. Checked before any work."""

    @property
    @abstractmethod
    def info(self) -> ModelInfo:
        """What this runtime runs (runtimes.info.ModelInfo): token facts, model checksum, device, settings."""

    def close(self) -> None:
        """Release sessions / device memory (optional)."""


def check_images(images: np.ndarray, downsample_factor: int, channels: int = 3) -> np.ndarray:
    """float32 [B, C, H, W] with H, W positive multiples of the factor and finite values, else InputError."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != channels:
        raise InputError(f"images must have shape [B, {channels}, H, W], got {list(images.shape)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"images must be floating point in [-1, 1] (uint8 / 127.5 - 1), got dtype {images.dtype}")
    height, width = images.shape[2:]
    if height == 0 or width == 0 or height % downsample_factor or width % downsample_factor:
        raise InputError(
            f"image size {height}x{width} is not a positive multiple of the downsampling factor {downsample_factor}"
        )
    if images.size:
        check_value_range(float(images.min()), float(images.max()), lambda: bool(np.isfinite(images).all()))
    return np.ascontiguousarray(images, dtype=np.float32)


def check_codes(
    codes: np.ndarray, num_embed: int, num_group: int, token_layout: str, min_positions: int = 1
) -> np.ndarray:
    """int64 token ids of the layout's shape with every id in [0, V), else InputError.

    min_positions: the fewest token positions (h * w) the decoder decodes (manifest
    "min_token_positions"; 2 where adaptive group norm needs a variance over positions, as a 1x1
    grid would decode to NaN).
    """
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"token ids must be integers, got dtype {codes.dtype}")
    grouped = token_layout == "BHWG"
    if codes.ndim != (4 if grouped else 3) or (grouped and codes.shape[-1] != num_group):
        layout = f"[N, h, w, {num_group}]" if grouped else "[N, h, w]"
        raise InputError(f"token ids must have shape {layout} for this model, got {list(codes.shape)}")
    if codes.shape[1] == 0 or codes.shape[2] == 0:
        raise InputError(f"token grid {codes.shape[1]}x{codes.shape[2]} is empty")
    if codes.shape[1] * codes.shape[2] < min_positions:
        raise InputError(
            f"a {codes.shape[1]}x{codes.shape[2]} token grid cannot be decoded: this model's decoder needs at least "
            f"{min_positions} token positions"
        )
    if codes.size:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= num_embed:
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is outside [0, {num_embed}) (codebook size {num_embed})")
    return np.ascontiguousarray(codes, dtype=np.int64)


def check_artifact_images(artifact: Any, images: np.ndarray) -> np.ndarray:
    """check_images for an exported artifact, plus its fixed image size when it was exported static."""
    images = check_images(images, artifact.downsample_factor, int(artifact.manifest.get("input_channels", 3)))
    _, size = artifact.fixed_shape()
    if size is not None and tuple(images.shape[2:]) != size:
        raise InputError(
            f"image size {images.shape[2]}x{images.shape[3]} does not match this static export "
            f"({size[0]}x{size[1]}); resize the images (--resize {size[0]}x{size[1]}) or re-export with --dynamic"
        )
    return images


def check_artifact_codes(artifact: Any, codes: np.ndarray) -> np.ndarray:
    """check_codes for an exported artifact, plus its fixed token grid when it was exported static."""
    min_positions = int(artifact.manifest.get("min_token_positions", 1))
    codes = check_codes(codes, artifact.num_embed, artifact.num_group, artifact.token_layout, min_positions)
    _, size = artifact.fixed_shape()
    factor = artifact.downsample_factor
    if size is not None and (codes.shape[1] * factor, codes.shape[2] * factor) != size:
        raise InputError(
            f"token grid {codes.shape[1]}x{codes.shape[2]} does not match this static export "
            f"({size[0] // factor}x{size[1] // factor} for {size[0]}x{size[1]} images)"
        )
    return codes


def artifact_work_limit(artifact: Any, height: int, width: int, direction: Direction) -> int:
    """Most images of this size one call may take within the memory budget (gsq_core.budgets);
    InputError when one image alone is over it. Encode counts the exported lookup's scratch per
    token too (a whole code block per vector for the dense lookup, a few codes for the window one)."""
    per_token = artifact.num_group * artifact.lookup_scratch_bytes_per_vector if direction == "encode" else 0
    config = artifact.manifest.get("config") or {}
    check_work(config, height, width, direction, lookup_bytes_per_token=per_token)
    return batch_limit(config, height, width, direction, lookup_bytes_per_token=per_token)


def open_artifact(model_dir: str | Path, target: str) -> Artifact:
    """load_artifact, refused unless it was exported for `target` and did not fail validation."""
    artifact = load_artifact(model_dir)
    manifest = artifact.manifest
    if manifest["target"] != target:
        raise ArtifactError(
            f"{model_dir}: holds a {manifest['target']!r} export; the {target} runtime needs --target {target}"
        )
    validation = manifest.get("validation")
    if validation is not None and not validation.get("passed", False):
        reasons = "; ".join(validation.get("failures", [])) or "see manifest.json"
        raise ArtifactError(f"{model_dir}: this export failed validation against eager ({reasons}); not running it")
    return artifact


def run_in_chunks(
    run: Callable[[np.ndarray], np.ndarray], value: np.ndarray, max_batch: int, min_batch: int = 1
) -> np.ndarray:
    """run() over batch chunks of at most max_batch items. A chunk shorter than min_batch (a static
    export's fixed batch, an engine profile's minimum) is filled up by repeating its last item, and
    the filler's outputs are dropped."""
    if min_batch <= value.shape[0] <= max_batch:
        return run(value)
    outputs = []
    for start in range(0, value.shape[0], max_batch):
        chunk = value[start : start + max_batch]
        count = chunk.shape[0]
        if count < min_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], min_batch - count, axis=0)])
        outputs.append(run(chunk)[:count])
    return np.concatenate(outputs)


class ArtifactRuntime(TokenizerRuntime):
    """A runtime over an exported artifact directory (self.artifact): input checks and the choice of
    graphs are here; a backend runs one graph in run_graph."""

    artifact: Artifact

    device_label: str  # the device it runs on, as reports name it (set by the constructor from device_name)

    @classmethod
    def device_name(cls, options: Mapping[str, Any], artifact: Artifact) -> str:
        """The device these options run an artifact on, as reports name it."""
        return "cpu"

    def settings(self) -> dict[str, Any]:
        """This backend's runtime settings, for ModelInfo.settings."""
        return {}

    @property
    def info(self) -> ModelInfo:
        return artifact_model_info(self.backend, self.artifact, self.device_label, self.settings())

    @classmethod
    def describe_files(cls, model: str | Path, options: Mapping[str, Any]) -> ModelInfo:
        artifact = open_artifact(model, cls.backend)
        return artifact_model_info(cls.backend, artifact, cls.device_name(options, artifact))

    @abstractmethod
    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        """Run the named graph on a checked batch."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = check_artifact_images(self.artifact, images)
        limit = artifact_work_limit(self.artifact, images.shape[2], images.shape[3], "encode")
        return run_in_chunks(self._encode_checked, images, limit)

    def _encode_checked(self, images: np.ndarray) -> np.ndarray:
        graphs = self.artifact.graphs
        if "tokenize" in graphs:
            return self.run_graph("tokenize", images)
        if "encoder" in graphs and "quantizer" in graphs:
            return self.run_graph("quantizer", self.run_graph("encoder", images))
        raise self._missing("encode", "tokenize graph (nor encoder and quantizer graphs)", "tokenize")

    def encode_latent(self, images: np.ndarray) -> np.ndarray:
        if "encoder" not in self.artifact.graphs:
            raise self._missing("encode to latents", "encoder graph", "encoder")
        images = check_artifact_images(self.artifact, images)
        limit = artifact_work_limit(self.artifact, images.shape[2], images.shape[3], "encode")
        return run_in_chunks(lambda chunk: self.run_graph("encoder", chunk), images, limit)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = check_artifact_codes(self.artifact, codes)
        factor = self.artifact.downsample_factor
        limit = artifact_work_limit(self.artifact, codes.shape[1] * factor, codes.shape[2] * factor, "decode")
        for name in ("detokenize", "decoder"):
            if name in self.artifact.graphs:
                return run_in_chunks(lambda chunk: self.run_graph(name, chunk), codes, limit)
        raise self._missing("decode", "detokenize or decoder graph", "detokenize")

    def work_limit(self, height: int, width: int, direction: Direction) -> int:
        return artifact_work_limit(self.artifact, height, width, direction)

    def _missing(self, action: str, graphs: str, graph: str) -> ArtifactError:
        return ArtifactError(
            f"{self.artifact.directory}: cannot {action}: it has no {graphs} "
            f"(exported: {', '.join(self.artifact.graphs)}); re-export with --graphs {graph}"
        )
