"""Errors a user can fix: a bad option, file, config value or checkpoint.

Library code raises these (never `sys.exit`); the command line (`lightning_musicgen.__main__`) prints
any `UserError` as one line `error: MESSAGE` and exits with status 2, without a traceback. Anything
else is a bug and keeps its traceback. Messages are one line that names the bad thing (option, key,
file, value) and what was expected.

Every class derives from `ValueError` so that code catching `ValueError` keeps working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Base class: a mistake in what the user gave, reported in one line."""


class ConfigError(UserError):
    """A configuration value that cannot work (e.g. `batch_size: 0`), raised where it is checked."""


class InputError(UserError):
    """A bad command-line input: missing or wrong-kind file, option out of range, unusable folder."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or of the wrong kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist (also a FileNotFoundError)."""

    def __str__(self) -> str:  # FileNotFoundError would format "[Errno ...]" when given errno args
        return str(self.args[0]) if self.args else "checkpoint not found"


class AudioReadError(UserError, RuntimeError):
    """An audio file that cannot be read; the message names the file and the reason.

    Also a RuntimeError, as it always was."""


def user_error_in(exc: BaseException | None) -> UserError | None:
    """The first UserError in `exc`'s chain (`__cause__`, then `__context__`), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(message: str) -> str:
    """The first non-empty line of a message (multi-line library messages are cut, not wrapped)."""
    for line in str(message).splitlines():
        if line.strip():
            return line.strip()
    return ""
