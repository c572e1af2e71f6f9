"""torch.compile as a trainer option: compile each transformer layer in place."""
from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_musicgen.errors import ConfigError
from lightning_musicgen.training.fsdp import DEFAULT_LAYERS, import_class


class CompileLayers(Callback):
    """At setup, `torch.compile` every instance of `layer_classes` in place (`nn.Module.compile`,
    so parameter names and checkpoints are unchanged, and DDP/FSDP wrap the compiled layers).
    Layer-wise compilation compiles one layer graph reused by all layers: fast to compile and
    robust to the KV cache / conditioning branches outside the layers. `layer_classes=[]`
    compiles the LightningModule's `forward` instead. Arguments are torch.compile's."""

    def __init__(self, layer_classes: list[str] = list(DEFAULT_LAYERS), backend: str = "inductor",
                 mode: Optional[str] = None, fullgraph: bool = False, dynamic: Optional[bool] = None):
        self.layer_classes = tuple(import_class(p) for p in layer_classes)
        self.compile_kwargs: dict[str, Any] = {"backend": backend, "mode": mode, "fullgraph": fullgraph,
                                               "dynamic": dynamic}
        self.compiled = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.compiled:
            return
        targets = [m for m in pl_module.modules() if isinstance(m, self.layer_classes)] if self.layer_classes \
            else [pl_module]
        if not targets:
            raise ConfigError(f"CompileLayers: no module of {[c.__name__ for c in self.layer_classes]} "
                              f"in {type(pl_module).__name__}")
        for module in targets:
            module.compile(**self.compile_kwargs)
        self.compiled = len(targets)
        rank_zero_info(f"CompileLayers: compiled {self.compiled} modules with {self.compile_kwargs}")
