"""`SkippedSamplesLogger`: reports the samples a datamodule skipped (corrupt or unusable) during training.

Reads `trainer.datamodule.skipped_samples` (running total of this process) and `skip_reasons` (the split by
reason), which `lightning_musicgen.data.AudioDataModule` and `TokenDataModule` keep; any other datamodule is
ignored. Added to every fit of this package's modules (`lightning_musicgen.training.defaults.reliability_callbacks`).
"""
from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info


class SkippedSamplesLogger(Callback):
    """Report the datamodule's skipped samples: `train/skipped_samples` to the logger every `every_n_steps`
    steps, `skipped` on the progress bar once non-zero, and a summary line by reason at the end of training.
    Added to every fit of this package's modules (`lightning_musicgen.training.defaults.reliability_callbacks`)."""

    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "skipped_samples"):
            return
        count = dm.skipped_samples
        if trainer.global_step % self.every_n_steps == 0:
            pl_module.log("train/skipped_samples", float(count), on_step=True, on_epoch=False,
                          rank_zero_only=True, batch_size=1)
        if count:
            pl_module.log("skipped", float(count), prog_bar=True, logger=False, on_step=True, on_epoch=False,
                          rank_zero_only=True, batch_size=1)

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "skipped_samples", 0):
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(dm.skip_reasons.items()))
            rank_zero_info(f"[lightning_musicgen] skipped {dm.skipped_samples} training sample(s) ({reasons})")
