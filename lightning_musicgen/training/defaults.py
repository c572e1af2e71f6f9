"""The callbacks every fit of this package's LightningModules gets when the trainer config does not list
them itself (their `configure_callbacks` returns `reliability_callbacks(trainer)`): non-finite step guard,
checkpoint-and-exit on SIGTERM/SIGUSR1, RNG states in checkpoints, skipped-sample reporting. A config that
lists one of them (to change its options) keeps its own instance.
"""
from __future__ import annotations

from lightning_musicgen.training.nonfinite import NonFiniteGuard
from lightning_musicgen.training.resume import PreemptionCheckpoint, RNGStateCheckpoint
from lightning_musicgen.training.skipped import SkippedSamplesLogger


def reliability_callbacks(trainer) -> list:
    """The reliability callbacks missing from `trainer.callbacks` (fit only; empty otherwise)."""
    present = list(getattr(trainer, "callbacks", []) or [])
    wanted = [NonFiniteGuard, PreemptionCheckpoint, RNGStateCheckpoint, SkippedSamplesLogger]
    return [cls() for cls in wanted if not any(isinstance(cb, cls) for cb in present)]
