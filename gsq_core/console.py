"""Running a click command the way every CLI here does: one-line errors, no tracebacks."""

from __future__ import annotations

import sys

import click

from .errors import GSQError

EXIT_ERROR = 2


def run_command(command: click.Command, prog_name: str, exit_codes: dict[type[Exception], int] | None = None) -> None:
    """Run `command`; a user mistake (GSQError, FileExistsError) prints `error: ...` and exits with
    the code of the first matching type in exit_codes, else EXIT_ERROR; Ctrl-C exits 130."""
    try:
        command(standalone_mode=False, prog_name=prog_name)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (GSQError, FileExistsError) as error:
        click.echo(f"error: {error}", err=True)
        codes = exit_codes or {}
        sys.exit(next((code for kind, code in codes.items() if isinstance(error, kind)), EXIT_ERROR))
