"""Running a click command the way every CLI here does: one-line errors, no tracebacks."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

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
    except Terminated as signalled:
        sys.exit(128 + signalled.signum)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (GSQError, FileExistsError) as error:
        click.echo(f"error: {error}", err=True)
        codes = exit_codes or {}
        sys.exit(next((code for kind, code in codes.items() if isinstance(error, kind)), EXIT_ERROR))


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived within termination_unwinds(): the work unwinds like Ctrl-C
    (KeyboardInterrupt), so every `finally` and `with` removes what it staged; run_command then
    exits with 128 + the signal number, as the signal itself would have."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_PENDING: list[int] = []  # signals received within termination_unwinds(), until the outermost one exits
_DEPTH = [0]


def raise_if_terminated() -> None:
    """Raise Terminated if a signal arrived whose exception was swallowed on the way (Python ignores
    exceptions raised in __del__ methods and weakref callbacks): call before committing work."""
    if _PENDING:
        raise Terminated(_PENDING[0])


@contextlib.contextmanager
def termination_unwinds() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise Terminated (main thread only; a SIGHUP that nohup set to be
    ignored stays ignored), and the block cannot end normally after one arrived. Outside, and in
    other threads, the handlers are left as they were."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _PENDING.append(signum)
        raise Terminated(signum)

    previous = {}
    for kind in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(kind) is not signal.SIG_IGN:
            previous[kind] = signal.signal(kind, handler)
    _DEPTH[0] += 1
    try:
        yield
        raise_if_terminated()
    finally:
        _DEPTH[0] -= 1
        for kind, old in previous.items():
            signal.signal(kind, old)
        if _DEPTH[0] == 0:
            _PENDING.clear()
