"""The command-line options every command that takes a checkpoint shares: --config and --ema/--no-ema.

    @click.command()
    @click.option("--ckpt", ...)
    @checkpoint_loading_options
    def command(ckpt, config, ema, ...):
        model = load_tokenizer(ckpt, config=config, ema=ema)

They matter for SEED-Voken IBQ Lightning checkpoints, whose model config is a separate YAML and
which hold EMA and raw weights; other checkpoint files refuse them in one line.
"""

from __future__ import annotations

import argparse
from typing import Callable

import click

CONFIG_HELP = (
    "Model config of an IBQ Lightning .ckpt: its LightningCLI YAML (SEED-Voken's configs/IBQ/...yaml) or a "
    "preset name. Default: the .yaml beside the checkpoint with the same stem."
)
EMA_HELP = "IBQ Lightning .ckpt: the EMA weights (what SEED-Voken evaluates) or the raw ones."

config_option = click.option("--config", "config", default=None, metavar="FILE", help=CONFIG_HELP)
ema_option = click.option("--ema/--no-ema", "ema", default=True, show_default=True, help=EMA_HELP)


def checkpoint_loading_options(command: Callable) -> Callable:
    """Add --config FILE and --ema/--no-ema (parameters `config`, `ema`) to a click command."""
    return config_option(ema_option(command))


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The same two options for argparse scripts (benchmarks, train/evaluate.py): args.config, args.ema."""
    parser.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP.replace("%", "%%"))
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="IBQ Lightning .ckpt: the raw weights, not EMA")
