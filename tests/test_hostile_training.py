"""Hostile training state: a damaged latest checkpoint falls back to the newest good one (and says
so) or stops in one line; launched runs end with the script's own line and exit status."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from hostile_support import REPO, assert_one_line_error, photo, run_cli, save

from gsq_core import CheckpointError
from train import checkpointing

SMOKE = REPO / "train" / "configs" / "smoke.yaml"


def write_checkpoint(root: Path, step: int) -> None:
    partial = checkpointing.partial_directory(root, step)
    partial.mkdir(parents=True)
    checkpointing.save_tensors(partial / "generator.safetensors", {"w": torch.full((2,), float(step))})
    checkpointing.save_tensors(partial / "ema.safetensors", {"w": torch.zeros(2)})
    checkpointing.save_torch_state(partial / "optimizer_generator.pt", {"state": {}, "param_groups": []})
    checkpointing.write_json(partial / "rng_rank0.json", checkpointing.rng_state())
    checkpointing.write_json(partial / checkpointing.STATE, {"step": step})
    checkpointing.publish(root, step, keep=3)


def truncate(path: Path) -> None:
    """Cut a file in half, as a killed copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: truncate(d / "generator.safetensors"),
        lambda d: truncate(d / "optimizer_generator.pt"),
        lambda d: (d / checkpointing.STATE).write_text('{"step": "three"}'),
        lambda d: (d / "rng_rank0.json").write_text("{"),
    ],
    ids=["truncated-weights", "truncated-optimizer", "state-wrong-type", "rng-garbage"],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    for step in (1, 2):
        write_checkpoint(tmp_path, step)
    damage(checkpointing.step_directory(tmp_path, 2))
    loaded, notes = checkpointing.load_resume_state(tmp_path, rank=0)
    assert loaded.state["step"] == 1 and float(loaded.generator["w"][0]) == 1.0
    assert "step_00000002 is damaged" in notes[0] and "resuming from step_00000001" in notes[-1]


def test_unreadable_latest_pointer_falls_back_to_the_newest_complete_step(tmp_path):
    for step in (1, 2):
        write_checkpoint(tmp_path, step)
    (checkpointing.checkpoint_root(tmp_path) / checkpointing.LATEST).write_text("{not json")
    loaded, notes = checkpointing.load_resume_state(tmp_path, rank=0)
    assert loaded.state["step"] == 2
    assert "latest.json" in notes[0]


def test_every_checkpoint_damaged_is_one_error_with_every_reason(tmp_path):
    for step in (1, 2):
        write_checkpoint(tmp_path, step)
        truncate(checkpointing.step_directory(tmp_path, step) / "ema.safetensors")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as caught:
        checkpointing.load_resume_state(tmp_path, rank=0)
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


def test_resume_with_a_truncated_latest_checkpoint_says_so_and_continues(photos, tmp_path):
    out = tmp_path / "run"
    first = run_cli(["train/main.py", *train_args(photos, out, "--max-steps", "2", "log.checkpoint_every=1")])
    assert first.returncode == 0, first.stderr[-2000:]
    truncate(checkpointing.step_directory(out, 2) / "generator.safetensors")
    resumed = run_cli(["train/main.py", *train_args(photos, out, "--max-steps", "3", "log.checkpoint_every=1", "--resume")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "warning: step_00000002 is damaged" in resumed.stdout
    assert "resumed from step 1" in resumed.stdout
    assert json.loads((checkpointing.checkpoint_root(out) / "latest.json").read_text())["step"] == 3
    for step in checkpointing.list_complete(out):  # now nothing usable: one line, exit 2
        truncate(checkpointing.step_directory(out, step) / "ema.safetensors")
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
