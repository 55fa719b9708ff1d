"""Artifact directories are built beside their destination and moved into place when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import ExportError, ExportValidationError
from .manifest import MANIFEST_NAME, write_manifest


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty out_dir without overwrite, and any folder that is not an artifact."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory")
    entries = list(out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ExportError(f"{out_dir}: already exists and is not empty; pass --overwrite to replace it")
    if not (out_dir / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{out_dir}: holds files but no {MANIFEST_NAME}, so it is not an artifact directory; "
            "refusing to replace it even with --overwrite (choose a new or empty folder)"
        )


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary folder next to out_dir (same file system, so the final move is a rename);
    removed on exit unless install() moved it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an artifact folder is not
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def install(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to out_dir, replacing a previous artifact directory."""
    previous = None
    if out_dir.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(previous / out_dir.name)
    staging.rename(out_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def install_artifact(staging: Path, out_dir: Path, manifest: dict, log: "StageLog") -> None:
    """Write manifest.json into the staging folder and move the finished artifact to out_dir."""
    write_manifest(staging, manifest)
    install(staging, out_dir)
    log.done(f"wrote {out_dir}/manifest.json")


def raise_if_failed(manifest: dict) -> None:
    """ExportValidationError when the manifest's validation failed (after the artifact is written)."""
    validation = manifest.get("validation")
    if validation is not None and not validation["passed"]:
        raise ExportValidationError("validation failed: " + "; ".join(validation["failures"]), manifest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StageLog:
    """One progress line per stage on stderr, with the stage's duration."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._start = time.perf_counter()

    def start(self) -> None:
        self._start = time.perf_counter()

    def done(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self._start
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)
        self._start = time.perf_counter()
