"""`python -m runtimes --backend NAME encode|decode ...`: the runtime CLI of a backend chosen by name
(the same as `python -m runtimes.NAME encode|decode ...`)."""

from __future__ import annotations

import importlib

import click

from gsq_core.console import run_command

from . import BACKENDS, backend_choice, command


@click.command(
    help="Encode images to tokens and decode them back with the backend chosen by --backend; the rest of the "
    f"command line is that backend's ({command()} --backend onnx encode --help).",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--backend", required=True, type=backend_choice(), help="The runtime to use.")
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def main_command(backend: str, arguments: tuple[str, ...]) -> None:
    module = importlib.import_module(BACKENDS[backend].split(":")[0])
    from .cli import build_cli

    group = build_cli(backend, module.MODEL_HELP, module.cli_options())
    group.main(list(arguments), prog_name=f"{command()} --backend {backend}", standalone_mode=False)


def main() -> None:
    run_command(main_command, command())


if __name__ == "__main__":
    main()
