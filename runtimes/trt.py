"""TensorRT backend: runs the engines of a `gsq-export --target trt` artifact on a CUDA GPU, no torch.

    rt = TrtRuntime("out/model-trt")
    codes = rt.encode(images)        # float32 [B,3,H,W] in [-1, 1] -> int64 [B,h,w,G]
    images = rt.decode(codes)

Engines run through Polygraphy's TrtRunner (pip install 'gsq-deploy[trt]'): it sets the input shapes,
keeps device buffers in polygraphy.cuda arrays on its own stream and copies outputs to the host.
Engines are tied to the GPU model and TensorRT version that built them: the manifest's record of
both is compared with this machine (CUDA runtime queries through Polygraphy's libcudart wrapper)
before anything is deserialised. Token ids are int32 inside the engines and int64 at this
interface. Shapes must lie inside the engine's optimization profile; batches are split to fit.

CLI: `python -m runtimes.trt encode|decode --model DIR ...` (see runtimes.cli).
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, ClassVar

import numpy as np

from gsq_core.errors import InputError, first_line
from gsq_core.extras import install_hint

from .artifacts import Artifact, ArtifactError, BackendUnavailableError
from .base import ArtifactRuntime, open_artifact, run_in_chunks

# cudaDeviceAttr values (CUDA runtime API, stable since CUDA 5)
_COMPUTE_CAPABILITY_MAJOR, _COMPUTE_CAPABILITY_MINOR = 75, 76
_DEVICE_NAME_BYTES = 256  # cudaDeviceProp starts with char name[256]
_DEVICE_PROP_BYTES = 4096  # more than any CUDA version's cudaDeviceProp


def trt_install_hint() -> str:
    """How to get what engines need."""
    return f"{install_hint('trt')} on a machine with an NVIDIA GPU and its CUDA driver"


INSTALL_HINT = trt_install_hint()


def _cudart() -> Any | None:
    """The CUDA runtime library through Polygraphy's wrapper, or None where there is none."""
    try:
        from polygraphy import cuda
        from polygraphy.logger import G_LOGGER

        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):  # its "could not find libcudart" notes
            return cuda.wrapper().handle
    except Exception:  # noqa: BLE001 - no package, library or driver: "no GPU" either way
        return None


def cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 without a CUDA runtime or driver)."""
    cudart = _cudart()
    if cudart is None:
        return 0
    count = ctypes.c_int(0)
    return count.value if cudart.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0


def cuda_device_facts(device: int) -> tuple[str, str]:
    """(name, 'major.minor' compute capability) of a CUDA device."""
    cudart = _cudart()
    if cudart is None:
        raise BackendUnavailableError("no CUDA runtime library (libcudart) is loadable here")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    for value, attribute in ((major, _COMPUTE_CAPABILITY_MAJOR), (minor, _COMPUTE_CAPABILITY_MINOR)):
        if cudart.cudaDeviceGetAttribute(ctypes.byref(value), attribute, device) != 0:
            raise BackendUnavailableError(f"CUDA device {device}: cannot read its compute capability")
    properties = ctypes.create_string_buffer(_DEVICE_PROP_BYTES)
    query = getattr(cudart, "cudaGetDeviceProperties_v2", None) or cudart.cudaGetDeviceProperties
    name = "unknown GPU"
    if query(properties, device) == 0:
        name = properties.raw[:_DEVICE_NAME_BYTES].split(b"\0", 1)[0].decode(errors="replace")
    return name, f"{major.value}.{minor.value}"


def missing_requirements() -> list[str]:
    """What this machine lacks to run engines (empty when TensorRT, Polygraphy and a CUDA GPU are here)."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt Python package is not installed")
    if importlib.util.find_spec("polygraphy") is None:
        missing.append("the polygraphy Python package is not installed")
    elif cuda_device_count() == 0:
        missing.append("no CUDA GPU is visible (the CUDA runtime reports no device)")
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
    """A TensorRT artifact directory; one engine and Polygraphy runner per graph, loaded on first use."""

    backend = "trt"
    options: ClassVar[tuple[str, ...]] = ("device",)

    @classmethod
    def runs_on_gpu(cls, options: Mapping[str, Any]) -> bool:
        return True  # engines run on a CUDA GPU only

    @classmethod
    def device_name(cls, options: Mapping[str, Any], artifact: Artifact) -> str:
        return f"cuda:{int(options.get('device') or 0)} {(artifact.manifest.get('tensorrt') or {}).get('gpu')}"

    def __init__(self, model_dir: str | Path, device: int = 0):
        self.artifact = open_artifact(model_dir, "trt")
        missing = missing_requirements()
        if missing:
            raise BackendUnavailableError(
                f"the trt runtime needs TensorRT and a CUDA GPU: {'; '.join(missing)}. Install: {trt_install_hint()}"
            )
        import tensorrt

        count = cuda_device_count()
        if not 0 <= device < count:
            raise InputError(f"CUDA device {device} does not exist ({count} visible)")
        self.device = device
        self.device_label = self.device_name({"device": device}, self.artifact)
        self._select_device()
        name, capability = cuda_device_facts(device)
        check_engine_compatibility(
            self.artifact.manifest.get("tensorrt", {}), name, capability, tensorrt.__version__, str(model_dir)
        )
        self._runners: dict[str, Any] = {}

    # -- interface ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"tensorrt": self.artifact.manifest["tensorrt"].get("version")}

    def close(self) -> None:
        for runner in self._runners.values():
            runner.deactivate()
        self._runners.clear()

    # -- engines -----------------------------------------------------------------------------------
    def _select_device(self) -> None:
        cudart = _cudart()
        if cudart is None or cudart.cudaSetDevice(self.device) != 0:
            raise BackendUnavailableError(f"cannot select CUDA device {self.device}")

    def _runner(self, name: str) -> Any:
        """Polygraphy's TrtRunner over one graph's engine, activated once and reused."""
        if name not in self._runners:
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
            from polygraphy.exception import PolygraphyException
            from polygraphy.logger import G_LOGGER

            path = self.artifact.graph_path(name)
            try:
                with G_LOGGER.verbosity(G_LOGGER.ERROR):
                    runner = TrtRunner(EngineFromBytes(path.read_bytes()), name=name)
                    runner.activate()
            except PolygraphyException as error:
                raise ArtifactError(f"{path}: TensorRT cannot load this engine: {first_line(error)}") from None
            self._runners[name] = runner
        return self._runners[name]

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
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        if value.dtype == np.int64:  # token ids are int32 inside the engine (< 2**31 codes)
            value = value.astype(np.int32)
        runner = self._runner(name)
        self._select_device()
        try:
            with G_LOGGER.verbosity(G_LOGGER.ERROR):
                outputs = runner.infer({entry["inputs"][0]["name"]: np.ascontiguousarray(value)})
        except PolygraphyException as error:
            raise ArtifactError(f"{self.artifact.graph_path(name)}: TensorRT execution failed: {first_line(error)}") from None
        result = np.array(outputs[entry["outputs"][0]["name"]])  # a copy: the runner reuses its host buffers
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


MODEL_HELP = "Exported TensorRT model directory (gsq-export --target trt --out)."


def cli_options() -> list[Callable]:
    """This backend's own options, shared by `python -m runtimes.trt` and `gsq-tokenize --backend trt`."""
    import click

    return [
        click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index."),
    ]


def main() -> None:
    """`python -m runtimes.trt encode|decode ...`."""
    from .cli import run_cli

    run_cli("trt", model_help=MODEL_HELP, options=cli_options())


if __name__ == "__main__":
    main()
