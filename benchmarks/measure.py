"""Shared measuring helpers: timing statistics, process memory, machine facts, atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def missing_package(what: str, *requirements: tuple[str, str]) -> str | None:
    """`error: ...` naming the pip extra for the first (module, extra) that is not installed, or None."""
    from gsq_core.extras import MissingPackageError, require

    for module, extra in requirements:
        try:
            require(module, extra, what)
        except MissingPackageError as error:
            return f"error: {error}"
    return None


def time_calls(function: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    """Median, p95, min and max in milliseconds, and the spread (max - min) / median in percent."""
    ms = sorted(1e3 * value for value in seconds)
    median = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "median_ms": median,
        "p95_ms": p95,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "spread_pct": 100.0 * (ms[-1] - ms[0]) / median if median > 0 else 0.0,
    }


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (0 where /proc is missing)."""
    kib = _proc_status_kib("VmRSS")
    return (kib or 0) / 1024.0


def peak_rss_mb() -> float:
    """Highest resident set size of this process so far (since the last reset_peak_rss), in MiB."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:  # no /proc (macOS): lifetime peak; ru_maxrss is bytes there, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0
    return kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    """The CPU model name, as the OS reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Facts that make numbers comparable: CPU, cores, memory, library versions, load at start."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = os.getloadavg()[0]
    total_kib = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    total_kib = int(line.split()[1])
    except OSError:
        pass
    info["memory_gib"] = round(total_kib / 1024**2, 1) if total_kib else None
    return info


def write_json(path: Path, data: Any, overwrite: bool) -> None:
    """Write JSON atomically (temporary file, then rename); refuse to replace a file without overwrite."""
    from gsq_core.checkpoint import atomic_write

    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def run_json_worker(module: str, payload: str, cwd: Path) -> dict[str, Any]:
    """`python -m module payload` in a fresh process; its last stdout line is the JSON result, or
    {"status": "error", "reason": ...} with the last stderr line when it failed."""
    command = [sys.executable, "-m", module, payload]
    completed = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "reason": f"worker exited with {completed.returncode}: {last}"}
    return json.loads(lines[-1])
