"""Fine-tuning helpers for `MusicGenModule`: start from a pretrained model, derive gradient
accumulation from a global batch size, pick a micro-batch for a memory budget.

`load_pretrained(path)` is the one place that reads a model to start from: a converted file
(`convert --from-hf`), a MusicGenModule checkpoint (LoRA adapters in it are merged), or a model
folder (`export`, where `MusicGen.from_pretrained` exists). It returns the LM, its conditioner (with
the text encoder weights and tokenizer, no original folder needed) and where the codec comes from.

Overrides: a fine-tuning config may change only training-time settings of the pretrained model
(`TRAINING_LM_KEYS`, `TRAINING_CONDITIONER_KEYS`, `TRAINING_TEXT_KEYS`); a differing architecture
key is an error naming the key.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_musicgen.lm.conditioners import ConditionProvider
from lightning_musicgen.lm.model import MusicGenLM

TRAINING_LM_KEYS = ("dropout", "gradient_checkpointing", "attention_backend")
TRAINING_CONDITIONER_KEYS = ("cfg_dropout", "cfg_per_sample", "attribute_dropout")
TRAINING_TEXT_KEYS = ("word_dropout", "freeze", "max_length")


@dataclass
class Pretrained:
    """What `load_pretrained` gives: modules on CPU in fp32, their configs, and the codec source
    (a path `CompressionModel.from_checkpoint` reads, or None)."""
    lm: MusicGenLM
    conditioner: ConditionProvider
    conditioner_config: dict
    codec_checkpoint: str | None
    source: str


def load_pretrained(path: str | os.PathLike) -> Pretrained:
    """A converted file, a MusicGenModule checkpoint or a model folder -> `Pretrained`."""
    path = Path(path).expanduser()
    if path.is_dir():
        from lightning_musicgen.generation import MusicGen
        if not hasattr(MusicGen, "from_pretrained"):
            raise ValueError(f"init_from {path}: a folder, but this version reads model folders only through "
                             "MusicGen.from_pretrained (missing); pass a converted file or a checkpoint")
        model = MusicGen.from_pretrained(path, device="cpu", dtype=torch.float32)
        lm, conditioner = model.lm.float().train(), model.conditioner.train()
        return Pretrained(lm, conditioner, _conditioner_config_of(conditioner, getattr(model, "conditioner_config", None)),
                          getattr(model, "codec_checkpoint", None) or str(path), str(path))
    if not path.is_file():
        raise FileNotFoundError(f"init_from {path}: no such file or folder")
    from lightning_musicgen.lm.checkpoint import load_musicgen
    lm, conditioner, _, cfg = load_musicgen(path, load_codec_model=False)
    codec = cfg.get("codec") or {}
    codec_checkpoint = codec.get("path") or (str(path) if codec.get("config") is not None else None)
    if codec_checkpoint and not Path(codec_checkpoint).is_absolute() and not Path(codec_checkpoint).exists():
        beside = path.parent / codec_checkpoint  # a relative reference, resolved next to the checkpoint
        codec_checkpoint = str(beside) if beside.exists() else codec_checkpoint
    return Pretrained(lm.train(), conditioner.train(), dict(cfg["conditioner"]), codec_checkpoint, str(path))


def _conditioner_config_of(conditioner: ConditionProvider, config: dict | None) -> dict:
    if config is None:
        raise ValueError("the model folder does not record its conditioner config")
    return dict(config)


def _check_overrides(what: str, given: dict, pretrained: dict, allowed: tuple[str, ...]) -> dict:
    """The allowed keys of `given`; any other key must equal the pretrained value (or be None)."""
    out = {}
    for key, value in given.items():
        if key in allowed:
            out[key] = value
        elif value is not None and key in pretrained and pretrained[key] != value:
            raise ValueError(f"{what}.{key}={value!r} differs from the init_from model's {pretrained[key]!r}; "
                             f"a fine-tuning config may only change {', '.join(allowed)}")
        elif value is not None and key not in pretrained:
            raise ValueError(f"{what}.{key}: not a setting of the init_from model")
    return out


def apply_overrides(pre: Pretrained, lm_config: dict | None, conditioner_config: dict | None
                    ) -> tuple[MusicGenLM, ConditionProvider, dict]:
    """The pretrained LM / conditioner with the config's training-time settings (dropout, gradient
    checkpointing, CFG and word dropout, ...), weights unchanged. Set in place where the setting is a
    plain attribute; the LM is rebuilt only for a new dropout."""
    lm = pre.lm
    lm_over = {k: v for k, v in _check_overrides("model.init_args.lm", dict(lm_config or {}), lm.config,
                                                 TRAINING_LM_KEYS).items() if lm.config.get(k) != v}
    if "dropout" in lm_over:
        new = MusicGenLM(**{**lm.config, **lm_over})
        new.load_state_dict(lm.state_dict())
        lm = new
    else:
        if "gradient_checkpointing" in lm_over:
            lm.transformer.gradient_checkpointing = bool(lm_over["gradient_checkpointing"])
        if "attention_backend" in lm_over:
            for module in lm.modules():
                if hasattr(module, "backend"):
                    module.backend = lm_over["attention_backend"]
        lm.config.update(lm_over)
    cond_cfg = dict(pre.conditioner_config)
    given = dict(conditioner_config or {})
    text_given = given.pop("text", None) or {}
    cond_over = _check_overrides("model.init_args.conditioner", given, cond_cfg, TRAINING_CONDITIONER_KEYS)
    conditioner = pre.conditioner
    for key, value in cond_over.items():
        if key == "attribute_dropout":
            unknown = set(value or {}) - {"text", "melody"}
            if unknown:
                raise ValueError(f"model.init_args.conditioner.attribute_dropout: unknown attributes {sorted(unknown)}")
            value = dict(value or {})
        setattr(conditioner, key, value)
    cond_cfg.update(cond_over)
    if text_given:
        if not cond_cfg.get("text"):
            raise ValueError("model.init_args.conditioner.text: the init_from model has no text conditioner")
        text_over = _check_overrides("model.init_args.conditioner.text", text_given, cond_cfg["text"],
                                     TRAINING_TEXT_KEYS)
        text = conditioner.text
        for key, value in text_over.items():
            setattr(text, key, value)
        if "freeze" in text_over:
            text.encoder.requires_grad_(not text_over["freeze"])
        cond_cfg["text"] = {**cond_cfg["text"], **text_over}
    return lm, conditioner, cond_cfg


# ---- batch sizes ------------------------------------------------------------------------------
def accumulation(global_batch_size: int, micro_batch: int, world_size: int) -> int:
    """Optimizer-step batch = micro_batch x world_size x accumulation; it must equal global_batch_size."""
    per_step = micro_batch * world_size
    if global_batch_size < 1 or global_batch_size % per_step:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of micro-batch {micro_batch} "
                         f"x {world_size} devices = {per_step}")
    return global_batch_size // per_step


def micro_batch_for_budget(fits, budget_bytes: float, global_batch_size: int | None, world_size: int,
                           upper: int = 1024) -> int:
    """The largest micro-batch whose estimated peak (`fits(b) -> bytes`) is within the budget; with a
    global batch size, the largest such divisor of global_batch_size / world_size."""
    if global_batch_size is not None and global_batch_size % world_size:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of {world_size} devices")
    limit = global_batch_size // world_size if global_batch_size else upper
    candidates = [b for b in range(1, limit + 1) if global_batch_size is None or limit % b == 0]
    best = None
    for b in candidates:  # the estimate grows with b: stop at the first that does not fit
        if fits(b) > budget_bytes:
            break
        best = b
    if best is None:
        raise ValueError(f"memory_budget_gb={budget_bytes / 2**30:.1f}: even micro-batch 1 needs "
                         f"{fits(1) / 2**30:.1f} GiB by the estimate")
    return best


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else math.inf
