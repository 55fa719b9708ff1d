"""The output folder DST: token shards, the manifest, the failed-samples list, and how a run commits.

    DST/<name>.parquet     token shards (id, label, tokens, token_height, token_width)
    DST/_manifest.json     the tokenizer, preprocessing, inputs, counts and runs
    DST/_failed.jsonl      one {"id", "reason"} line per sample that could not be tokenized
    DST/_staging/<run>/    what a run writes before it commits (shards/ from Ray, failed/ from workers)
    DST/_lock              held (flock) by the run writing here
    DST/_logs/             Ray's own log lines of each run on Ray (shown on failure)

Names starting with "_" are skipped by pyarrow's and Hugging Face datasets' file discovery, so the
folder reads as a Parquet dataset with nothing of ours installed. A shard is committed by renaming
it from staging into DST once its footer reads back; a run killed part-way leaves staging behind,
and the next run commits what was complete and drops the rest (and any row whose id is already
committed), so every id lands in DST exactly once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from gsq_core.outputs import OutputError, writable_folder

from . import formats
from .formats import FORMATS, committed_ids, data_files, row_count
from .tokens import MANIFEST_NAME

FAILED_NAME = "_failed.jsonl"
STAGING_NAME = "_staging"
LOCK_NAME = "_lock"
LOGS_NAME = "_logs"
MANIFEST_FORMAT = "gsq-tokens"
MANIFEST_VERSION = 1


@dataclass
class CommitResult:
    """What one commit moved into DST."""

    shards: int = 0
    rows: int = 0
    failed: int = 0
    dropped_partial: int = 0  # staged files without a readable footer (a killed writer)
    dropped_duplicates: int = 0  # staged rows whose id was already committed


class OutputFolder:
    """DST on a local or shared filesystem (every Ray node must see the same path)."""

    def __init__(self, path: str | Path, fmt: str = "ours", layout: str = "BHWG"):
        self.path = Path(path).absolute()
        self.format = fmt  # gsq_dataset.formats: how committed tokens are stored
        self.layout = layout  # the tokenizer's token layout (BHWG or BHW), for the other formats' nesting
        self._lock_handle: TextIO | None = None

    # -- paths ------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def failed_path(self) -> Path:
        return self.path / FAILED_NAME

    @property
    def staging_path(self) -> Path:
        return self.path / STAGING_NAME

    def shard_paths(self) -> list[Path]:
        """Committed token files of this folder's format, in order."""
        return data_files(self.path, self.format)

    def new_run_dir(self) -> Path:
        """A fresh staging folder for this run's shards and failure records."""
        run_dir = self.staging_path / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        (run_dir / "shards").mkdir(parents=True)
        (run_dir / "failed").mkdir()
        return run_dir

    def new_log_path(self) -> Path:
        """Where this run's Ray logs go (DST/_logs/<time>-<id>.log; kept, and shown on failure)."""
        folder = self.path / LOGS_NAME
        folder.mkdir(exist_ok=True)
        return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.log"

    # -- opening ----------------------------------------------------------------------------------
    def open(self, overwrite: bool) -> None:
        """Create DST (or check it is ours), take the run lock, and with overwrite empty it."""
        try:
            is_other = self.path.exists() and not self.path.is_dir()
        except OSError as error:  # a name too long, a folder on the way that is not ours to read...
            raise OutputError(f"{self.path}: cannot be used ({error.strerror or error})") from None
        if is_other:
            raise OutputError(f"{self.path}: exists and is not a folder")
        ours = self.manifest_path.is_file()
        if self.path.is_dir() and not ours:
            entries = [entry.name for entry in self.path.iterdir() if entry.name not in (LOCK_NAME, STAGING_NAME, LOGS_NAME)]
            if entries:
                raise OutputError(
                    f"{self.path}: is not empty and holds no {MANIFEST_NAME} (not a gsq-tokenize output); "
                    "choose a new or empty folder"
                )
        writable_folder(self.path)  # before creating anything
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            writable_folder(self.path)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot create it ({error.strerror or error})") from None
        self._take_lock()
        self._remove_temporaries()
        if overwrite and ours:
            self._clear()

    def _remove_temporaries(self) -> None:
        """Delete what a run killed inside write_text_atomically left (`.<name>.<random>.tmp`, never
        renamed into place); the lock says that no other run is writing one now."""
        for name in (MANIFEST_NAME, FAILED_NAME):
            for leftover in self.path.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)

    def _take_lock(self) -> None:
        handle = open(self.path / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{self.path}: another gsq-tokenize run ({holder}) is writing here") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock_handle = handle

    def close(self) -> None:
        """Release the run lock."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def _clear(self) -> None:
        for fmt in FORMATS:
            for shard in data_files(self.path, fmt):
                shard.unlink()
        for name in (FAILED_NAME, MANIFEST_NAME):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.staging_path, ignore_errors=True)

    # -- manifest ---------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None for a new folder."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise OutputError(f"{self.manifest_path}: not valid JSON ({error}); pass --overwrite to start over") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise OutputError(f"{self.manifest_path}: not a gsq-tokenize manifest; pass --overwrite to start over")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically."""
        write_text_atomically(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")

    # -- committed state --------------------------------------------------------------------------
    def committed_ids(self) -> list[str]:
        """Ids in the committed shards, in shard order."""
        return committed_ids(self.path, self.format)

    def failures(self) -> dict[str, str]:
        """id -> reason for every listed failed sample."""
        return read_failure_lines(self.failed_path) if self.failed_path.is_file() else {}

    def done_ids(self) -> frozenset[str]:
        """Every id that is finished: tokenized into a committed shard, or listed as failed."""
        return frozenset(self.committed_ids()) | frozenset(self.failures())

    def counts(self) -> dict[str, int]:
        """Committed rows, shards and listed failures."""
        return {"tokenized": row_count(self.path, self.format), "shards": len(self.shard_paths()), "failed": len(self.failures())}

    # -- commit -----------------------------------------------------------------------------------
    def commit_staging(self) -> CommitResult:
        """Move every staged run's complete shards and failure records into DST, then remove staging."""
        result = CommitResult()
        if not self.staging_path.is_dir():
            return result
        seen = set(self.committed_ids())
        failures = self.failures()
        new_failures: dict[str, str] = {}
        for run_dir in sorted(p for p in self.staging_path.iterdir() if p.is_dir()):
            for staged in sorted((run_dir / "shards").rglob("*.parquet")) if (run_dir / "shards").is_dir() else []:
                self._commit_shard(staged, seen, result)
            for record in sorted((run_dir / "failed").glob("*.jsonl")) if (run_dir / "failed").is_dir() else []:
                for sample_id, reason in read_failure_lines(record).items():
                    if sample_id not in seen and sample_id not in failures:
                        new_failures.setdefault(sample_id, reason)
        if new_failures:
            failures.update(new_failures)
            lines = "".join(json.dumps({"id": k, "reason": v}, ensure_ascii=False) + "\n" for k, v in failures.items())
            write_text_atomically(self.failed_path, lines)
            result.failed = len(new_failures)
        shutil.rmtree(self.staging_path)
        return result

    def _commit_shard(self, staged: Path, seen: set[str], result: CommitResult) -> None:
        try:  # Parquet writes its footer last: a file whose footer reads back is complete
            ids = pq.read_table(staged, columns=["id"]).column("id").to_pylist()
        except (OSError, pa.ArrowException):
            result.dropped_partial += 1  # a writer killed mid-file: its rows are redone
            return
        fresh = [i for i, sample_id in enumerate(ids) if sample_id not in seen]
        seen.update(ids[i] for i in fresh)
        result.dropped_duplicates += len(ids) - len(fresh)
        if not fresh:
            return
        if self.format != "ours":  # the staged rows, less the committed ids, in the folder's format
            table = pq.read_table(staged)
            kept = table if len(fresh) == len(ids) else table.take(pa.array(fresh))
            formats.commit_table(self.path, self.format, kept, self.layout)
            result.shards += 1
            result.rows += len(fresh)
            return
        target = self.path / staged.name
        if len(fresh) == len(ids):
            os.replace(staged, target)
        else:
            temporary = staged.with_name(f".{staged.name}.dedup")
            pq.write_table(pq.read_table(staged).take(pa.array(fresh)), temporary)
            os.replace(temporary, target)
        result.shards += 1
        result.rows += len(fresh)


def read_failure_lines(path: Path) -> dict[str, str]:
    """id -> reason from a JSON-lines failure record; a line cut short by a kill is ignored."""
    failures: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "id" in entry:
                failures.setdefault(str(entry["id"]), str(entry.get("reason", "")))
    return failures


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file through a temporary name in the same folder and a rename."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
