"""EMA: the exponential moving average of a module's weights, stepped once per optimizer step.

    ema = EMA(model, decay=0.999)        # a frozen copy: `ema.module`
    ema.update(model, step=global_step)  # after each batch; averages only when `step` advanced

`update` is called after every training batch and averages only when the optimizer step counter
moved, so the decay does not depend on `accumulate_grad_batches` (nor on skipped steps).
Parameters are averaged (`ema = decay * ema + (1 - decay) * live`); buffers (e.g. RVQ codebooks,
themselves running averages) are copied. The average lives in the owner's state dict once, under
`<attribute>.module.*`, with the last averaged step in `<attribute>.step`.

Used by MusicGenModule (the LM) and CodecModule (the generator). Lightning's `WeightAveraging`
callback (in every Lightning this package supports) is not used: it averages the whole
LightningModule, so it would copy the frozen text encoder and the discriminators too, and its
checkpoints hold the module twice (the average, and the live weights as `current_model_state`).
"""
from __future__ import annotations

import copy

import torch

from lightning_musicgen.compat import foreach_lerp_
from lightning_musicgen.errors import ConfigError
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("step", torch.tensor(-1, dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()  # the average never runs dropout
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Average `model` into the copy if optimizer step `step` was not averaged yet."""
        if step <= int(self.step):
            return False
        ema_params = [p for p in self.module.parameters()]
        live_params = [p.detach().to(q.dtype) for p, q in zip(model.parameters(), ema_params)]
        foreach_lerp_(ema_params, live_params, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.step.fill_(step)
        return True
