"""Errors that carry a one-line, user-facing message."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """An exception as one line for an `error:` message: its first line, or its type's name when it
    has no text (libraries raise multi-line and message-less errors alike)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class GSQError(Exception):
    """Base class: the message alone tells the user what went wrong and what to do."""


class ConfigError(GSQError, ValueError):
    """A model or quantizer configuration is invalid."""


class CheckpointError(GSQError):
    """A checkpoint file is missing, corrupt, unsafe or does not match its config."""


class InputError(GSQError, ValueError):
    """Images or token ids handed to the model have the wrong shape, type or range."""
