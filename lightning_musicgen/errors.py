"""Errors a user can fix: a bad option, file, config value or checkpoint.

Library code raises these (never `sys.exit`); the command line (`lightning_musicgen.__main__`) prints
any `UserError` as one line `error: MESSAGE` and exits with status 2, and any `RunError` (a run that
failed for a reason outside the user's inputs, e.g. an external program) as one line and status 1,
both without a traceback. Anything else is a bug and keeps its traceback. Messages are one line that
names the bad thing (option, key, file, value) and what was expected.

Every `UserError` derives from `ValueError` so that code catching `ValueError` keeps working.
Library code raises the type that says what is wrong where it finds it: `ConfigError` in constructors
and config checks, `InputError`/`MissingFileError` for data and command-line inputs, `CheckpointError`/
`CheckpointNotFoundError` for model files. A bare `ValueError` inside the library is a broken contract
(a caller's bug: a wrong tensor shape) and keeps its traceback.
"""
from __future__ import annotations

from contextlib import contextmanager


class UserError(ValueError):
    """Base class: a mistake in what the user gave, reported in one line."""


class ConfigError(UserError):
    """A configuration value that cannot work (e.g. `batch_size: 0`), raised where it is checked."""


class InputError(UserError):
    """A bad command-line input: missing or wrong-kind file, option out of range, unusable folder."""


class SubmitError(InputError):
    """A bad `submit` input (option, cluster config, job spec)."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file or folder (data, index, weights, soundfont) that does not exist (also a FileNotFoundError)."""

    def __str__(self) -> str:  # FileNotFoundError would format "[Errno ...]" when given errno args
        return str(self.args[0]) if self.args else "file not found"


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or of the wrong kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist (also a FileNotFoundError)."""

    def __str__(self) -> str:  # FileNotFoundError would format "[Errno ...]" when given errno args
        return str(self.args[0]) if self.args else "checkpoint not found"


class AudioReadError(UserError, RuntimeError):
    """An audio file that cannot be read; the message names the file and the reason.

    Also a RuntimeError, as it always was."""


class RunError(RuntimeError):
    """A run that failed although its inputs were fine (an external program failed or is missing):
    one line naming what failed, exit status 1."""


@contextmanager
def inputs_checked_by_library():
    """Re-raise a `FileNotFoundError`/`ValueError` from the third-party readers a verb calls (transformers,
    safetensors, torch.load, soundfile report a bad file with those built-in types) as an `InputError` with
    the same (first) line, so the command line prints it as one."""
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(one_line(str(exc)) or type(exc).__name__) from exc


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
