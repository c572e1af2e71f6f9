"""AdamW with linear warmup and a cosine decay to `min_lr_ratio` (shared by both LightningModules)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_musicgen.errors import ConfigError


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: 0 -> 1 linearly over `warmup_steps`, then cosine to `min_lr_ratio` at
    `total_steps`, and `min_lr_ratio` after that."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Per-step LambdaLR over `warmup_cosine_factor` (step it every optimizer step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ConfigError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self._factor, last_epoch)

    def _factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


WEIGHT_DECAY_ON = ("matrices", "all")


def decay_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 decay_on: str = "matrices") -> list[dict]:
    """Parameter groups for AdamW. `decay_on="matrices"`: weight decay on matrices only (biases,
    norms and other 1-D parameters get none); "all": every parameter decays (audiocraft)."""
    if decay_on not in WEIGHT_DECAY_ON:
        raise ConfigError(f"weight_decay_on must be one of {WEIGHT_DECAY_ON}, got {decay_on!r}")
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        matrix = p.dim() >= 2 and "norm" not in name.lower()
        (decay if matrix or decay_on == "all" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def adamw_warmup_cosine(module: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                        weight_decay: float = 0.1, warmup_steps: int = 0, total_steps: int = 1,
                        min_lr_ratio: float = 0.0, eps: float = 1e-8, weight_decay_on: str = "matrices") -> dict:
    """What `configure_optimizers` returns for AdamW + warmup-cosine stepped every step."""
    fused = any(p.is_cuda for p in module.parameters())
    groups = decay_groups(module.named_parameters(), weight_decay, weight_decay_on)
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)
    sched = WarmupCosineLR(opt, warmup_steps, total_steps, min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}
