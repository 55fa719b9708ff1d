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

from gsq_core.console import raise_if_terminated, termination_unwinds
from gsq_core.outputs import OutputError, writable_folder

from . import ExportError, ExportValidationError
from .manifest import MANIFEST_NAME, write_manifest


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty out_dir without overwrite, any folder that is not an artifact, and
    a place that cannot be written (checked with a probe file, before any work)."""
    try:
        writable_folder(out_dir)
    except OutputError as error:
        raise ExportError(str(error)) from None
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


# staging folder -> whether its destination existed when the lock was taken (see install)
_DESTINATION_EXISTED: dict[Path, bool] = {}


@contextlib.contextmanager
def staging_folder(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh temporary folder next to out_dir (same file system, so the final move is a rename),
    under an exclusive lock on out_dir: a second export into the same out_dir fails at once instead of
    silently replacing the first. The destination is checked again under the lock; leftovers of killed
    exports are removed; the staging folder is removed on exit (also on SIGTERM / SIGHUP) unless
    install() moved it into place."""
    with termination_unwinds(), destination_lock(out_dir):
        check_destination(out_dir, overwrite)
        remove_leftovers(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an artifact folder is not
        _DESTINATION_EXISTED[staging] = out_dir.exists() and any(out_dir.iterdir())
        try:
            yield staging
        finally:
            _DESTINATION_EXISTED.pop(staging, None)
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


_HELD_LOCKS: set[Path] = set()  # lock files this process holds (destination_lock is re-entrant)


@contextlib.contextmanager
def destination_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive flock on `.<out_dir>.lock` beside out_dir, held while staging and installing (the
    CLI takes it before loading the model); the kernel releases it when the process dies, so a
    killed export never blocks the next one. Re-entrant within a process."""
    import fcntl

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = (out_dir.parent / f".{out_dir.name}.lock").resolve()
    if path in _HELD_LOCKS:
        yield
        return
    while True:
        handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise ExportError(
                f"{out_dir}: another export into this folder is running (it holds {path}); wait for it, "
                "or export somewhere else"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(handle)
    _HELD_LOCKS.add(path)
    try:
        yield
    finally:
        _HELD_LOCKS.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(handle)


def remove_leftovers(out_dir: Path) -> None:
    """Remove staging and old folders that killed exports (SIGKILL, power loss) left beside
    out_dir; only called under the destination lock, so none of them belongs to a running export."""
    for pattern in (".partial-", ".old-"):  # not .source-: this very export may be using one
        for leftover in out_dir.parent.glob(f".{out_dir.name}{pattern}*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)


def install(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to out_dir, replacing a previous artifact directory. Refused
    when out_dir appeared (non-empty) after the lock was taken: something else wrote it meanwhile."""
    raise_if_terminated()  # a SIGTERM whose exception was swallowed somewhere must not install
    existed = _DESTINATION_EXISTED.get(staging, True)
    if not existed and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: appeared while this export ran (another writer?); not replacing it")
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
