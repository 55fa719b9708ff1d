"""Hostile inputs, generated (no large committed files), and the CLI contract they are held to.

Every CLI answers a hostile input with exactly one `error:` line on stderr and a non-zero exit, no
traceback, peak memory under PEAK_LIMIT_BYTES, and nothing written outside (or half-written inside)
its output.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests import conftest
import numpy as np
from PIL import Image

from gsq_core.prepare import sample_photo

REPO = Path(__file__).resolve().parents[1]
PEAK_LIMIT_BYTES = 4 * 10**9  # the acceptance bar: inputs under 10 MB never take a CLI past 4 GB


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int  # the child's peak resident memory


def run_cli(args: list[str], timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = REPO) -> CliResult:
    """Run `python ARGS...` as a child process and measure its peak RSS (os.wait4's rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdout=out, stderr=err, env={**os.environ, **(env or {})}
        )
        try:
            _, status, usage = _wait4(process.pid, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            os.waitpid(process.pid, 0)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return CliResult(process.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024)


def _wait4(pid: int, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while True:
        found, status, usage = os.wait4(pid, os.WNOHANG)
        if found:
            return found, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        time.sleep(0.02)


def assert_one_line_error(result: CliResult, *fragments: str) -> str:
    """conftest.assert_one_line_error (one `error:` line, no traceback), and the child's peak under 4 GB."""
    line = conftest.assert_one_line_error(result, *fragments)
    assert result.peak_bytes < PEAK_LIMIT_BYTES, f"peak RSS {result.peak_bytes / 1e9:.1f} GB"
    return line


def files_under(folder: Path) -> set[str]:
    """Every file and folder under folder (relative paths), to prove nothing else was written."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- images ----------------------------------------------------------------------------------------------
def photo(height: int = 64, width: int = 64) -> np.ndarray:
    """A real photo crop (scikit-image's astronaut), uint8 [H, W, 3]."""
    return np.ascontiguousarray(sample_photo("astronaut")[100 : 100 + height, 180 : 180 + width])


def grey_photo(height: int = 64, width: int = 64) -> np.ndarray:
    """A real greyscale photo crop (scikit-image's camera), uint8 [H, W]."""
    return np.ascontiguousarray(sample_photo("camera")[150 : 150 + height, 200 : 200 + width, 0])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    )


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def blank_png(path: Path, height: int, width: int) -> Path:
    """A valid, highly compressible height x width RGB PNG (8000 x 8000 is 186 KB)."""
    return save(path, np.zeros((height, width, 3), np.uint8))
