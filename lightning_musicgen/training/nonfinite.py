"""NonFiniteGuard: a non-finite loss or gradient never reaches the weights.

Before every optimizer step (Lightning's `on_before_optimizer_step`, which runs for automatic optimisation,
for `LightningOptimizer.step()` in manual optimisation and for `trainer.strategy.optimizer_step`), the guard
checks the losses that went through `backward` since the previous step (`on_before_backward`) and the global
norm of the optimizer's gradients, before clipping. If any is NaN/inf on any rank (one all-reduce of a bool),
all ranks drop the gradients (`p.grad = None`, so Adam/AdamW/SGD leave those parameters and their state
untouched) and the step is counted as skipped: `train/nonfinite_steps` in the logger, a warning line the
first time and at every power of two. After `max_consecutive` training batches in a row with a skipped step
the run stops with a non-zero exit status and one line naming the steps. The count survives resume.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_musicgen.errors import ConfigError
from lightning_musicgen.reliability import RunAborted


def gradients_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor (on the gradients' device): True when every gradient element is finite
    (an overflowing global norm counts as non-finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(grads, 2.0))


class NonFiniteGuard(Callback):
    """Skip optimizer steps whose loss or gradients are non-finite; stop after `max_consecutive` in a row.

    Args:
        max_consecutive: training batches in a row with a skipped step after which the run stops
            (status 1, `error: ...` naming the steps). 0 never stops.
    """

    def __init__(self, max_consecutive: int = 20):
        if max_consecutive < 0:
            raise ConfigError(f"NonFiniteGuard: max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped_steps = 0          # all skipped optimizer steps of the run (checkpointed)
        self.consecutive = 0            # batches in a row with a skipped step
        self.first_bad_step: int | None = None
        self._loss_finite: torch.Tensor | None = None
        self._skipped_in_batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._skipped_in_batch = 0

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite.to(self._loss_finite.device)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = gradients_finite(params)
        if self._loss_finite is not None:
            finite = finite & self._loss_finite.to(finite.device)
        self._loss_finite = None
        if trainer.strategy.reduce_boolean_decision(bool(finite), all=True):
            return
        for p in params:
            p.grad = None
        self.skipped_steps += 1
        self._skipped_in_batch += 1
        n = self.skipped_steps
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
            rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, optimizer step skipped "
                           f"({n} skipped so far; logged as train/nonfinite_steps)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._skipped_in_batch:
            if self.consecutive == 0:
                self.first_bad_step = trainer.global_step
            self.consecutive += 1
        elif not self._loss_finite_pending():
            self.consecutive, self.first_bad_step = 0, None
        pl_module.log("train/nonfinite_steps", float(self.skipped_steps), on_step=True, on_epoch=False,
                      batch_size=1, rank_zero_only=True)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise RunAborted(f"{self.consecutive} training steps in a row had a non-finite loss or gradient "
                             f"(steps {self.first_bad_step}..{trainer.global_step}); their optimizer steps were "
                             f"skipped and the run stops at step {trainer.global_step}. The saved checkpoints "
                             "hold finite weights: lower the learning rate or check the data, then resume.")

    def _loss_finite_pending(self) -> bool:
        # gradient accumulation: a micro-batch without an optimizer step neither breaks nor extends a streak
        return self._loss_finite is not None
