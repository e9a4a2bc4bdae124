"""Errors seqctr raises for bad input; the CLI prints them as one line (no traceback unless --debug)."""
from __future__ import annotations


class SeqctrError(Exception):
    """Base class for user-facing errors: the message must say what to fix."""


class InputError(SeqctrError):
    """Bad input data. The message names the file, the column and the row or user where known."""

    def __init__(self, message: str, *, path=None, column=None, row=None, user=None, field=None):
        parts = []
        if path is not None:
            parts.append(f"file {path}")
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            parts.append(f"row {row}")
        if user is not None:
            parts.append(f"user {user!r}")
        where = (", ".join(parts) + ": ") if parts else ""
        super().__init__(where + message)
        self.path, self.column, self.row, self.user = path, column, row, user
        self.field = field          # the request field at fault (the service's error body names it)


class TooLarge(InputError):
    """Input over a size cap (e.g. a request's history over ``max_history``); the service answers 413."""


class ConfigError(SeqctrError):
    """A config file or --set override that cannot be applied."""


def check_keys(values: dict, known, where: str) -> None:
    """Refuse keys of a config block that nothing reads: a typo must not silently do nothing."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
