"""How a training run ends early: one line on stderr and a non-zero exit status, never a hang.

`RunAborted` is raised for conditions a run cannot continue from (no decodable sample, a checkpoint that
cannot be written or read, too many non-finite steps in a row). It is a `SystemExit`, like Lightning's own
`SIGTERMException`: Lightning still runs its interrupt handling (loggers finalized as failed, data loader
workers stopped, callbacks' `on_exception`), and the interpreter prints only the message. `SignalExit` ends a
run after a signal (status 128 + signal number, as a shell reports a process killed by it).
"""
from __future__ import annotations

import signal


class RunAborted(SystemExit):
    """Ends the run with `error: MESSAGE` on stderr and exit status 1."""

    def __init__(self, message: str):
        self.message = " ".join(str(message).split())  # one line
        super().__init__(f"error: {self.message}")


class SignalExit(SystemExit):
    """Ends the run after `signum` was handled (checkpoint written); exit status 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signal.Signals(signum)
        super().__init__(128 + int(signum))

