"""Fine-tuning helpers for `MusicGenModule`: start from a pretrained model, derive gradient
accumulation from a global batch size, pick a micro-batch for a memory budget.

`load_pretrained(path)` is the one place that reads a model to start from, through
`model_files.read.load_musicgen`: a model folder (`convert`, `export`), a converted file of earlier
versions, or a MusicGenModule checkpoint (LoRA adapters in it are merged). It returns the LM, its
conditioner (with its trained projections and the text encoder) and where the codec comes from.

Overrides: a fine-tuning config may change only training-time settings of the pretrained model
(`TRAINING_LM_KEYS`, `TRAINING_CONDITIONER_KEYS`, `TRAINING_TEXT_KEYS`). The configs are typed
(`LMConfig`, `ConditionerConfig`: LightningCLI fills every field): their training-time fields
always apply, and another field counts as set when it differs from the config class's default; it
must then equal the pretrained value, else one line names the key.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from lightning_musicgen.errors import CheckpointNotFoundError, ConfigError
from lightning_musicgen.lm.conditioners import ConditionerConfig, ConditionProvider, TextConfig
from lightning_musicgen.lm.model import LMConfig, MusicGenLM

TRAINING_LM_KEYS = ("dropout", "gradient_checkpointing", "attention_backend")
TRAINING_CONDITIONER_KEYS = ("cfg_dropout", "cfg_per_sample", "attribute_dropout")
TRAINING_TEXT_KEYS = ("word_dropout", "freeze", "max_length")


@dataclass
class Pretrained:
    """What `load_pretrained` gives: modules on CPU in fp32, the conditioner's config, and the codec
    source (a path `model_files.codec.load_codec` reads, or None)."""
    lm: MusicGenLM
    conditioner: ConditionProvider
    conditioner_config: ConditionerConfig
    codec_checkpoint: str | None
    source: str


def load_pretrained(path: str | os.PathLike) -> Pretrained:
    """A model folder, a converted file or a MusicGenModule checkpoint -> `Pretrained`."""
    from lightning_musicgen.model_files.codec import load_codec
    from lightning_musicgen.model_files.files import resolve_reference
    from lightning_musicgen.model_files.read import load_musicgen
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"init_from {path}: no such file or folder")
    # the codec stays a path (loaded when first needed, referenced by hash in checkpoints)
    lm, conditioner, _, info = load_musicgen(path, load_codec_model=False)
    codec_checkpoint = None
    if path.is_dir():
        if (path / "codec").is_dir():
            codec_checkpoint = str(path)  # load_codec reads a MusicGen folder's codec
    elif info.get("codec_reference"):
        codec_checkpoint = str(resolve_reference(info["codec_reference"], path, "codec"))
    else:
        try:
            load_codec(path)  # a converted file with its codec embedded
            codec_checkpoint = str(path)
        except ValueError:
            codec_checkpoint = None
    return Pretrained(lm.float().train(), conditioner.float().train(), info["conditioner"], codec_checkpoint,
                      str(path))


def _given(config, default, training: tuple[str, ...]) -> dict:
    """The fields of a typed config (or the keys of a dict) that count as set: a dict's keys; of a
    dataclass, the training-time fields and the others that differ from the class default (None
    never counts)."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if v is not None}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    defaults = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
    return {k: v for k, v in values.items() if v is not None and (k in training or v != defaults[k])}


def _check_overrides(what: str, given: dict, pretrained: dict, allowed: tuple[str, ...]) -> dict:
    """The allowed keys of `given`; any other key must equal the pretrained value."""
    out = {}
    for key, value in given.items():
        if key in allowed:
            out[key] = value
        elif key not in pretrained:
            raise ConfigError(f"{what}.{key}: not a setting of the init_from model")
        elif pretrained[key] != value:
            raise ConfigError(f"{what}.{key}={value!r} differs from the init_from model's {pretrained[key]!r}; "
                              f"a fine-tuning config may only change {', '.join(allowed)}")
    return out


