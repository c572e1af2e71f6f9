"""LoRA adapters files and the `lora` verb. An adapters file (`save_adapters`, `lora extract`) is one
safetensors file of adapter tensors ("lm.<...>.lora_A.default.weight", ... and, when the condition
projection was trained, "conditioner.<...>"), its metadata {"format": ADAPTERS_FORMAT, "lora": settings,
"meta"} (JSON strings). `load_adapters` puts them onto a base LM (and conditioner) built from the same model.

The `lora` verb (`lora_command`): `lora extract --ckpt RUN.ckpt --out adapters.safetensors`,
`lora merge --ckpt RUN.ckpt --out DIR` or `lora merge --base DIR --adapters FILE --out DIR`; the merged
model is a model folder with the base model's codec, which `generate --model` and `export` read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError, InputError, inputs_checked_by_library
from lightning_musicgen.lm.lora import LoRASettings, adapter_state_dict, add_lora, has_lora, merge_lora
from lightning_musicgen.model_files.files import ADAPTERS_FORMAT, plain_tensors, read_checkpoint
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.model_files.write import save_musicgen


def save_adapters_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], settings: dict,
                       meta: dict | None = None) -> Path:
    """One safetensors file of adapter tensors; its metadata holds {"format": ADAPTERS_FORMAT, "lora":
    settings, "meta": meta} (JSON strings). Written atomically (`data.shards.atomic_write_bytes`)."""
    from safetensors.torch import save
    from lightning_musicgen.data.shards import atomic_write_bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": ADAPTERS_FORMAT, "lora": json.dumps(settings), "meta": json.dumps(meta or {})}
    atomic_write_bytes(path, save(plain_tensors(tensors), metadata=metadata))
    return path


def read_adapters_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """An adapters file -> (settings dict, tensors, meta); one line naming the file when it is not one."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such adapters file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from exc
    if metadata.get("format") != ADAPTERS_FORMAT:
        raise CheckpointError(f"{path}: not a lightning_musicgen adapters file (format {metadata.get('format')!r})")
    return json.loads(metadata["lora"]), tensors, json.loads(metadata.get("meta", "{}"))


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
