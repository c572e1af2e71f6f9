"""LoRA adapters on `MusicGenLM` through peft (nn level only): add, freeze around, list, merge.

Targets are groups of the LM's linear layers:
    "self_attn"  -> transformer.layers.*.self_attn.{qkv, out}      (qkv is one fused projection)
    "cross_attn" -> transformer.layers.*.cross_attn.{q, kv, out}   (text-conditioned models only)
    "ffn"        -> transformer.layers.*.ffn.{0, 2}
    "heads"      -> heads.*
Each targeted `nn.Linear` becomes a peft `lora.Linear`: y = W x + (alpha / r) * B A dropout(x), with
B = 0 at start, so the adapted LM starts exactly at the base. State-dict keys of targeted layers
become `<name>.base_layer.weight`, `<name>.lora_A.default.weight`, `<name>.lora_B.default.weight`.

`merge_lora` folds the adapters into the base weights and removes the peft layers, giving back
a plain `MusicGenLM` whose state dict has the original keys. `adapter_state_dict` lists the tensors an
adapters file holds; reading and writing those files (and the `lora` verb) is `model_files.adapters`.
No file I/O here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lightning_musicgen.config_dict import dataclass_from_dict
from lightning_musicgen.errors import ConfigError

TARGET_GROUPS = {
    "self_attn": ("self_attn.qkv", "self_attn.out"),
    "cross_attn": ("cross_attn.q", "cross_attn.kv", "cross_attn.out"),
    "ffn": ("ffn.0", "ffn.2"),
    "heads": ("heads.",),
}


@dataclass
class LoRASettings:
    """r: rank; alpha: scale numerator (the update is alpha / r * B A); dropout on the adapter input;
    targets: groups among TARGET_GROUPS; train_condition_projection: also train (fully) the
    conditioner's projection(s) into the LM width (text `proj`, melody `proj`)."""
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["self_attn", "cross_attn", "ffn"])
    train_condition_projection: bool = False

    def __post_init__(self):
        if int(self.r) < 1:
            raise ConfigError(f"lora.r={self.r}: must be >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout}: must be in [0, 1)")
        unknown = [t for t in self.targets if t not in TARGET_GROUPS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets={list(self.targets)}: choose among {sorted(TARGET_GROUPS)}")
        self.r, self.alpha, self.dropout, self.targets = int(self.r), float(self.alpha), float(self.dropout), list(self.targets)

    @classmethod
    def from_any(cls, value: "LoRASettings | dict | None") -> "LoRASettings | None":
        if value is None or isinstance(value, cls):
            return value
        return dataclass_from_dict(cls, value, "lora")

    def to_dict(self) -> dict:
        return asdict(self)


def target_module_names(lm: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the LM's linear layers in the target groups."""
    suffixes = tuple(s for t in targets for s in TARGET_GROUPS[t])
    names = []
    for name, module in lm.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        short = name.split("transformer.layers.", 1)[-1].split(".", 1)[-1] if "transformer.layers." in name else name
        if short in suffixes or any(s.endswith(".") and name.startswith(s) for s in suffixes):
            names.append(name)
    return names


def add_lora(lm: nn.Module, settings: LoRASettings) -> nn.Module:
    """Wrap the targeted linears of `lm` (in place) with peft LoRA layers; everything else in
    `lm` is frozen, only `lora_A`/`lora_B` train. Returns `lm`."""
    from peft import LoraConfig, inject_adapter_in_model
    names = target_module_names(lm, settings.targets)
    if not names:
        raise ConfigError(f"lora.targets={settings.targets}: no such layers in this LM "
                          "(cross_attn needs a text-conditioned model with cross-attention)")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names, bias="none")
    inject_adapter_in_model(config, lm)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)
    return lm


def has_lora(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


@torch.no_grad()
def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight (W += alpha / r * B A) and put the plain base
    layer back in place: the result has the module's original structure and state-dict keys."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    wrapped = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    return module


def condition_projection_names(conditioner: nn.Module) -> list[str]:
    """Parameter names of the conditioner's projections into the LM width (text and melody)."""
    return [n for n, _ in conditioner.named_parameters() if n.split(".")[-2:-1] == ["proj"]
            and n.split(".")[0] in ("text", "melody")]


def freeze_for_lora(conditioner: nn.Module, settings: LoRASettings) -> None:
    """LoRA training: the conditioner is frozen, except its projections if asked."""
    trainable = set(condition_projection_names(conditioner)) if settings.train_condition_projection else set()
    for name, p in conditioner.named_parameters():
        p.requires_grad_(name in trainable)


def adapter_state_dict(lm: nn.Module, conditioner: nn.Module | None = None,
                       settings: LoRASettings | None = None) -> dict[str, torch.Tensor]:
    """The tensors an adapters file holds: the LM's LoRA weights ("lm." prefix) and, when the
    projection trains, the conditioner's projections ("conditioner." prefix)."""
    state = {f"lm.{k}": v for k, v in lm.state_dict().items() if "lora_" in k}
    if conditioner is not None and settings is not None and settings.train_condition_projection:
        params = dict(conditioner.named_parameters())
        state |= {f"conditioner.{n}": params[n].detach() for n in condition_projection_names(conditioner)}
    return state
