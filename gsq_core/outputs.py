"""Checks every writer makes before it loads a model or does any work: the outputs can be written,
do not exist yet (without --overwrite), are not inputs, and do not collide with each other."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import GSQError


class OutputError(GSQError):
    """An output cannot be written where it was asked for (not writable, a folder, an input...)."""


def writable_folder(folder: str | Path, label: str | Path | None = None) -> Path:
    """The nearest existing folder at or above `folder`, after proving a file can be created in it
    (a probe file, removed at once); OutputError naming `label` (default: the folder) otherwise.
    Creates nothing else."""
    folder = Path(folder)
    label = folder if label is None else label
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{label}: cannot be created: {probe_dir} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".gsq-write-probe-"):
            pass
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason += " (read-only or not yours)"
        raise OutputError(f"{label}: cannot write there: creating a file in {probe_dir} fails ({reason})") from None
    return probe_dir


def check_output_file(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output file that is a folder, exists (without overwrite), is one of
    the inputs, or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is an existing folder; give a file name for this output")
    _refuse_inputs([path], inputs)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it")
    writable_folder(path.parent, label=path)
    return path


def check_output_files(
    folder: str | Path,
    targets: Iterable[Path],
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    made_from: Sequence[str | Path] | None = None,
) -> list[Path]:
    """check_output_file for a set of files in one folder: also refuses two outputs with one name.

    made_from: what each target is made from (its input), to name both in a collision."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    targets = list(targets)
    seen: dict[Path, int] = {}
    for index, target in enumerate(targets):
        key = Path(os.path.normcase(os.path.abspath(target)))
        if key in seen:
            first, second = (made_from[seen[key]], made_from[index]) if made_from else (seen[key] + 1, index + 1)
            raise OutputError(
                f"{first} and {second} would both be written to {target}; give them different names "
                "or run them separately"
            )
        seen[key] = index
    _refuse_inputs(targets, inputs)
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]}: already exists ({len(existing)} of {len(targets)} outputs do); pass --overwrite"
        )
    for target in existing:
        if target.is_dir():
            raise OutputError(f"{target}: is a folder, where an output file would go")
    writable_folder(folder)
    return targets


def _refuse_inputs(targets: Iterable[Path], inputs: Iterable[str | Path]) -> None:
    sources = {_identity(Path(p)): Path(p) for p in inputs}
    for target in targets:
        source = sources.get(_identity(target))
        if source is not None:
            raise OutputError(f"{target}: is also an input ({source}); write the output somewhere else")


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode when it exists, else the resolved path."""
    try:
        stat = path.stat()
        return ("inode", stat.st_dev, stat.st_ino)
    except OSError:
        return ("path", str(path.resolve()))