def apply_overrides(pre: Pretrained, lm_config: LMConfig | dict | None,
                    conditioner_config: ConditionerConfig | dict | None
                    ) -> tuple[MusicGenLM, ConditionProvider, ConditionerConfig]:
    """The pretrained LM / conditioner with the config's training-time settings (dropout, gradient
    checkpointing, CFG and word dropout, ...), weights unchanged. Set in place where the setting is a
    plain attribute; the LM is rebuilt only for a new dropout."""
    lm = pre.lm
    lm_pre = lm.config.to_dict()
    lm_over = {k: v for k, v in _check_overrides("model.init_args.lm", _given(lm_config, LMConfig(), TRAINING_LM_KEYS), lm_pre,
                                                 TRAINING_LM_KEYS).items() if lm_pre.get(k) != v}
    if "dropout" in lm_over:
        new = MusicGenLM(dataclasses.replace(lm.config, **lm_over))
        new.load_state_dict(lm.state_dict())
        lm = new.train()
    else:
        if "gradient_checkpointing" in lm_over:
            lm.transformer.gradient_checkpointing = bool(lm_over["gradient_checkpointing"])
        if "attention_backend" in lm_over:
            for module in lm.modules():
                if hasattr(module, "backend"):
                    module.backend = lm_over["attention_backend"]
        lm.config = dataclasses.replace(lm.config, **lm_over)
    cond_cfg = pre.conditioner_config
    if isinstance(conditioner_config, dict):
        given = dict(conditioner_config)
        text_given = {k: v for k, v in (given.pop("text", None) or {}).items() if v is not None}
        given.pop("melody", None)
        given = {k: v for k, v in given.items() if v is not None}
    elif conditioner_config is not None:
        given = _given(conditioner_config, ConditionerConfig(), TRAINING_CONDITIONER_KEYS)
        given.pop("text", None)  # text: below; melody: its architecture is the init_from model's
        given.pop("melody", None)
        text_given = _given(conditioner_config.text, TextConfig(), TRAINING_TEXT_KEYS) if conditioner_config.text is not None else {}
        text_given.pop("dim", None)  # resolved to the LM width by with_dim
    else:
        given, text_given = {}, {}
    pre_top = {f.name: getattr(cond_cfg, f.name) for f in dataclasses.fields(cond_cfg)}
    cond_over = _check_overrides("model.init_args.conditioner", given, pre_top, TRAINING_CONDITIONER_KEYS)
    conditioner = pre.conditioner
    for key, value in cond_over.items():
        if key == "attribute_dropout":
            unknown = set(value or {}) - {"text", "melody"}
            if unknown:
                raise ConfigError("model.init_args.conditioner.attribute_dropout: unknown attributes "
                                  f"{sorted(unknown)}")
            value = dict(value or {})
        setattr(conditioner, key, value)
    cond_cfg = dataclasses.replace(cond_cfg, **cond_over)
    if text_given:
        if cond_cfg.text is None:
            raise ConfigError("model.init_args.conditioner.text: the init_from model has no text conditioner")
        text_over = _check_overrides("model.init_args.conditioner.text", text_given,
                                     dataclasses.asdict(cond_cfg.text), TRAINING_TEXT_KEYS)
        text = conditioner.text
        for key, value in text_over.items():
            setattr(text, key, value)
        if "freeze" in text_over:
            text.encoder.requires_grad_(not text_over["freeze"])
        cond_cfg = dataclasses.replace(cond_cfg, text=dataclasses.replace(cond_cfg.text, **text_over))
    return lm, conditioner, cond_cfg


# ---- batch sizes ------------------------------------------------------------------------------
def accumulation(global_batch_size: int, micro_batch: int, world_size: int) -> int:
    """Optimizer-step batch = micro_batch x world_size x accumulation; it must equal global_batch_size."""
    per_step = micro_batch * world_size
    if global_batch_size < 1 or global_batch_size % per_step:
        raise ConfigError(f"global_batch_size={global_batch_size} is not a multiple of micro-batch {micro_batch} "
                          f"x {world_size} devices = {per_step}")
    return global_batch_size // per_step


def micro_batch_for_budget(fits, budget_bytes: float, global_batch_size: int | None, world_size: int,
                           upper: int = 1024) -> int:
    """The largest micro-batch whose estimated peak (`fits(b) -> bytes`) is within the budget; with a
    global batch size, the largest such divisor of global_batch_size / world_size."""
    if global_batch_size is not None and global_batch_size % world_size:
        raise ConfigError(f"global_batch_size={global_batch_size} is not a multiple of {world_size} devices")
    limit = global_batch_size // world_size if global_batch_size else upper
    candidates = [b for b in range(1, limit + 1) if global_batch_size is None or limit % b == 0]
    best = None
    for b in candidates:  # the estimate grows with b: stop at the first that does not fit
        if fits(b) > budget_bytes:
            break
        best = b
    if best is None:
        raise ConfigError(f"memory_budget_gb={budget_bytes / 2**30:.1f}: even micro-batch 1 needs "
                          f"{fits(1) / 2**30:.1f} GiB by the estimate")
    return best


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else math.inf
