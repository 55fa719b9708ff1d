"""ONNX Runtime backend: runs an exported artifact directory without torch.

    rt = OnnxRuntime("out/model-onnx", provider="cpu", threads=4)
    codes = rt.encode(images)        # float32 [B,3,H,W] in [-1, 1] -> int64 [B,h,w,G]
    images = rt.decode(codes)

CLI: `python -m runtimes.onnx encode|decode --model DIR ...` (see runtimes.cli).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from gsq_core.errors import InputError, first_line

from .artifacts import ArtifactError, BackendUnavailableError
from .artifacts import Artifact
from .base import ArtifactRuntime, open_artifact, run_in_chunks

PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GPU_PROVIDERS = ("cuda", "tensorrt")


# The quantizer lookup holds some scratch per looked-up vector (manifest["lookup"]
# ["scratch_bytes_per_vector"]: a row of the dense [vectors, code block] score matrix, or the
# window lookup's few candidates); dynamic exports are run in batch chunks that keep it under this
# size (a single item larger than this still runs whole).
LOOKUP_SCRATCH_BYTES = 256 * 2**20


# Session config entries every session gets (benchmarks/runtime_options.py measured them; numbers in
# docs/benchmarks.md, "Runtime settings"). By default ONNX Runtime's intra-op threads spin (busy-wait)
# for work between operators and for a while after a run returns. An artifact runs two or more
# sessions (tokenize, detokenize, ...), each with its own pool, so alternating encode and decode on
# 2 threads shared the cores with the other session's still-spinning threads (60% more per call than
# the same calls in blocks), and on a busy machine spinning threads take cores from the threads doing
# the work. With spinning off, idle threads sleep: per call the process needs about 40% less CPU time,
# alternating costs what blocks cost, and a quiet machine loses nothing measurable.
# force_spinning_stop keeps alternation cheap for anyone who turns spinning back on
# (session_config={"session.intra_op.allow_spinning": "1"}).
SESSION_CONFIG: dict[str, str] = {
    "session.intra_op.allow_spinning": "0",
    "session.force_spinning_stop": "1",
}
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
# Where the CPU sessions' intermediate tensors live. "shared": one arena for every session of the
# process (ONNX Runtime's environment allocator), grown by what is asked for (not doubled), and no
# per-session memory pattern (a pre-planned block per input shape, held by each session): an artifact
# runs several sessions (tokenize, detokenize, encoder) whose peaks then no longer add up. Measured
# on the default model (encode + decode of 8 images at 256x256 in one process): peak RSS 1,371 MB
# with ONNX Runtime's defaults ("session"), 402 MB shared, against 844 MB for eager PyTorch.
MEMORY_MODES = ("shared", "session")
_SHARED_ARENA: list[bool] = []  # registered once per process


class OnnxRuntime(ArtifactRuntime):
    """An artifact directory run by ONNX Runtime; one session per graph, created on first use.

    session_config: ONNX Runtime session config entries ("session.intra_op.allow_spinning": "0", ...)
    that replace or add to SESSION_CONFIG; graph_optimization: ORT's graph optimisation level;
    memory: "shared" (one CPU arena for all sessions, see MEMORY_MODES) or "session" (ORT's defaults).
    """

    backend = "onnx"
    options: ClassVar[tuple[str, ...]] = ("provider", "threads", "session_config", "graph_optimization", "memory")
    # InferenceSession.run is thread-safe (ONNX Runtime's threading docs): two single-thread calls at
    # once tokenize 1.07x faster than one two-thread call on 2 cores (default model, batch 32, 256 px)
    concurrent_calls = True

    @classmethod
    def runs_on_gpu(cls, options: Mapping[str, Any]) -> bool:
        return str(options.get("provider") or "cpu").lower() in GPU_PROVIDERS

    @classmethod
    def device_name(cls, options: Mapping[str, Any], artifact: Artifact) -> str:
        return str(options.get("provider") or "cpu")

    def __init__(
        self,
        model_dir: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        session_config: Mapping[str, str] | None = None,
        graph_optimization: str = "all",
        memory: str = "shared",
    ):
        import onnxruntime

        self._ort = onnxruntime
        self.artifact = open_artifact(model_dir, "onnx")
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[provider][0]
        available = onnxruntime.get_available_providers()
        if wanted not in available:
            raise BackendUnavailableError(
                f"provider {provider!r} ({wanted}) is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt or use --provider cpu"
            )
        if threads is not None and threads < 1:
            raise InputError(f"threads={threads} must be >= 1")
        if graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise InputError(
                f"graph optimisation {graph_optimization!r}: choose one of {', '.join(GRAPH_OPTIMIZATIONS)}"
            )
        if memory not in MEMORY_MODES:
            raise InputError(f"memory mode {memory!r}: choose one of {', '.join(MEMORY_MODES)}")
        self.provider = provider
        self.device_label = self.device_name({"provider": provider}, self.artifact)
        self.threads = threads
        self.memory = memory if provider == "cpu" else "session"  # the shared arena is a CPU one
        self.session_config = {**SESSION_CONFIG, **{str(k): str(v) for k, v in (session_config or {}).items()}}
        self.graph_optimization = graph_optimization
        self._providers = [name for name in PROVIDERS[provider] if name in available]
        self._sessions: dict[str, Any] = {}
        self._session_lock = threading.Lock()  # concurrent callers create each session once

    # -- interface ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {
            "providers": self._providers,
            "threads": self.threads,
            "graph_optimization": self.graph_optimization,
            "memory": self.memory,
            "session_config": dict(self.session_config),
        }

    def close(self) -> None:
        self._sessions.clear()

    # -- sessions ----------------------------------------------------------------------------------
    def session(self, name: str) -> Any:
        """The ONNX Runtime session of one graph, created once (under a lock: concurrent callers) and reused."""
        with self._session_lock:
            if name not in self._sessions:
                self._sessions[name] = self._create_session(name)
            return self._sessions[name]

    def _create_session(self, name: str) -> Any:
        """A new ONNX Runtime session of one graph with this runtime's settings."""
        path = self.artifact.graph_path(name)
        options = self._ort.SessionOptions()
        levels = self._ort.GraphOptimizationLevel
        options.graph_optimization_level = {
            "disable": levels.ORT_DISABLE_ALL,
            "basic": levels.ORT_ENABLE_BASIC,
            "extended": levels.ORT_ENABLE_EXTENDED,
            "all": levels.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        # Run nodes in the graph's order: by default ORT starts every code block's MatMul of the
        # dense lookup before reducing any, so several [vectors, code block] score matrices live
        # at once (IBQ, V = 262,144, D = 256, 1,024 vectors: +1.6 GB instead of +0.54 GB; same speed).
        options.execution_order = self._ort.ExecutionOrder.PRIORITY_BASED
        options.log_severity_level = 3
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        if self.memory == "shared":
            _register_shared_cpu_arena(self._ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
            options.enable_mem_pattern = False
        try:
            return self._ort.InferenceSession(str(path), options, providers=self._providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{path}: onnxruntime cannot load it: {first_line(error)}") from None

    def _run(self, name: str, value: np.ndarray) -> np.ndarray:
        session = self.session(name)
        input_name = session.get_inputs()[0].name
        try:
            if self.provider == "cpu":
                return session.run(None, {input_name: value})[0]
            # GPU providers: bind the input once; the output stays on the device until one copy back.
            binding = session.io_binding()
            binding.bind_cpu_input(input_name, value)
            binding.bind_output(session.get_outputs()[0].name, "cuda")
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        except Exception as error:  # onnxruntime's own error types; report them in one line
            raise ArtifactError(f"{self.artifact.graph_path(name)}: onnxruntime failed: {first_line(error)}") from None

    def run_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        """Run a graph in batch chunks: a static export's fixed batch, or, for a dynamic export,
        chunks small enough that the lookup's scratch stays within LOOKUP_SCRATCH_BYTES."""
        batch, _ = self.artifact.fixed_shape()
        run = lambda chunk: self._run(name, chunk)  # noqa: E731
        if batch is not None:
            return run_in_chunks(run, value, batch, min_batch=batch)
        return run_in_chunks(run, value, self._lookup_batch_limit(name, value))

    def _lookup_batch_limit(self, name: str, value: np.ndarray) -> int:
        """Largest batch whose lookup scratch (vectors x scratch per vector) fits LOOKUP_SCRATCH_BYTES."""
        if name not in ("quantizer", "tokenize"):
            return max(1, value.shape[0])
        artifact = self.artifact
        factor = artifact.downsample_factor if name == "tokenize" else 1
        positions = (value.shape[2] // factor) * (value.shape[3] // factor)
        bytes_per_item = positions * artifact.num_group * artifact.lookup_scratch_bytes_per_vector
        return max(1, LOOKUP_SCRATCH_BYTES // max(1, bytes_per_item))


def _register_shared_cpu_arena(onnxruntime: Any) -> None:
    """Register (once per process) the environment's CPU arena that "shared" sessions allocate from."""
    if _SHARED_ARENA:
        return
    memory_info = onnxruntime.OrtMemoryInfo(
        "Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, onnxruntime.OrtMemType.DEFAULT
    )
    # max_mem 0 (no limit), extend strategy 1 (kSameAsRequested), default chunk and dead-bytes sizes
    arena = onnxruntime.OrtArenaCfg(0, 1, -1, -1)
    try:
        onnxruntime.create_and_register_allocator(memory_info, arena)
    except Exception:  # noqa: BLE001 - already registered in this process (by another user of ORT): use it
        pass
    _SHARED_ARENA.append(True)


MODEL_HELP = "Exported model directory (gsq-export --out)."


def cli_options() -> list[Callable]:
    """This backend's own options, shared by `python -m runtimes.onnx` and `gsq-tokenize --backend onnx`."""
    import click

    return [
        click.option(
            "--provider",
            type=click.Choice(sorted(PROVIDERS)),
            default="cpu",
            show_default=True,
            help="ONNX Runtime execution provider.",
        ),
        click.option(
            "--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: ORT's choice)."
        ),
    ]


def main() -> None:
    """`python -m runtimes.onnx encode|decode ...`."""
    from .cli import run_cli

    run_cli("onnx", model_help=MODEL_HELP, options=cli_options())


if __name__ == "__main__":
    main()
