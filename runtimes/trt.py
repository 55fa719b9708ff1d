"""TensorRT backend: runs the engines of a `gsq-export --target trt` artifact on a CUDA GPU.

    rt = TrtRuntime("out/model-trt")
    codes = rt.encode(images)        # float32 [B,3,H,W] in [-1, 1] -> int64 [B,h,w,G]
    images = rt.decode(codes)

Device buffers are torch CUDA tensors (one stream, enqueue with execute_async_v3). Engines are tied
to the GPU model and TensorRT version that built them: the manifest's record of both is compared
with this machine before anything is deserialised. Token ids are int32 inside the engines and
int64 at this interface. Shapes must lie inside the engine's optimization profile.

CLI: `python -m runtimes.trt encode|decode --model DIR ...` (see runtimes.cli).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsq_core.errors import InputError

from .artifacts import ArtifactError, BackendUnavailableError
from .base import ArtifactRuntime, artifact_info, open_artifact, run_in_chunks

INSTALL_HINT = "pip install 'gsq-deploy[trt]' on a machine with an NVIDIA GPU and its CUDA driver"


def missing_requirements() -> list[str]:
    """What this machine lacks to run engines (empty when TensorRT, torch and a CUDA GPU are here)."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package is not installed")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    except ImportError:
        missing.append("torch is not installed (the trt runtime keeps device buffers in torch CUDA tensors)")
    return missing


def check_engine_compatibility(
    recorded: dict[str, Any], gpu: str, compute_capability: str, version: str, where: str
) -> None:
    """ArtifactError unless the engines were built for this GPU model and TensorRT version."""
    problems = []
    if recorded.get("compute_capability") != compute_capability or recorded.get("gpu") != gpu:
        problems.append(
            f"built for {recorded.get('gpu')} (compute capability {recorded.get('compute_capability')}), "
            f"this is {gpu} ({compute_capability})"
        )
    if recorded.get("version") != version:
        problems.append(f"built with TensorRT {recorded.get('version')}, this is TensorRT {version}")
    if problems:
        raise ArtifactError(
            f"{where}: engines cannot run here: {'; '.join(problems)}; "
            "rebuild with gsq-export --target trt on this machine"
        )


class TrtRuntime(ArtifactRuntime):
    """A TensorRT artifact directory; one engine and execution context per graph, loaded on first use."""

    backend = "trt"

    def __init__(self, model_dir: str | Path, device: int = 0):
        self.artifact = open_artifact(model_dir, "trt")
        manifest = self.artifact.manifest
        missing = missing_requirements()
        if missing:
            raise BackendUnavailableError(
                f"the trt runtime needs TensorRT and a CUDA GPU: {'; '.join(missing)}. Install: {INSTALL_HINT}"
            )
        import tensorrt
        import torch

        if not 0 <= device < torch.cuda.device_count():
            raise InputError(f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)")
        major, minor = torch.cuda.get_device_capability(device)
        check_engine_compatibility(
            manifest.get("tensorrt", {}),
            torch.cuda.get_device_name(device),
            f"{major}.{minor}",
            tensorrt.__version__,
            str(model_dir),
        )
        self._trt = tensorrt
        self._torch = torch
        self.device = device
        self._runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING))
        self._engines: dict[str, tuple[Any, Any]] = {}

    # -- interface ---------------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        manifest = self.artifact.manifest
        return {
            **artifact_info(self.backend, self.artifact),
            "device": f"cuda:{self.device} {manifest['tensorrt'].get('gpu')}",
            "tensorrt": manifest["tensorrt"].get("version"),
        }

    def close(self) -> None:
        self._engines.clear()

    # -- engines -----------------------------------------------------------------------------------
    def _engine(self, name: str) -> tuple[Any, Any]:
        if name not in self._engines:
            path = self.artifact.graph_path(name)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ArtifactError(f"{path}: TensorRT cannot deserialize this engine (see the TensorRT log)")
            self._engines[name] = (engine, engine.create_execution_context())
        return self._engines[name]

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        """Run a graph in chunks the engine's profile accepts: at most its max batch, short chunks
        filled up to its min batch (a static export's fixed batch)."""
        entry = self.artifact.graphs[name]
        profile = entry.get("profile") or {}
        low, high = profile.get("min"), profile.get("max")
        run = lambda chunk: self._run_chunk(name, entry, chunk)  # noqa: E731
        if low is None or high is None:
            return run(value)
        self._check_profile(name, low, high, value.shape)
        return run_in_chunks(run, value, high[0], min_batch=low[0])

    def _run_chunk(self, name: str, entry: dict[str, Any], value: np.ndarray) -> np.ndarray:
        torch = self._torch
        _, context = self._engine(name)
        input_name, output = entry["inputs"][0]["name"], entry["outputs"][0]
        if value.dtype == np.int64:  # token ids are int32 inside the engine (< 2**31 codes)
            value = value.astype(np.int32)
        with torch.cuda.device(self.device):
            device_input = torch.from_numpy(np.ascontiguousarray(value)).pin_memory().cuda(non_blocking=True)
            if not context.set_input_shape(input_name, tuple(device_input.shape)):
                raise InputError(f"input shape {list(value.shape)} is not accepted by the {name} engine")
            dtype = torch.int32 if output["dtype"] == "int32" else torch.float32
            device_output = torch.empty(tuple(context.get_tensor_shape(output["name"])), dtype=dtype, device="cuda")
            context.set_tensor_address(input_name, device_input.data_ptr())
            context.set_tensor_address(output["name"], device_output.data_ptr())
            stream = torch.cuda.current_stream()
            if not context.execute_async_v3(stream.cuda_stream):
                raise ArtifactError(f"{self.artifact.graph_path(name)}: TensorRT execution failed")
            result = device_output.cpu().numpy()  # synchronises the stream
        return result.astype(np.int64) if result.dtype == np.int32 else result

    @staticmethod
    def _check_profile(name: str, low: list[int], high: list[int], shape: tuple[int, ...]) -> None:
        """InputError unless every axis but the batch (which is chunked) lies in the profile."""
        inside = len(shape) == len(low) and all(lo <= size <= hi for lo, size, hi in zip(low[1:], shape[1:], high[1:]))
        if not inside:
            raise InputError(
                f"input shape {list(shape)} is outside the {name} engine's profile {low} .. {high} "
                "(batches are split to fit); re-export with wider --min-shape/--max-shape"
            )


def main() -> None:
    """`python -m runtimes.trt encode|decode ...`."""
    import click

    from .cli import run_cli

    run_cli(
        "trt",
        model_help="Exported TensorRT model directory (gsq-export --target trt --out).",
        options=[
            click.option(
                "--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index."
            )
        ],
    )


if __name__ == "__main__":
    main()
