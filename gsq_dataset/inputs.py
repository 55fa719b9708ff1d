"""What SRC is: a folder of images, WebDataset tar shards, or Hugging Face-style Parquet files.

Every sample gets an id that is stable across runs, relative to the input root:
    folder       "<path relative to SRC>"                     e.g. "n01440764/img_001.jpg"
    WebDataset   "<shard relative to the root>/<__key__>"     e.g. "train-0001.tar/sample_000017"
    Parquet      "<file relative to the root>/<row number>"   e.g. "data/train-00000.parquet/17"
A whole unreadable shard or file is one failed sample whose id is the shard or file itself.
No Ray and no torch here: the driver decides this before it starts any work.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gsq_core.errors import InputError
from gsq_core.images import IMAGE_SUFFIXES

FORMATS = ("folder", "webdataset", "parquet")
SHARD_SUFFIX = ".tar"
PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class InputSet:
    """The samples' files, the root their ids are relative to, and the class names of a class-folder tree."""

    format: str  # folder | webdataset | parquet
    root: Path
    files: tuple[Path, ...]  # images, tar shards or Parquet files, sorted
    classes: tuple[str, ...] | None = None  # folder: class folder names (label = index), None without labels
    arguments: tuple[str, ...] = field(default=())  # --input values as given

    def relative_id(self, path: str | Path) -> str:
        """The id part of a file: its path relative to the root, with '/' separators."""
        return Path(path).relative_to(self.root).as_posix()

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the inputs."""
        return {
            "format": self.format,
            "root": str(self.root),
            "arguments": list(self.arguments),
            "files": len(self.files),
            "classes": list(self.classes) if self.classes is not None else None,
        }


def find_inputs(arguments: Sequence[str], input_format: str = "auto", exclude: Path | None = None) -> InputSet:
    """Resolve --input values (folders, files, globs, {000..099} ranges) to an InputSet, or InputError.

    exclude: a folder never searched (the output folder, when it lies inside the input folder)."""
    if not arguments:
        raise InputError("no --input given")
    if input_format not in ("auto", *FORMATS):
        raise InputError(f"--input-format {input_format!r} is not one of auto, {', '.join(FORMATS)}")
    directories, files = _expand(arguments)
    if directories and files:
        raise InputError(
            f"--input mixes folders ({directories[0]}) and files ({files[0]}); give one folder, or files/globs"
        )
    if directories:
        if len(directories) > 1:
            raise InputError(f"give one input folder, not {len(directories)} ({directories[0]}, {directories[1]}, ...)")
        return _from_folder(directories[0], input_format, tuple(arguments), exclude)
    return _from_files(files, input_format, tuple(arguments))


def _expand(arguments: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(folders, files) named by the arguments; each missing or empty pattern is an InputError."""
    directories: list[Path] = []
    files: list[Path] = []
    for argument in arguments:
        for pattern in expand_ranges(argument):
            if glob.has_magic(pattern):
                matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
                if not matches:
                    raise InputError(f"{pattern}: matches no files")
            else:
                matches = [Path(pattern)]
            for path in matches:
                if path.is_dir():
                    directories.append(path.resolve())
                elif path.is_file():
                    files.append(path.resolve())
                else:
                    raise InputError(f"{path}: no such file or folder")
    return directories, sorted(set(files))


def expand_ranges(pattern: str) -> list[str]:
    """WebDataset's shard notation: 'shard-{000..003}.tar' -> shard-000.tar ... shard-003.tar (zero padding kept)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise InputError(f"{pattern}: range {{{first}..{last}}} runs backwards")
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    expanded: list[str] = []
    for number in range(int(first), int(last) + 1):
        expanded.extend(expand_ranges(f"{head}{number:0{width}d}{tail}"))
    return expanded


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "folder"
    if suffix == SHARD_SUFFIX:
        return "webdataset"
    if suffix == PARQUET_SUFFIX:
        return "parquet"
    return None


def _from_folder(root: Path, input_format: str, arguments: tuple[str, ...], exclude: Path | None) -> InputSet:
    found: dict[str, list[Path]] = {kind: [] for kind in FORMATS}
    skipped = exclude.resolve() if exclude is not None else None
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if not d.startswith(".") and Path(directory, d).resolve() != skipped
        )
        for name in names:
            if name.startswith("."):
                continue
            path = Path(directory, name)
            kind = _kind(path)
            if kind is not None:
                found[kind].append(path)
    if input_format == "auto":
        present = [kind for kind in FORMATS if found[kind]]
        if not present:
            raise InputError(
                f"{root}: holds no images ({', '.join(IMAGE_SUFFIXES)}), .tar shards or .parquet files"
            )
        if len(present) > 1:
            counts = ", ".join(f"{len(found[kind])} {kind}" for kind in present)
            raise InputError(f"{root}: holds more than one kind of input ({counts}); pass --input-format")
        input_format = present[0]
    files = tuple(sorted(found[input_format]))
    if not files:
        raise InputError(f"{root}: holds no {_what(input_format)}")
    classes = _class_folders(root, files) if input_format == "folder" else None
    return InputSet(input_format, root, files, classes, arguments)


def _from_files(files: list[Path], input_format: str, arguments: tuple[str, ...]) -> InputSet:
    if not files:
        raise InputError("--input names no files")
    kinds = {_kind(path) for path in files}
    if input_format == "auto":
        if None in kinds:
            odd = next(path for path in files if _kind(path) is None)
            raise InputError(f"{odd}: not an image, .tar shard or .parquet file; pass --input-format")
        if len(kinds) > 1:
            raise InputError(f"--input mixes kinds of files ({', '.join(sorted(k for k in kinds if k))})")
        input_format = kinds.pop()  # type: ignore[assignment]
    root = Path(os.path.commonpath([path.parent for path in files]))
    return InputSet(input_format, root, tuple(files), None, arguments)


def _class_folders(root: Path, files: tuple[Path, ...]) -> tuple[str, ...] | None:
    """ImageNet layout: every image sits exactly one folder below the root; labels index the sorted folder names."""
    depths = {len(path.relative_to(root).parts) for path in files}
    if depths != {2}:
        return None
    return tuple(sorted({path.relative_to(root).parts[0] for path in files}))


def _what(input_format: str) -> str:
    return {"folder": "images", "webdataset": ".tar shards", "parquet": ".parquet files"}[input_format]
