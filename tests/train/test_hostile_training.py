"""Hostile training state: a damaged latest checkpoint falls back to the newest good one (and says
so) or stops in one line; launched runs end with the script's own line and exit status."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from tests.hostile_support import REPO, assert_one_line_error, photo, run_cli, save

from tests.train_support import tiny_accelerated_run, train_in_process

from gsq_core import CheckpointError
from gsq_deploy.train import checkpointing
from gsq_deploy.train.main import load_checkpoint, save_checkpoint

SMOKE = REPO / "train" / "configs" / "smoke.yaml"


def write_checkpoints(root: Path, steps: tuple[int, ...] = (1, 2)):
    """Checkpoints of a tiny accelerated run whose weights hold the step number; returns its model."""
    accelerator, model, _ = tiny_accelerated_run()
    for step in steps:
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(accelerator, root, step, {}, keep=3)
    with torch.no_grad():
        model.weight.zero_()
    return accelerator, model


def truncate(path: Path) -> None:
    """Cut a file in half, as a killed copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Unsafe(dict):
    """A valid progress state, pickled by reference: an unpickler that imports classes (weights_only=False,
    as accelerate loads registered objects) accepts it, and could as well run code."""


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: truncate(d / "model.safetensors"),
        lambda d: truncate(d / "optimizer.bin"),
        lambda d: (d / checkpointing.STATE).write_text('{"step": "three"}'),
        lambda d: (d / "random_states_0.pkl").write_bytes(b"garbage"),  # accelerate itself ignores it
        lambda d: (d / "scheduler.bin").unlink(),
        lambda d: checkpointing.write_json(d / checkpointing.STATE, {  # consistent manifest, unsafe pickle
            **json.loads((d / checkpointing.STATE).read_text()),
            "files": (torch.save(Unsafe(step=2, batches=2, skipped_images=0), d / "custom_checkpoint_1.pkl"), checkpointing.manifest(d))[1]}),
    ],
    ids=["truncated-weights", "truncated-optimizer", "state-wrong-type", "rng-garbage", "missing-scheduler",
         "unsafe-registered-state"],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    accelerator, model = write_checkpoints(tmp_path)
    damage(checkpointing.step_directory(tmp_path, 2))
    directory, state, notes = load_checkpoint(accelerator, tmp_path)
    assert state["step"] == 1 and directory == checkpointing.step_directory(tmp_path, 1)
    assert float(model.weight.detach()[0, 0]) == 1.0
    assert "step_00000002 is damaged" in notes[0] and "resuming from step_00000001" in notes[-1]


def test_unreadable_latest_pointer_falls_back_to_the_newest_complete_step(tmp_path):
    accelerator, model = write_checkpoints(tmp_path)
    (checkpointing.checkpoint_root(tmp_path) / checkpointing.LATEST).write_text("{not json")
    directory, state, notes = load_checkpoint(accelerator, tmp_path)
    assert state["step"] == 2 and float(model.weight.detach()[0, 0]) == 2.0
    assert "latest.json" in notes[0]


def test_every_checkpoint_damaged_is_one_error_with_every_reason(tmp_path):
    accelerator, _ = write_checkpoints(tmp_path)
    for step in (1, 2):
        truncate(checkpointing.step_directory(tmp_path, step) / "custom_checkpoint_0.pkl")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as caught:
        load_checkpoint(accelerator, tmp_path)
    assert "step_00000002" in str(caught.value) and "step_00000001" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-photos")
    for index in range(4):
        save(folder / f"p{index}.png", photo(48, 48)[:, ::(1 if index % 2 else -1)].copy())
    return folder


def train_args(photos: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(SMOKE), "--data", str(photos), "--output-dir", str(out), *extra]


def test_resume_with_a_truncated_latest_checkpoint_says_so_and_continues(photos, tmp_path, capsys):
    out = tmp_path / "run"
    train_in_process(*train_args(photos, out, "--max-steps", "2", "log.checkpoint_every=1", "log.val_every=100"))
    truncate(checkpointing.step_directory(out, 2) / "model.safetensors")
    capsys.readouterr()
    train_in_process(*train_args(photos, out, "--max-steps", "3", "log.checkpoint_every=1", "log.val_every=100", "--resume"))
    resumed = capsys.readouterr().out
    assert "warning: step_00000002 is damaged" in resumed
    assert "resumed from step 1" in resumed
    assert json.loads((checkpointing.checkpoint_root(out) / "latest.json").read_text())["step"] == 3
    for step in checkpointing.list_complete(out):  # now nothing usable: one line, exit 2
        truncate(checkpointing.step_directory(out, step) / "custom_checkpoint_0.pkl")
    failed = run_cli(["train/main.py", *train_args(photos, out, "--max-steps", "4", "--resume")])
    error = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode == 2 and len(error) == 1 and "no usable checkpoint" in error[0]
    assert "Traceback" not in failed.stderr


def test_training_output_that_cannot_be_written_is_one_line(photos, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in ("/proc/gsq-run", str(a_file / "run")):
        result = run_cli(["train/main.py", *train_args(photos, Path(out), "--max-steps", "1")])
        assert_one_line_error(result)
        assert result.returncode == 2


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_launched_runs_end_with_the_script_line_and_its_exit_status(photos, tmp_path, processes):
    launch = ["-m", "train.launch", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", str(free_port())]
    result = run_cli([*launch, "train/main.py", *train_args(photos, tmp_path / "run", "optim.schedule=sometimes")],
                     env={"CUDA_VISIBLE_DEVICES": ""})
    line = assert_one_line_error(result, "optim.schedule='sometimes'")
    assert "CalledProcessError" not in result.stderr and "ChildFailedError" not in result.stderr, line
    assert result.returncode == 2
