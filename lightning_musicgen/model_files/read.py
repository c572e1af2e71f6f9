"""MusicGen files -> (lm, conditioner, codec, info) (`load_musicgen`): a model folder, a MusicGenModule
checkpoint (configs from hyper_parameters, frozen codec and text encoder resolved from their references and
hash-checked, LoRA adapters merged), or the single-file converted format of earlier versions.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError, MissingFileError
from lightning_musicgen.lm.conditioners import ConditionerConfig, build_condition_provider
from lightning_musicgen.lm.lora import LoRASettings, add_lora, merge_lora
from lightning_musicgen.lm.model import LMConfig, MusicGenLM
from lightning_musicgen.model_files.codec import load_codec
from lightning_musicgen.model_files.files import (CONFIG, LEGACY_CODEC, LEGACY_MUSICGEN, load_weights, read_checkpoint,
                                                 read_config, resolve_reference, strip_prefix, tensors_hash)
from lightning_musicgen.model_files.text_encoder import outside_notice, text_encoder_error

log = logging.getLogger(__name__)


def _conditioner_from_folder(folder: Path, cfg: dict, text_encoder: str | None):
    from transformers import AutoTokenizer

    cond_cfg = ConditionerConfig.from_dict(cfg["conditioner"])
    info = cfg.get("text_encoder")
    text_dir = folder / "text_encoder"
    if info is None:
        return build_condition_provider(cond_cfg), cond_cfg
    if info.get("copied"):
        conditioner = build_condition_provider(cond_cfg, text_encoder_path=str(text_dir))
    else:
        log.warning(outside_notice(folder))
        try:
            conditioner = build_condition_provider(cond_cfg, text_encoder_path=text_encoder)
        except MissingFileError as exc:
            raise MissingFileError(f"{folder}: {exc} (the folder does not hold its text encoder: pass a local "
                                   "copy as text_encoder=DIR, or export it with --text-encoder-weights copy "
                                   "where the encoder loads)") from exc
        got = tensors_hash(conditioner.text.encoder.state_dict())
        if got != info["sha256"]:
            raise text_encoder_error(str(folder), text_encoder or info["name"], info["sha256"], got)
        conditioner.text.tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    return conditioner, cond_cfg


def _load_musicgen_folder(folder: Path, load_codec_model: bool, text_encoder: str | None):
    cfg = read_config(folder)
    if cfg.get("kind") != "musicgen":
        raise CheckpointError(f"{folder / CONFIG}: kind {cfg.get('kind')!r} is not a MusicGen model")
    state = load_weights(folder)
    lm = MusicGenLM(LMConfig.from_dict(cfg["lm"]))
    lm.load_state_dict(strip_prefix(state, "lm."))
    conditioner, cond_cfg = _conditioner_from_folder(folder, cfg, text_encoder)
    _load_conditioner_state(conditioner, strip_prefix(state, "conditioner."), str(folder))
    codec = load_codec(folder / cfg["codec"]) if load_codec_model and cfg.get("codec") else None
    info = {"lm": lm.config, "conditioner": cond_cfg, "weights": cfg.get("weights"),
            "max_duration": cfg.get("max_duration", 30.0), "meta": cfg.get("meta", {}), "source": str(folder),
            "text_encoder_carried": bool((cfg.get("text_encoder") or {}).get("copied"))}
    return lm, conditioner, codec, info


def _load_conditioner_state(conditioner, state: dict, source: str) -> None:
    missing, unexpected = conditioner.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text.encoder.")]
    if missing or unexpected:
        raise CheckpointError(f"{source}: conditioner weights do not match its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def trained_duration(ckpt: dict) -> float:
    """The longest stretch the LM of a MusicGenModule checkpoint was trained on (seconds): its training
    crop when trained from scratch; a fine-tuned model keeps its base's 30 s (the official models')."""
    if ckpt.get("hyper_parameters", {}).get("init_from") or not ckpt.get("segment_duration"):
        return 30.0
    return float(ckpt["segment_duration"])


def _load_module_checkpoint(path: Path, ckpt: dict, load_codec_model: bool, use_ema: bool,
                            text_encoder: str | None):
    """A MusicGenModule checkpoint: configs from hyper_parameters, frozen parts from references."""
    hp = ckpt["hyper_parameters"]
    lm_cfg, cond_cfg = LMConfig.from_dict(hp["lm"]), ConditionerConfig.from_dict(hp["conditioner"])
    state, frozen = ckpt["state_dict"], ckpt.get("frozen") or {}
    ema_state = strip_prefix(state, "ema.module.")
    weights = "ema" if use_ema and ema_state else "trained"
    lm = MusicGenLM(lm_cfg)
    lm_state = ema_state if weights == "ema" else strip_prefix(state, "lm.")
    if hp.get("lora"):  # LoRA fine-tuning: base + adapters are both in the state; fold them together
        add_lora(lm, LoRASettings.from_any(hp["lora"]))
        lm.load_state_dict(lm_state)
        merge_lora(lm).requires_grad_(True)
    else:
        lm.load_state_dict(lm_state)
    cond_state = strip_prefix(state, "conditioner.")
    ref = frozen.get("text_encoder")
    carried = any(k.startswith("text.encoder.") for k in cond_state)  # a trained text encoder is in the state
    needs_text = ref is not None and not carried
    if needs_text and text_encoder is None and hp.get("init_from"):
        # fine-tuning: the frozen text encoder is the init_from model's (its name may not resolve alone)
        conditioner, carried = _init_from_conditioner(hp["init_from"], cond_cfg, path)
    else:
        conditioner = build_condition_provider(cond_cfg, text_encoder_path=text_encoder)
    if needs_text:
        got = tensors_hash(conditioner.text.encoder.state_dict())
        if got != ref["sha256"]:
            raise text_encoder_error(str(path), text_encoder or ref["name"], ref["sha256"], got)
    _load_conditioner_state(conditioner, cond_state, str(path))
    codec = None
    if load_codec_model and frozen.get("codec"):
        codec = load_codec(resolve_reference(frozen["codec"], path, "codec"))
    meta = {"source": "MusicGenModule", "global_step": ckpt.get("global_step")}
    if hp.get("init_from"):
        meta["init_from"] = str(hp["init_from"])
    if hp.get("lora"):
        meta["lora_merged"] = dict(hp["lora"])
    info = {"lm": lm_cfg, "conditioner": cond_cfg, "weights": weights, "max_duration": trained_duration(ckpt),
            "meta": meta, "source": str(path), "codec_reference": frozen.get("codec"),
            "text_encoder_carried": carried}
    return lm, conditioner, codec, info


def _init_from_conditioner(init_from: str, cond_cfg, checkpoint: Path):
    """(A conditioner of `cond_cfg` whose text encoder is the one of the model a fine-tuning run
    started from (a model folder, a converted file or a checkpoint, as `load_musicgen` reads),
    whether that model carried the encoder's weights)."""
    source = Path(init_from).expanduser()
    if not source.exists():
        raise CheckpointNotFoundError(f"{checkpoint}: its init_from model {source} (the frozen text encoder's source) "
                                      "is missing; pass text_encoder=")
    _, base, _, info = load_musicgen(source, load_codec_model=False)
    text = base.text
    conditioner = build_condition_provider(cond_cfg, text.encoder_config(), text.tokenizer_files())
    conditioner.text.encoder.load_state_dict(text.encoder.state_dict())
    return conditioner, info["text_encoder_carried"]


def _load_legacy_musicgen(path: Path, ckpt: dict, load_codec_model: bool):
    """The single-file converted format of earlier versions."""
    lm = MusicGenLM(LMConfig.from_dict(ckpt["lm"]["config"]))
    lm.load_state_dict(ckpt["lm"]["state_dict"])
    part = ckpt["conditioner"]
    cond_cfg = ConditionerConfig.from_dict(part["config"])
    conditioner = build_condition_provider(cond_cfg, part.get("text_encoder_config"), part.get("tokenizer_files"))
    conditioner.load_state_dict(part["state_dict"])
    codec = load_codec(path) if load_codec_model and isinstance(ckpt.get("codec"), dict) \
        and ckpt["codec"].get("format") == LEGACY_CODEC else None
    meta = ckpt.get("meta", {})
    info = {"lm": lm.config, "conditioner": cond_cfg, "weights": "trained",
            "max_duration": meta.get("max_duration", 30.0), "meta": meta, "source": str(path),
            "text_encoder_carried": cond_cfg.text is not None}
    return lm, conditioner, codec, info


def load_musicgen(path: str | os.PathLike, device: str | torch.device = "cpu", load_codec_model: bool = True,
                  use_ema: bool = True, text_encoder: str | None = None):
    """path -> (lm, conditioner, codec, info), all in eval mode on `device`.

    path: a MusicGen model folder, a MusicGenModule checkpoint (EMA weights when kept and `use_ema`),
    or a converted file of earlier versions. `codec` is None when none is recorded or
    `load_codec_model=False`. `text_encoder`: a folder to read a referenced (not copied) text
    encoder from instead of its recorded name. `info`: "lm" (LMConfig), "conditioner"
    (ConditionerConfig), "weights" ("ema" | "trained"), "max_duration", "meta", "source",
    "text_encoder_carried" (the file held the text encoder's weights, not only its name)."""
    path = Path(path)
    if path.is_dir():
        lm, conditioner, codec, info = _load_musicgen_folder(path, load_codec_model, text_encoder)
    elif not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such model folder or checkpoint")
    else:
        ckpt = read_checkpoint(path)
        if isinstance(ckpt, dict) and ckpt.get("format") == LEGACY_MUSICGEN:
            lm, conditioner, codec, info = _load_legacy_musicgen(path, ckpt, load_codec_model)
        elif isinstance(ckpt, dict) and "lm" in (ckpt.get("hyper_parameters") or {}) and "state_dict" in ckpt:
            lm, conditioner, codec, info = _load_module_checkpoint(path, ckpt, load_codec_model, use_ema,
                                                                   text_encoder)
        else:
            raise CheckpointError(f"{path}: neither a MusicGen model folder, a MusicGenModule checkpoint nor a "
                             "converted MusicGen file")
    for m in (lm, conditioner, codec):
        if m is not None:
            m.to(device).eval()
    return lm, conditioner, codec, info


def load_lm_components(path: str | os.PathLike, load_codec_model: bool = True):
    """path (model folder, MusicGenModule checkpoint, converted file) -> (lm, conditioner_config, codec).

    For fine-tuning (`init_from`): the LM with its weights, the ConditionerConfig to rebuild the
    conditioner, and the CompressionModel (None if not recorded or not asked for)."""
    lm, _, codec, info = load_musicgen(path, load_codec_model=load_codec_model)
    return lm, info["conditioner"], codec
