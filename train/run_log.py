"""Scalar logs: always JSON lines (logs/metrics.jsonl); TensorBoard too when tensorboard is installed."""

from __future__ import annotations

import json
import time
from pathlib import Path


class RunLog:
    """Append scalars per step to metrics.jsonl and, when available, a TensorBoard event file."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = log_dir / "metrics.jsonl"
        self.writer = None
        self.backend = "jsonl"
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir / "tensorboard"))
            self.backend = "jsonl+tensorboard"
        except ImportError:
            self.writer = None

    def describe(self) -> str:
        """One line saying where logs go."""
        if self.writer is not None:
            return f"logs: {self.path} and TensorBoard events in {self.path.parent / 'tensorboard'}"
        return f"logs: {self.path} (tensorboard is not installed: pip install tensorboard for event files)"

    def write(self, step: int, values: dict[str, float]) -> None:
        """Record scalars for a step."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
