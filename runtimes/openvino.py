"""OpenVINO backend: runs an OpenVINO IR artifact directory (gsq-export --target openvino), no torch.

    rt = OpenVinoRuntime("out/model-ov", device="CPU", threads=4)
    codes = rt.encode(images)        # float32 [B,3,H,W] in [-1, 1] -> int64 [B,h,w,G]
    images = rt.decode(codes)

fp32 stays fp32: every graph is compiled with INFERENCE_PRECISION_HINT=f32 unless --inference-precision
says otherwise (CPUs with AMX default to bf16, which flips tokens). fp16 / int8 artifacts hold
fp16 weights / int8 QDQ layers with the lookup in fp32, and also run under the f32 hint.

CLI: `python -m runtimes.openvino encode|decode --model DIR ...` (see runtimes.cli).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.errors import InputError

from .artifacts import ArtifactError, BackendUnavailableError, load_artifact
from .base import TokenizerRuntime, artifact_info, check_artifact_codes, check_artifact_images

INFERENCE_PRECISIONS = ("f32", "f16", "bf16")
INSTALL_HINT = "pip install 'gsq-deploy[openvino]' (or: pip install openvino)"


def compile_graph(path: Path, device: str, inference_precision: str, threads: int | None) -> Any:
    """An OpenVINO compiled model for one IR file with an explicit inference precision."""
    import openvino

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return openvino.Core().compile_model(str(path), device, config)


class OpenVinoRuntime(TokenizerRuntime):
    """An OpenVINO IR artifact directory; one compiled model per graph, compiled on first use."""

    backend = "openvino"

    def __init__(
        self, model_dir: str | Path, device: str = "CPU", threads: int | None = None, inference_precision: str = "f32"
    ):
        try:
            import openvino
        except ImportError:
            raise BackendUnavailableError(f"the openvino runtime needs the openvino package: {INSTALL_HINT}") from None
        self.artifact = load_artifact(model_dir)
        manifest = self.artifact.manifest
        if manifest["target"] != "openvino":
            raise ArtifactError(
                f"{model_dir}: holds a {manifest['target']!r} export; the openvino runtime needs --target openvino"
            )
        validation = manifest.get("validation")
        if validation is not None and not validation.get("passed", False):
            reasons = "; ".join(validation.get("failures", [])) or "see manifest.json"
            raise ArtifactError(f"{model_dir}: this export failed validation against eager ({reasons}); not running it")
        available = openvino.Core().available_devices
        if device.split(".")[0] not in {name.split(".")[0] for name in available}:
            raise BackendUnavailableError(
                f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})"
            )
        if inference_precision not in INFERENCE_PRECISIONS:
            raise InputError(
                f"inference precision {inference_precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}"
            )
        if threads is not None and threads < 1:
            raise InputError(f"threads={threads} must be >= 1")
        self.device = device
        self.threads = threads
        self.inference_precision = inference_precision
        self._compiled: dict[str, Any] = {}

    # -- interface ---------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> np.ndarray:
        images = check_artifact_images(self.artifact, images)
        if "tokenize" in self.artifact.graphs:
            return self._run("tokenize", images)
        return self._run("quantizer", self._run("encoder", images))

    def encode_latent(self, images: np.ndarray) -> np.ndarray:
        return self._run("encoder", check_artifact_images(self.artifact, images))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        artifact = self.artifact
        codes = check_artifact_codes(artifact, codes)
        return self._run("detokenize" if "detokenize" in artifact.graphs else "decoder", codes)

    @property
    def info(self) -> dict[str, Any]:
        return {
            **artifact_info(self.backend, self.artifact),
            "inference_precision": self.inference_precision,
            "device": self.device,
            "threads": self.threads,
        }

    def close(self) -> None:
        self._compiled.clear()

    # -- compiled models ---------------------------------------------------------------------------
    def compiled(self, name: str) -> Any:
        """The compiled model of one graph, compiled once and reused."""
        if name not in self._compiled:
            path = self.artifact.graph_path(name)
            try:
                self._compiled[name] = compile_graph(path, self.device, self.inference_precision, self.threads)
            except RuntimeError as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ArtifactError(f"{path}: OpenVINO cannot compile it: {first_line}") from None
        return self._compiled[name]

    def _run(self, name: str, value: np.ndarray) -> np.ndarray:
        compiled = self.compiled(name)
        batch, _ = self.artifact.fixed_shape()
        chunks = [value] if batch is None else [value[i : i + batch] for i in range(0, value.shape[0], batch)]
        outputs = []
        for chunk in chunks:
            count = chunk.shape[0]
            if batch is not None and count < batch:  # a static export's fixed batch: repeat the last item
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
            try:
                result = compiled({compiled.input(0): chunk})[compiled.output(0)]
            except RuntimeError as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ArtifactError(f"{self.artifact.graph_path(name)}: OpenVINO failed: {first_line}") from None
            outputs.append(np.array(result[:count]))
        return np.concatenate(outputs)


def main() -> None:
    """`python -m runtimes.openvino encode|decode ...`."""
    import click

    from .cli import run_cli

    run_cli(
        "openvino",
        model_help="Exported OpenVINO model directory (gsq-export --target openvino --out).",
        options=[
            click.option("--device", default="CPU", show_default=True, help="OpenVINO device (CPU, GPU, ...)."),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                default=None,
                help="Inference threads (default: OpenVINO's choice).",
            ),
            click.option(
                "--inference-precision",
                type=click.Choice(INFERENCE_PRECISIONS),
                default="f32",
                show_default=True,
                help="INFERENCE_PRECISION_HINT; f32 keeps fp32 artifacts exact on bf16-capable CPUs.",
            ),
        ],
    )


if __name__ == "__main__":
    main()
