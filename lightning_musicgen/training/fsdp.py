"""FSDP for the medium and large LMs: one FSDP unit and one activation checkpoint per
transformer layer, configured from YAML by class path."""
from __future__ import annotations

import importlib
from typing import Any, Literal

from torch import nn
from lightning.pytorch.strategies import FSDPStrategy

from lightning_musicgen.errors import ConfigError

DEFAULT_LAYERS = ("lightning_musicgen.lm.transformer.DecoderLayer",)


def import_class(path: str) -> type[nn.Module]:
    """`package.module.Class` -> the class, with a one-line error naming `path`."""
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"FSDP layer class {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"FSDP layer class {path!r} is not an nn.Module subclass")
    return cls


class TransformerFSDPStrategy(FSDPStrategy):
    """Lightning's `FSDPStrategy` with the wrapping written as class paths:

    - `layer_classes`: each instance becomes its own FSDP unit (parameters all-gathered just
      before the layer runs, freed after), the rest of the model is the root unit;
    - `activation_checkpointing`: recompute each such layer in the backward pass instead of
      storing its activations (about a third more compute, activations of one layer at a time);
    - mixed precision comes from the trainer's `precision` (bf16-mixed: bf16 compute and
      gradient reduction, fp32 master weights and optimizer states);
    - `use_orig_params=True` keeps parameter names for optimizer groups and torch.compile.

    Everything else (`sharding_strategy`, `state_dict_type`, `cpu_offload`, ...) is FSDPStrategy's.
    """

    def __init__(self, layer_classes: list[str] = list(DEFAULT_LAYERS), activation_checkpointing: bool = True,
                 sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
                 state_dict_type: Literal["full", "sharded"] = "full", **kwargs: Any):
        if not layer_classes:
            raise ConfigError("TransformerFSDPStrategy needs at least one entry in layer_classes")
        self.layer_classes = {import_class(p) for p in layer_classes}
        super().__init__(
            auto_wrap_policy=set(self.layer_classes),
            activation_checkpointing_policy=set(self.layer_classes) if activation_checkpointing else None,
            sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)

    def setup_environment(self) -> None:
        # Lightning refuses FSDPStrategy itself on CPU; a subclass passes its check but then fails
        # deep inside torch, so say it here
        if self.root_device.type != "cuda":
            raise ConfigError(f"TransformerFSDPStrategy needs CUDA GPUs (got {self.root_device.type}); "
                              "on CPU use configs/trainer/ddp.yaml")
        super().setup_environment()

    @property
    def fsdp_kwargs(self) -> dict[str, Any]:
        """What FullyShardedDataParallel(...) receives (auto_wrap_policy, use_orig_params, ...)."""
        return dict(self.kwargs, sharding_strategy=self.sharding_strategy)

    @property
    def activation_checkpointing_kwargs(self) -> dict[str, Any]:
        return dict(self._activation_checkpointing_kwargs)
