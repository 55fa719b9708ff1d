"""Errors that carry a one-line, user-facing message."""

from __future__ import annotations


class GSQError(Exception):
    """Base class: the message alone tells the user what went wrong and what to do."""


class ConfigError(GSQError, ValueError):
    """A model or quantizer configuration is invalid."""


class CheckpointError(GSQError):
    """A checkpoint file is missing, corrupt, unsafe or does not match its config."""


class InputError(GSQError, ValueError):
    """Images or token ids handed to the model have the wrong shape, type or range."""
