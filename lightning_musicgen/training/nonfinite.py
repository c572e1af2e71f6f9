"""NonFiniteGuard: a non-finite loss or gradient never reaches the weights, and a diverged run never ends 0.

Skipping. Before every optimizer step (Lightning's `on_before_optimizer_step`, which runs for automatic
optimisation, for `LightningOptimizer.step()` in manual optimisation and for `trainer.strategy.optimizer_step`),
the guard checks the loss of the step (the sum of what went through `backward` since the previous step: the
mean over accumulated micro-batches) and the global norm of the optimizer's gradients, before clipping. If any
is NaN/inf on any rank (one all-reduce of two numbers), all ranks drop the gradients (`p.grad = None`, so
Adam/AdamW/SGD leave those parameters and their state untouched) and the step is counted as skipped:
`train/nonfinite_steps` in the logger, a warning line the first time and at every power of two. The count
survives resume.

Divergence. Step numbers are the global step a batch starts at, i.e. the checkpoint whose weights computed its
loss (the `step` of the logged metrics). A training batch is unhealthy when it skipped a step, or (automatic
optimisation, `loss_explosion` > 0) when its loss, averaged over ranks, is above `loss_explosion` times the
running average of the healthy losses of this run (exponential, 0.98 per step): a loss exploding before it
overflows. The run has diverged when
  - `max_consecutive` training batches in a row skipped a step (the run stops there), or
  - training ends (max_steps, max_epochs, a stop request) inside an unhealthy stretch, i.e. its last batches are
    all unhealthy, holding at least `final_streak` skipped steps.
The divergence starts at the first batch of that stretch (step S): the weights of S and later produced the bad
losses, those of a checkpoint with global_step < S did not. While a stretch holds a skipped step, no
ModelCheckpoint writes (a checkpoint that falls due is not written). When the run has diverged, the guard
sets aside the checkpoints this run wrote with global_step >= S in every local ModelCheckpoint folder
(`checkpoint_io.set_aside_diverged`: renamed `NAME.diverged`, never deleted; `last.ckpt` becomes a hard link to
the newest checkpoint from before S when there is one), and ends the run with exit status 1 and one line
`error: ...` naming S, the skipped steps and the checkpoint that holds the last good weights (or that none does).
A loss that explodes but stays finite, or an isolated skipped step, only warns.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_musicgen.compat import skip_checkpoint_saves_at_this_step
from lightning_musicgen.errors import ConfigError
from lightning_musicgen.reliability import RunAborted

AVERAGE_DECAY = 0.98


def gradients_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor (on the gradients' device): True when every gradient element is finite
    (an overflowing global norm counts as non-finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(grads, 2.0))


@dataclass
class Stretch:
    """Consecutive unhealthy training batches: from `start` to `last` (global steps at the batches' start)."""
    start: int
    last: int
    batches: int = 0
    skipped: int = 0                          # skipped optimizer steps in it
    first_skip: int | None = None
    exploded: tuple[float, float] | None = None  # (loss, running average) at `start` when the loss exploded


class NonFiniteGuard(Callback):
    """Skip optimizer steps whose loss or gradients are non-finite; end a diverged run with status 1 (module
    docstring).

    Args:
        max_consecutive: training batches in a row with a skipped step after which the run stops. 0: never.
        final_streak: a run that ends inside an unhealthy stretch holding at least this many skipped steps has
            diverged and exits with status 1. 0: never.
        loss_explosion: a finite loss above this factor times the running average of the healthy losses makes
            its batch unhealthy (automatic optimisation only; GAN losses of manual optimisation swing by design).
            0: off.
    """

    def __init__(self, max_consecutive: int = 20, final_streak: int = 2, loss_explosion: float = 10.0):
        for name, value in (("max_consecutive", max_consecutive), ("final_streak", final_streak)):
            if value < 0:
                raise ConfigError(f"NonFiniteGuard: {name} must be >= 0, got {value}")
        if not (loss_explosion == 0 or loss_explosion > 1):
            raise ConfigError(f"NonFiniteGuard: loss_explosion must be 0 (off) or > 1, got {loss_explosion}")
        self.max_consecutive, self.final_streak, self.loss_explosion = max_consecutive, final_streak, loss_explosion
        self.skipped_steps = 0          # all skipped optimizer steps of the run (checkpointed)
        self.consecutive = 0            # training batches in a row with a skipped step
        self.streak_start = 0           # the first of them
        self.stretch: Stretch | None = None
        self.running_loss: float | None = None
        self._started = time.time()
        self._loss_sum: torch.Tensor | None = None
        self._batch_step, self._batch_skipped, self._batch_stepped = 0, 0, False
        self._batch_exploded: tuple[float, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    @property
    def holding_checkpoints(self) -> bool:
        """True while the run is in an unhealthy stretch with a skipped step: no checkpoint is written."""
        return self.stretch is not None and self.stretch.skipped > 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.time() - 1.0  # file times may be rounded down
        self.consecutive, self.stretch, self.running_loss = 0, None, None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._batch_stepped and self._loss_sum is not None:
            return  # between accumulated micro-batches: the batch of the coming step started earlier
        self._batch_step, self._batch_skipped, self._batch_stepped = trainer.global_step, 0, False
        self._batch_exploded = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach().float().sum()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss.to(self._loss_sum.device)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        has_loss = self._loss_sum is not None
        device = self._loss_sum.device if has_loss else pl_module.device
        grads_bad = (~gradients_finite(params)).float().to(device)
        loss = self._loss_sum if has_loss else torch.zeros((), device=device)
        self._loss_sum = None
        bad, total = trainer.strategy.reduce(torch.stack([grads_bad, loss]), reduce_op="sum").tolist()
        self._batch_stepped = True
        if bad == 0 and math.isfinite(total):
            if has_loss and self.loss_explosion and pl_module.automatic_optimization:
                self._track_loss(total / max(trainer.world_size, 1))
            return
        for p in params:
            p.grad = None
        self.skipped_steps += 1
        self._batch_skipped += 1
        n = self.skipped_steps
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
            rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, optimizer step skipped "
                           f"({n} skipped so far; logged as train/nonfinite_steps)")

    def _track_loss(self, loss: float) -> None:
        average = self.running_loss
        if average is not None and average > 0 and loss > self.loss_explosion * average:
            self._batch_exploded = (loss, average)
            return
        self.running_loss = loss if average is None else AVERAGE_DECAY * average + (1 - AVERAGE_DECAY) * loss

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._batch_stepped:  # not between accumulated micro-batches
            self._count_batch()
        pl_module.log("train/nonfinite_steps", float(self.skipped_steps), on_step=True, on_epoch=False,
                      batch_size=1, rank_zero_only=True)
        if self.holding_checkpoints:
            skip_checkpoint_saves_at_this_step(trainer)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            self._diverged(trainer, f"{self.consecutive} training steps in a row had a non-finite loss or gradient "
                                    f"(steps {self.streak_start}..{self.stretch.last}, optimizer steps skipped)")

    def _count_batch(self) -> None:
        step, skipped = self._batch_step, self._batch_skipped
        if not skipped and self._batch_exploded is None:
            self.stretch, self.consecutive = None, 0
            return
        if self.stretch is None:
            self.stretch = Stretch(start=step, last=step, exploded=self._batch_exploded if not skipped else None)
            if self._batch_exploded is not None:
                loss, average = self._batch_exploded
                rank_zero_warn(f"step {step}: loss {loss:.4g} is over {self.loss_explosion:g}x its running average "
                               f"{average:.4g}")
        stretch = self.stretch
        stretch.last, stretch.batches = step, stretch.batches + 1
        if skipped:
            stretch.skipped += skipped
            stretch.first_skip = step if stretch.first_skip is None else stretch.first_skip
        if skipped and not self.consecutive:
            self.streak_start = step
        self.consecutive = self.consecutive + 1 if skipped else 0

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stretch = self.stretch
        if self.final_streak and stretch is not None and stretch.skipped >= self.final_streak:
            self._diverged(trainer, f"training ended (global step {trainer.global_step}) while diverging")

    def _diverged(self, trainer: Trainer, why: str) -> None:
        """Set the diverged checkpoints aside (rank 0) and end the run with one line on every rank."""
        stretch = self.stretch
        start = stretch.start
        if stretch.exploded is not None:
            loss, average = stretch.exploded
            how = (f"the loss rose to {loss:.4g} at step {start} (over {self.loss_explosion:g}x its running average "
                   f"{average:.4g}), then was non-finite from step {stretch.first_skip}: {stretch.skipped} of the "
                   f"{stretch.batches} steps {start}..{stretch.last} skipped")
        else:
            how = (f"{stretch.skipped} optimizer step(s) of the {stretch.batches} training steps "
                   f"{start}..{stretch.last} had a non-finite loss or gradient and were skipped")
        where = self._set_aside(trainer, start) if trainer.is_global_zero else ""
        where = trainer.strategy.broadcast(where, src=0)
        raise RunAborted(f"{why}: the run diverged from step {start}: {how}; {where}")

    def _set_aside(self, trainer: Trainer, start: int) -> str:
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lightning_musicgen.training.checkpoint_io import _is_local, set_aside_diverged
        folders = {}
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and _is_local(str(callback.dirpath)):
                folders.setdefault(str(callback.dirpath), callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
        moved, goods, relinked = {}, [], []
        for folder, last_name in folders.items():
            result = set_aside_diverged(folder, start, self._started, last_name)
            if result.moved:
                moved[folder] = result.moved
            if result.good is not None:
                goods.append((result.good_step, result.good))
            if result.relinked:
                relinked.append(result.relinked)
        aside = "; ".join(f"{len(names)} checkpoint(s) of this run from step {start} on renamed *.diverged in "
                          f"{folder} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                          for folder, names in moved.items())
        if goods:
            step, path = max(goods)
            where = f"the last good weights are {path} (step {step})"
            if relinked:
                where += f", which {' and '.join(relinked)} now link(s) to"
            where += (f"; {aside}" if aside else "") + ". Lower the learning rate or check the data, then resume from it"
        else:
            where = (f"no checkpoint holds weights from before step {start}" + (f"; {aside}" if aside else "")
                     + ". Lower the learning rate or check the data and start again")
        return where
