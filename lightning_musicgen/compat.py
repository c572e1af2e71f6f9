"""The one place that touches private APIs of lightning and torch.

Everything here uses a name with a leading underscore (or a private class) of another project; when
those projects change, this file is the only one to update. Each function says what it fences.
"""
from __future__ import annotations

import signal


def is_accumulating(trainer) -> bool:
    """True between the micro-batches of one optimizer step (`fit_loop._should_accumulate`)."""
    return bool(trainer.fit_loop._should_accumulate())


def forward_signal_to_launched_processes(trainer, signum: int) -> None:
    """Send `signum` to the processes Lightning's launcher started (the other local DDP ranks when `python
    -m ...` launched them), as Lightning's own SIGTERM handler does (`launcher.kill`, private launcher
    classes). Under SLURM/torchrun every rank receives the signal itself and there is nothing to forward."""
    launcher = getattr(trainer.strategy, "launcher", None)
    kill = getattr(launcher, "kill", None)
    procs = getattr(launcher, "procs", None)
    if kill is not None and procs:
        kill(signal.Signals(signum))
