"""How a training run ends early: one line on stderr and a non-zero exit status, never a hang.

`RunAborted` is raised for conditions a run cannot continue from (no decodable sample, a checkpoint that
cannot be written or read, too many non-finite steps in a row). It is a `SystemExit`, like Lightning's own
`SIGTERMException`: Lightning still runs its interrupt handling (loggers finalized as failed, data loader
workers stopped, callbacks' `on_exception`), and the interpreter prints only the message. `SignalExit` ends a
run after a signal (status 128 + signal number, as a shell reports a process killed by it).

`reliability_callbacks(trainer)` lists the callbacks every run of this package's LightningModules gets when
the trainer config does not list them itself (their `configure_callbacks` returns it): non-finite step
guard, checkpoint-and-exit on SIGTERM/SIGUSR1, RNG states in checkpoints, skipped-sample reporting. A config
that lists one of them (to change its options) keeps its own instance.
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


def reliability_callbacks(trainer) -> list:
    """The reliability callbacks missing from `trainer.callbacks` (fit only; empty otherwise)."""
    from lightning_musicgen.training import (NonFiniteGuard, PreemptionCheckpoint, RNGStateCheckpoint,
                                             SkippedSamplesLogger)
    present = list(getattr(trainer, "callbacks", []) or [])
    wanted = [NonFiniteGuard, PreemptionCheckpoint, RNGStateCheckpoint, SkippedSamplesLogger]
    return [cls() for cls in wanted if not any(isinstance(cb, cls) for cb in present)]
