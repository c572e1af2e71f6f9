"""LoRA adapters on `MusicGenLM` through peft: add, save alone, load onto a base, merge.

Targets are groups of the LM's linear layers:
    "self_attn"  -> transformer.layers.*.self_attn.{qkv, out}      (qkv is one fused projection)
    "cross_attn" -> transformer.layers.*.cross_attn.{q, kv, out}   (text-conditioned models only)
    "ffn"        -> transformer.layers.*.ffn.{0, 2}
    "heads"      -> heads.*
Each targeted `nn.Linear` becomes a peft `lora.Linear`: y = W x + (alpha / r) * B A dropout(x), with
B = 0 at start, so the adapted LM starts exactly at the base. State-dict keys of targeted layers
become `<name>.base_layer.weight`, `<name>.lora_A.default.weight`, `<name>.lora_B.default.weight`.

Adapters file (`save_adapters`): one safetensors file holding only the adapter tensors (keys
"lm.<...>.lora_A.default.weight", ...) plus, when the condition projection was trained, its
weights ("conditioner.<...>"); `model_files` reads and writes the file. `load_adapters` puts them onto
a base LM (and conditioner) built from the same model.
`merge_lora` folds the adapters into the base weights and removes the peft layers, giving back
a plain `MusicGenLM` whose state dict has the original keys.

The `lora` verb (`lora_command`): `lora extract --ckpt RUN.ckpt --out adapters.safetensors`,
`lora merge --ckpt RUN.ckpt --out DIR` or `lora merge --base DIR --adapters FILE --out DIR`; the merged
model is a model folder (see `model_files`) with the base model's codec, which `generate --model`
and `export` read.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from lightning_musicgen.config_dict import dataclass_from_dict
from lightning_musicgen.errors import CheckpointError, ConfigError, InputError, inputs_checked_by_library
from lightning_musicgen.model_files import (load_musicgen, read_adapters_file, read_checkpoint, save_adapters_file,
                                            save_musicgen)

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


def save_adapters(path: str | os.PathLike, lm: nn.Module, conditioner: nn.Module | None,
                  settings: LoRASettings, meta: dict | None = None) -> Path:
    """Write the adapters (and trained projections) alone as one safetensors file."""
    state = adapter_state_dict(lm, conditioner, settings)
    if not any(k.startswith("lm.") for k in state):
        raise InputError("save_adapters: the LM has no LoRA layers")
    return save_adapters_file(path, state, settings.to_dict(), meta)


def read_adapters(path: str | os.PathLike) -> tuple[LoRASettings, dict[str, torch.Tensor], dict]:
    """An adapters file -> (settings, tensors, meta)."""
    settings, tensors, meta = read_adapters_file(path)
    return LoRASettings.from_any(settings), tensors, meta


def load_adapters(path: str | os.PathLike, lm: nn.Module, conditioner: nn.Module | None = None) -> LoRASettings:
    """Add the file's LoRA layers to a base `lm` (plain, as loaded from the base model) and load
    their weights; the projections too when the file carries them. Returns the settings."""
    settings, tensors, _ = read_adapters(path)
    if not has_lora(lm):
        add_lora(lm, settings)
    lm_state = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
    expected = {k for k in lm.state_dict() if "lora_" in k}
    if set(lm_state) != expected:
        missing, extra = sorted(expected - set(lm_state)), sorted(set(lm_state) - expected)
        raise CheckpointError(f"{path}: adapters do not fit this LM (missing {missing[:3]}, unexpected {extra[:3]})")
    lm.load_state_dict(lm_state, strict=False)
    cond_state = {k[len("conditioner."):]: v for k, v in tensors.items() if k.startswith("conditioner.")}
    if cond_state:
        if conditioner is None:
            raise CheckpointError(f"{path}: carries condition projections; pass the conditioner")
        result = conditioner.load_state_dict(cond_state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{path}: projections do not fit this conditioner ({result.unexpected_keys[:3]})")
    return settings


# ---- the `lora` verb: extract adapters from a checkpoint, merge them into a model folder ----------

def extract(ckpt_path: str | Path, out: str | Path) -> Path:
    """The adapters (and trained projections) of a LoRA MusicGenModule checkpoint -> safetensors."""
    if not Path(ckpt_path).is_file():
        raise InputError(f"{ckpt_path}: not a LoRA fine-tuning checkpoint (not a file)")
    ckpt = read_checkpoint(ckpt_path)
    info = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if not info.get("lora"):
        raise InputError(f"{ckpt_path}: not a LoRA fine-tuning checkpoint (no lora in its hyper_parameters)")
    settings = LoRASettings.from_any(info["lora"])
    state = ckpt["state_dict"]
    tensors = {k: v for k, v in state.items() if k.startswith("lm.") and "lora_" in k}
    if settings.train_condition_projection:
        tensors |= {k: v for k, v in state.items() if k.startswith(("conditioner.text.proj.", "conditioner.melody.proj."))}
    return save_adapters_file(out, tensors, settings.to_dict(), {"checkpoint": str(ckpt_path),
                                                                  "init_from": info.get("init_from"),
                                                                  "global_step": ckpt.get("global_step")})


def merge(out: str | Path, ckpt: str | Path | None = None, base: str | Path | None = None,
          adapters: str | Path | None = None) -> Path:
    """Fold LoRA adapters into the base weights and write a model folder."""
    if ckpt is not None:
        lm, conditioner, codec, cfg = load_musicgen(ckpt, use_ema=False)  # LoRA checkpoints load merged
        source = {"merged_from": str(ckpt)}
    elif base is not None and adapters is not None:
        lm, conditioner, codec, cfg = load_musicgen(base)
        load_adapters(adapters, lm, conditioner)
        merge_lora(lm)
        source = {"merged_from": str(base), "adapters": str(adapters)}
    else:
        raise InputError("lora merge: pass --ckpt, or --base and --adapters")
    meta = dict(cfg.get("meta") or {}) | source
    return save_musicgen(out, lm.float(), conditioner, cfg["conditioner"], codec, meta=meta,
                         max_duration=cfg.get("max_duration", 30.0),
                         text_encoder_carried=cfg["text_encoder_carried"])


def lora_command(action: Literal["extract", "merge"], /, *, out: str, ckpt: Optional[str] = None,
                 base: Optional[str] = None, adapters: Optional[str] = None) -> None:
    """LoRA adapters: extract them, or merge them into the base model.

    extract: the adapters of a LoRA fine-tuning checkpoint (--ckpt) -> a small safetensors file (--out).
    merge: fold adapters into the base weights -> a model folder (--out) for generate/export, from a
    LoRA checkpoint (--ckpt) or from a base model and an adapters file (--base and --adapters).

    Args:
        action: extract or merge.
        out: extract: the adapters file to write (.safetensors); merge: the merged model folder to write.
        ckpt: MusicGenModule checkpoint of a LoRA fine-tuning run.
        base: merge: the base model (model folder, converted file or checkpoint) the adapters were trained on.
        adapters: merge: adapters file (lora extract, or MusicGenModule.save_adapters).
    """
    with inputs_checked_by_library():
        if action == "extract":
            if ckpt is None:
                raise InputError("lora extract: --ckpt is required")
            written = extract(ckpt, out)
        else:
            written = merge(out, ckpt, base, adapters)
    print(f"wrote {written}")
