"""Full training-state checkpoints: safetensors for weights, torch (weights_only) for optimizers, JSON.

Layout under <output-dir>/checkpoints/:
    step_00000500/            one complete checkpoint (renamed into place only once complete)
        generator.safetensors, ema.safetensors, discriminator.safetensors (when used)
        optimizer_generator.pt, optimizer_discriminator.pt   (tensors + plain values only)
        rng_rank<R>.json      every process's RNG states
        state.json            step, data position, run facts
    latest.json               {"step": N, "directory": "step_..."}, replaced atomically last

A run killed at any moment leaves either the previous latest checkpoint or the new one, complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gsq_core.checkpoint import atomic_write
from gsq_core.errors import CheckpointError

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


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file and flush it to disk."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync(path)


def save_torch_state(path: Path, state: dict[str, Any]) -> None:
    """Write an optimizer state dict (tensors and plain values only) and flush it to disk."""
    torch.save(state, str(path))
    _fsync(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON and flush it to disk."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync(path)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON-compatible data."""
    numpy_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *[float(v) if isinstance(v, float) else int(v) for v in numpy_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states written by rng_state()."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


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


@dataclass
class LoadedState:
    """What a resumed run reads back."""

    directory: Path
    state: dict[str, Any]
    generator: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None
    optimizer_generator: dict[str, Any]
    optimizer_discriminator: dict[str, Any] | None
    rng: dict[str, Any] | None


def load_checkpoint(directory: Path, rank: int) -> LoadedState:
    """Read a checkpoint directory safely (safetensors, weights_only torch.load, JSON); CheckpointError
    naming the damaged file. Every rank's RNG file is checked, so all ranks reach the same verdict."""
    def torch_state(name: str) -> dict[str, Any] | None:
        path = directory / name
        if not path.is_file():
            return None
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # damaged file: say which
            raise CheckpointError(f"{path}: cannot read safely: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None

    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(directory / name))
        except Exception as error:  # SafetensorError (truncated, corrupt header), OSError
            raise CheckpointError(f"{directory / name}: unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None

    def json_file(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:
            raise CheckpointError(f"{path}: unreadable ({type(error).__name__})") from None

    state = json_file(directory / STATE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        raise CheckpointError(f"{directory / STATE}: has no integer 'step'")
    for key in ("ema_updates", "skipped_images"):
        if key in state and (not isinstance(state[key], int) or isinstance(state[key], bool)):
            raise CheckpointError(f"{directory / STATE}: {key!r} is not an integer")
    generator = tensors("generator.safetensors")
    ema = tensors("ema.safetensors")
    discriminator = tensors("discriminator.safetensors") if (directory / "discriminator.safetensors").is_file() else None
    rng = None
    for rng_path in sorted(directory.glob("rng_rank*.json")):
        value = json_file(rng_path)
        if rng_path.name == f"rng_rank{rank}.json":
            rng = value
    optimizer_generator = torch_state("optimizer_generator.pt")
    if optimizer_generator is None:
        raise CheckpointError(f"{directory}: optimizer_generator.pt is missing")
    return LoadedState(directory, state, generator, ema, discriminator, optimizer_generator,
                       torch_state("optimizer_discriminator.pt"), rng)


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


def load_resume_state(
    output_dir: str | Path, rank: int, check: Callable[[LoadedState], None] | None = None
) -> tuple[LoadedState | None, list[str]]:
    """The newest checkpoint that reads and passes `check` (which raises CheckpointError on damage),
    falling back to older complete ones; notes name each damaged one and the one taken. None when the
    run has no checkpoint; CheckpointError (one line, every reason) when it has some but none is usable."""
    candidates, notes = resume_candidates(output_dir)
    reasons: list[str] = []
    for directory in candidates:
        try:
            loaded = load_checkpoint(directory, rank)
            if check is not None:
                check(loaded)
        except CheckpointError as error:
            reasons.append(str(error))
            notes.append(f"{directory.name} is damaged ({error}); trying an older checkpoint")
            continue
        if reasons:
            notes.append(f"resuming from {directory.name}, the newest checkpoint that reads")
        return loaded, notes
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(output_dir)}: " + "; ".join(reasons))
    return None, notes
