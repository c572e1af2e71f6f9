"""`eval_mode(*modules)`: run with every submodule in eval mode, then restore each one's own flag.

    with eval_mode(lm, conditioner, codec):   # dropout off, whatever the caller's modes were
        ...
    # every submodule's `training` is back to what it was (mixed modes included)

Only the `training` attribute is touched (set directly, so overridden `train()` methods with side
effects are not called); parameters, buffers, devices, dtypes and `requires_grad` are not.
`None` entries are skipped; nesting is fine.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    flags: dict[int, tuple[torch.nn.Module, bool]] = {}
    for module in modules:
        if module is not None:
            for m in module.modules():
                flags.setdefault(id(m), (m, m.training))
    try:
        for m, _ in flags.values():
            m.training = False
        yield
    finally:
        for m, training in flags.values():
            m.training = training
