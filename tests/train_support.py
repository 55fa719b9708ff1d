"""Helpers of the training tests: accelerate state between in-process runs, a tiny checkpointed run."""

from __future__ import annotations

import torch


def fresh_accelerate_state() -> None:
    """Forget accelerate's process-wide state, so that this process can build another Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_accelerated_run(**options):
    """What train/main.py checkpoints, in small: a CPU Accelerator with a Linear model, AdamW and a
    LambdaLR prepared, an EMA and the run progress registered for checkpointing."""
    from accelerate import Accelerator

    from gsq_deploy.train.ema import make_ema
    from gsq_deploy.train.main import Progress

    fresh_accelerate_state()
    accelerator = Accelerator(cpu=True, **options)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, _ = accelerator.prepare(
        model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step)))
    accelerator.register_for_checkpointing(make_ema(model, 0.9), Progress())
    return accelerator, model, optimizer


def train_in_process(*argv: str) -> None:
    """train.main.main in this process: three runs cost one interpreter start, not three."""
    from gsq_deploy.train.main import main

    fresh_accelerate_state()
    try:
        assert main(list(argv)) == 0
    finally:
        fresh_accelerate_state()
