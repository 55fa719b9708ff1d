"""Scalar logs through accelerate's trackers: JSON lines (logs/metrics.jsonl) always, TensorBoard
(logs/tensorboard/) when tensorboard is installed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import is_tensorboard_available

METRICS = "metrics.jsonl"
RUN_NAME = "tensorboard"  # accelerate's TensorBoard tracker writes to <logging_dir>/<run name>


class JsonlTracker(GeneralTracker):
    """An accelerate tracker appending {"step", "time", **values} per log call to metrics.jsonl."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / METRICS

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")


def trackers(logging_dir: Path) -> list:
    """The Accelerator's log_with: JSON lines, and TensorBoard when installed."""
    return [JsonlTracker(logging_dir)] + (["tensorboard"] if is_tensorboard_available() else [])


def describe(logging_dir: Path) -> str:
    """One line saying where logs go."""
    if is_tensorboard_available():
        return f"logs: {logging_dir / METRICS} and TensorBoard events in {logging_dir / RUN_NAME}"
    return f"logs: {logging_dir / METRICS} (tensorboard is not installed: pip install tensorboard for event files)"
