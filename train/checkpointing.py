"""Training checkpoints: accelerate's save_state / load_state in folders that appear atomically.

Layout under <output-dir>/checkpoints/:
    step_00000500/        one complete checkpoint (renamed into place only once complete)
        model.safetensors, model_1.safetensors     generator, discriminator (when used)
        optimizer.bin, optimizer_1.bin, scheduler.bin, scheduler_1.bin
        scaler.pt                                  fp16 GradScaler (when used)
        random_states_<rank>.pkl                   every process's RNG states and accelerate's step
        custom_checkpoint_<i>.pkl                  the registered objects (EMA, run progress)
        state.json            step, run facts, and the size and sha256 of every file above
    latest.json               {"step": N, "directory": "step_..."}, replaced atomically last

A run killed at any moment leaves either the previous latest checkpoint or the new one, complete.
A resumed run takes the newest checkpoint whose files match state.json and load, falling back to
older ones past damage (accelerate itself ignores unreadable RNG files, so the manifest decides).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsq_core.checkpoint import atomic_write
from gsq_core.errors import CheckpointError, first_line

LATEST = "latest.json"
STATE = "state.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(output_dir) / "checkpoints"


def step_directory(output_dir: str | Path, step: int) -> Path:
    """The directory of the checkpoint at `step`."""
    return checkpoint_root(output_dir) / f"step_{step:08d}"


def partial_directory(output_dir: str | Path, step: int) -> Path:
    """Scratch directory a checkpoint is assembled in before it is renamed into place."""
    return checkpoint_root(output_dir) / f".partial_step_{step:08d}"


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON and flush it to disk."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in a checkpoint directory (state.json aside), each flushed to disk."""
    files = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != STATE):
        _fsync(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    return files


@contextmanager
def staged(accelerator, output_dir: str | Path, step: int, facts: dict[str, Any], keep: int) -> Iterator[Path]:
    """A scratch folder for `step`'s accelerator.save_state (train.main.save_checkpoint; all processes
    take part); on leaving it, state.json with the manifest, then publish atomically."""
    partial = partial_directory(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    yield partial
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / STATE, {**facts, "step": step, "files": manifest(partial)})
        publish(output_dir, step, keep)
    accelerator.wait_for_everyone()


def publish(output_dir: str | Path, step: int, keep: int) -> Path:
    """Rename a complete partial checkpoint into place, point latest.json at it, prune old ones."""
    partial = partial_directory(output_dir, step)
    final = step_directory(output_dir, step)
    _fsync(partial)
    if final.exists():  # left by a run killed before it updated latest.json: never the latest one
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync(final.parent)
    latest = {"step": step, "directory": final.name}
    atomic_write(checkpoint_root(output_dir) / LATEST, lambda tmp: write_json(tmp, latest), overwrite=True)
    _fsync(final.parent)
    complete = sorted(list_complete(output_dir))
    for old_step in complete[:-keep] if keep > 0 else []:
        if old_step != step:
            shutil.rmtree(step_directory(output_dir, old_step), ignore_errors=True)
    return final


def list_complete(output_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints on disk."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    steps = []
    for directory in root.glob("step_*"):
        if (directory / STATE).is_file() and directory.name[5:].isdigit():
            steps.append(int(directory.name[5:]))
    return sorted(steps)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The directory latest.json points at (None when the run has no checkpoint yet)."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        directory = root / json.loads(pointer.read_text())["directory"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{pointer}: unreadable ({error}); delete it to resume from the newest complete step") from None
    if not (directory / STATE).is_file():
        raise CheckpointError(f"{pointer} points at {directory}, which is not a complete checkpoint")
    return directory


def read_state(directory: Path) -> dict[str, Any]:
    """A checkpoint's state.json, after checking every file it lists against its size and sha256, and
    that the registered objects' states (which accelerate unpickles with weights_only=False) hold only
    tensors and plain values. CheckpointError naming the damaged file."""
    from accelerate.utils import load

    path = directory / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: unreadable ({type(error).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        raise CheckpointError(f"{path}: has no integer 'step'")
    files = state.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path}: lists no files (written by an older train/ or damaged)")
    for name, expected in files.items():
        target = directory / name
        if not target.is_file():
            raise CheckpointError(f"{target}: missing")
        if not isinstance(expected, dict) or target.stat().st_size != expected.get("bytes") or _sha256(target) != expected.get("sha256"):
            raise CheckpointError(f"{target}: damaged (its size or sha256 differs from {STATE}'s)")
        if name.startswith("custom_checkpoint_"):
            try:
                load(str(target), map_location="cpu", weights_only=True)
            except Exception as error:  # an unpickling error of any kind: refuse the file
                raise CheckpointError(f"{target}: cannot be read safely ({first_line(error)})") from None
    return state


def resume_candidates(output_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Complete checkpoints to resume from, best first: the one latest.json names, then every other
    complete step, newest first. Notes say when latest.json itself is unusable."""
    root = checkpoint_root(output_dir)
    notes: list[str] = []
    ordered: list[Path] = []
    if (root / LATEST).is_file():
        try:
            pointed = latest_checkpoint(output_dir)
            if pointed is not None:
                ordered.append(pointed)
        except CheckpointError as error:
            notes.append(f"{error}; trying the newest complete checkpoint instead")
    for step in sorted(list_complete(output_dir), reverse=True):
        directory = step_directory(output_dir, step)
        if directory not in ordered:
            ordered.append(directory)
    return ordered, notes


def load_newest(
    output_dir: str | Path, load: Callable[[Path], None], check: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[Path | None, dict[str, Any], list[str]]:
    """load(directory) (accelerator.load_state: train.main.load_checkpoint) from the newest checkpoint
    that verifies and loads, falling back to older complete ones. `check(directory, state)` may raise RunError for a checkpoint of another run (no
    fallback). Returns (directory, its state.json, notes naming each damaged checkpoint and the one
    taken); (None, {}, notes) when the run has no checkpoint; CheckpointError (one line, every
    reason) when it has some but none is usable."""
    candidates, notes = resume_candidates(output_dir)
    reasons: list[str] = []
    for directory in candidates:
        try:
            state = read_state(directory)
            if check is not None:
                check(directory, state)
            try:
                load(directory)
            except Exception as error:  # weights that do not fit, files of another layout: damage
                raise CheckpointError(f"{directory}: cannot be loaded ({first_line(error)})") from None
        except CheckpointError as error:
            reasons.append(str(error))
            notes.append(f"{directory.name} is damaged ({error}); trying an older checkpoint")
            continue
        if reasons:
            notes.append(f"resuming from {directory.name}, the newest checkpoint that reads")
        return directory, state, notes
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(output_dir)}: " + "; ".join(reasons))
    return None, {}, notes
