"""OpenVINO backend: runs an OpenVINO IR artifact directory (gsq-export --target openvino), no torch.

    rt = OpenVinoRuntime("out/model-ov", device="CPU", threads=4)
    codes = rt.encode(images)        # float32 [B,3,H,W] in [-1, 1] -> int64 [B,h,w,G]
    images = rt.decode(codes)

Each graph is compiled with the INFERENCE_PRECISION_HINT its manifest entry names
(graphs.<name>.inference_precision): bf16 for the parts exported in bf16 (gsq-export --precision
decoder=bf16), f32 for everything else, so fp32 stays fp32 on CPUs with AMX, which default to bf16
and flip tokens. fp16 / int8 artifacts hold fp16 weights / int8 QDQ layers with the lookup in fp32,
and run under the f32 hint. --inference-precision overrides the hint of the graphs without the
codebook lookup; the graphs with it (quantizer, tokenize) are compiled f32 always, and an artifact
whose manifest asks otherwise is refused.

CLI: `python -m runtimes.openvino encode|decode --model DIR ...` (see runtimes.cli).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from gsq_core.errors import InputError, first_line

from .artifacts import LOOKUP_GRAPHS, OPENVINO_HINTS, Artifact, ArtifactError, BackendUnavailableError
from .base import ArtifactRuntime, open_artifact, run_in_chunks

INFERENCE_PRECISIONS = OPENVINO_HINTS
INSTALL_HINT = "pip install 'gsq-deploy[openvino]' (or: pip install openvino)"


def import_openvino() -> Any:
    """The openvino module, imported without OpenVINO's usage telemetry (ImportError when absent).

    `import openvino` imports openvino.tools.ovc, which sends a telemetry event (unless CI=true or
    the user opted out): openvino_telemetry forks a process (multiprocessing) from a background
    thread to post it, and ov.convert_model sends more. A fork from another thread while the main
    thread is inside a multithreaded OpenBLAS call (numpy's float64 matmul in score_gaps, say) hangs
    that call for ever: OpenBLAS's fork handler shuts down the thread pool the call is waiting on.
    That was the gsq-export --target openvino hang of issue 11 (docs/testing.md). With
    openvino_telemetry marked absent, OpenVINO uses its own no-op stub, the path it takes when the
    package is not installed: no thread, no fork, nothing sent. Every import of openvino in
    gsq-deploy goes through here (tests/exporters/test_targets_openvino.py checks that an export forks nothing).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


# Compile properties every graph gets (benchmarks/runtime_options.py measured the choices; numbers in
# docs/benchmarks.md, "Runtime settings"): one stream tuned for the latency of one call, which is
# how the runtime is called (one batch at a time), and threads not pinned to cores: on a machine
# other processes also use, pinned threads wait for their core while another one is free (25% more
# wall-clock time per call, 20% more CPU time, measured on the shared 2-core machine).
COMPILE_CONFIG: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def compile_graph(
    path: Path, device: str, inference_precision: str, threads: int | None, config: Mapping[str, Any] | None = None
) -> Any:
    """An OpenVINO compiled model for one IR file with an explicit inference precision; `config`
    adds to or replaces COMPILE_CONFIG."""
    openvino = import_openvino()

    properties: dict[str, Any] = {**COMPILE_CONFIG, "INFERENCE_PRECISION_HINT": inference_precision}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = threads
    properties.update(config or {})
    return openvino.Core().compile_model(str(path), device, properties)


class OpenVinoRuntime(ArtifactRuntime):
    """An OpenVINO IR artifact directory; one compiled model per graph, compiled on first use.

    config: OpenVINO compile properties ({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, ...})
    that add to or replace COMPILE_CONFIG (the precision hint and thread count have their own arguments).
    """

    backend = "openvino"
    options: ClassVar[tuple[str, ...]] = ("device", "threads", "inference_precision", "config")

    @classmethod
    def runs_on_gpu(cls, options: Mapping[str, Any]) -> bool:
        return cls.device_name(options, None).upper().startswith("GPU")

    @classmethod
    def device_name(cls, options: Mapping[str, Any], artifact: Artifact | None) -> str:
        return str(options.get("device") or "CPU")

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        inference_precision: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        try:
            openvino = import_openvino()
        except ImportError:
            raise BackendUnavailableError(f"the openvino runtime needs the openvino package: {INSTALL_HINT}") from None
        self.artifact = open_artifact(model_dir, "openvino")
        available = openvino.Core().available_devices
        if device.split(".")[0] not in {name.split(".")[0] for name in available}:
            raise BackendUnavailableError(
                f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})"
            )
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise InputError(
                f"inference precision {inference_precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}"
            )
        if threads is not None and threads < 1:
            raise InputError(f"threads={threads} must be >= 1")
        if "INFERENCE_PRECISION_HINT" in (config or {}):  # per graph, never over the lookup: its own argument
            raise InputError("set the inference precision with inference_precision=, not in config")
        self.device = device
        self.device_label = self.device_name({"device": device}, self.artifact)
        self.threads = threads
        self.inference_precision = inference_precision
        self.config = dict(config or {})
        self.hints = {name: self._hint(name) for name in self.artifact.graphs}  # refuses a bf16 lookup first
        self._compiled: dict[str, Any] = {}

    def _hint(self, name: str) -> str:
        """The INFERENCE_PRECISION_HINT one graph is compiled with: its manifest entry's, or the
        override for a graph without the lookup; f32 for the lookup, refused if asked otherwise."""
        entry = self.artifact.graphs[name]
        recorded = entry.get("inference_precision", "f32")
        holds_lookup = "lookup_precision" in entry or name in LOOKUP_GRAPHS  # older manifests: by name
        if holds_lookup:
            if recorded != "f32":
                raise ArtifactError(
                    f"{self.artifact.directory}: graph {name} holds the codebook lookup, which must stay fp32, but its "
                    f"manifest asks for the {recorded} inference precision hint; re-export it with gsq-export"
                )
            return "f32"
        return self.inference_precision or recorded

    # -- interface ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {
            "inference_precision": next(iter(set(self.hints.values()))) if len(set(self.hints.values())) == 1 else "per graph",
            "inference_precisions": dict(self.hints),
            "threads": self.threads,
            "config": {key: str(value) for key, value in self.config.items()},
        }

    def close(self) -> None:
        self._compiled.clear()

    # -- compiled models ---------------------------------------------------------------------------
    def compiled(self, name: str) -> Any:
        """The compiled model of one graph, compiled once and reused."""
        if name not in self._compiled:
            path = self.artifact.graph_path(name)
            try:
                self._compiled[name] = compile_graph(path, self.device, self.hints[name], self.threads, self.config)
            except RuntimeError as error:
                raise ArtifactError(f"{path}: OpenVINO cannot compile it: {first_line(error)}") from None
        return self._compiled[name]

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        """Run a graph whole, or in a static export's fixed batch."""
        batch, _ = self.artifact.fixed_shape()
        run = lambda chunk: self._infer(name, chunk)  # noqa: E731
        if batch is None:
            return run(value)
        return run_in_chunks(run, value, batch, min_batch=batch)

    def _infer(self, name: str, value: np.ndarray) -> np.ndarray:
        compiled = self.compiled(name)
        try:
            result = compiled({compiled.input(0): value})[compiled.output(0)]
        except RuntimeError as error:
            raise ArtifactError(f"{self.artifact.graph_path(name)}: OpenVINO failed: {first_line(error)}") from None
        return np.array(result)  # a copy: OpenVINO reuses its output buffer on the next call


MODEL_HELP = "Exported OpenVINO model directory (gsq-export --target openvino --out)."


def cli_options() -> list[Callable]:
    """This backend's own options, shared by `python -m runtimes.openvino` and `gsq-tokenize --backend openvino`."""
    import click

    return [
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
            default=None,
            help="INFERENCE_PRECISION_HINT of the graphs without the lookup (default: each graph's, from the "
            "manifest; the lookup's graphs are f32 always).",
        ),
    ]


def main() -> None:
    """`python -m runtimes.openvino encode|decode ...`."""
    from .cli import run_cli

    run_cli("openvino", model_help=MODEL_HELP, options=cli_options())


if __name__ == "__main__":
    main()
