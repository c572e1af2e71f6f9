"""Load MusicGen parts from a MusicGenModule (Lightning) checkpoint or a converted one.

Converted format (one `torch.save` file, written by `convert --from-hf` and `save_musicgen`):
    {"format": "lightning_musicgen.musicgen", "version": 1,
     "lm": {"config": MusicGenLM kwargs, "state_dict": ...},
     "conditioner": {"config": build_condition_provider config, "state_dict": ...,
                     "text_encoder_config": dict | None, "tokenizer_files": {name: bytes} | None},
     "codec": CompressionModel.to_checkpoint_dict() | {"path": str} | None,
     "meta": {...}}
A MusicGenModule checkpoint carries the same "lm"/"conditioner" configs in `checkpoint["musicgen"]`
and the weights in its `state_dict` ("lm." / "conditioner." prefixes; EMA weights if kept). A
checkpoint of LoRA fine-tuning (`checkpoint["musicgen"]["lora"]`) loads with its adapters merged.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_musicgen.lm.conditioners import ConditionProvider, build_condition_provider
from lightning_musicgen.lm.model import MusicGenLM

FORMAT = "lightning_musicgen.musicgen"


def conditioner_payload(conditioner: ConditionProvider, config: dict) -> dict:
    """Config + weights + what rebuilds the text encoder without its original folder."""
    text = conditioner.text
    return {"config": config, "state_dict": conditioner.state_dict(),
            "text_encoder_config": text.encoder_config() if text is not None else None,
            "tokenizer_files": text.tokenizer_files() if text is not None else None}


def save_musicgen(path: str | os.PathLike, lm: MusicGenLM, conditioner: ConditionProvider, conditioner_config: dict,
                  codec=None, meta: dict | None = None) -> Path:
    """Write the converted single-file format. `codec`: a CompressionModel (embedded, so
    `CompressionModel.from_checkpoint(path)` also reads it), a checkpoint path (referenced), or None."""
    if codec is not None and not isinstance(codec, (str, os.PathLike)):
        codec = codec.to_checkpoint_dict()
    elif codec is not None:
        codec = {"path": str(codec)}
    payload = {"format": FORMAT, "version": 1, "lm": {"config": lm.config, "state_dict": lm.state_dict()},
               "conditioner": conditioner_payload(conditioner, conditioner_config),
               "codec": codec, "meta": dict(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_codec(spec: dict | None):
    """An embedded codec checkpoint dict or {"path": str} -> CompressionModel (None if no codec)."""
    if not spec:
        return None
    from lightning_musicgen.codec import CompressionModel
    if spec.get("path"):
        if not Path(spec["path"]).is_file():
            raise FileNotFoundError(f"codec checkpoint {spec['path']}: missing")
        return CompressionModel.from_checkpoint(spec["path"])
    return CompressionModel.from_checkpoint_dict(spec, "embedded codec")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_musicgen(path: str | os.PathLike, device: str | torch.device = "cpu", load_codec_model: bool = True,
                  use_ema: bool = True):
    """path -> (lm, conditioner, codec, cfg), all in eval mode on `device`.

    Reads a converted file or a MusicGenModule checkpoint. `codec` is a CompressionModel (None when
    the checkpoint records none or `load_codec_model=False`); `cfg` holds "lm", "conditioner",
    "codec" (spec) and "meta"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        lm_part, cond_part, codec_spec, meta = ckpt["lm"], ckpt["conditioner"], ckpt.get("codec"), ckpt.get("meta", {})
        lm_state, cond_state = lm_part["state_dict"], cond_part["state_dict"]
    elif isinstance(ckpt, dict) and "musicgen" in ckpt and "state_dict" in ckpt:
        info = ckpt["musicgen"]
        lm_part, cond_part = info["lm"], info["conditioner"]
        codec_spec = {"path": info["codec_checkpoint"]} if info.get("codec_checkpoint") else None
        meta = {"source": "MusicGenModule", "global_step": ckpt.get("global_step")}
        lm_state = _strip(ckpt["state_dict"], "lm.")
        if use_ema and info.get("ema_state_dict"):
            lm_state = info["ema_state_dict"]
        cond_state = _strip(ckpt["state_dict"], "conditioner.")
    else:
        raise ValueError(f"{path}: neither a converted MusicGen checkpoint nor a MusicGenModule checkpoint")
    lm = MusicGenLM(**lm_part["config"])
    lora = ckpt.get("musicgen", {}).get("lora") if "musicgen" in ckpt else None
    if lora:
        from lightning_musicgen.lm.lora import LoRASettings, add_lora, merge_lora
        add_lora(lm, LoRASettings.from_any(lora))
        lm.load_state_dict(lm_state)
        merge_lora(lm)
        lm.requires_grad_(True)
    else:
        lm.load_state_dict(lm_state)
    conditioner = build_condition_provider(cond_part["config"], cond_part.get("text_encoder_config"),
                                           cond_part.get("tokenizer_files"))
    conditioner.load_state_dict(cond_state)
    codec = load_codec(codec_spec) if load_codec_model else None
    for m in (lm, conditioner, codec):
        if m is not None:
            m.to(device).eval()
    codec_info = None
    if codec_spec:
        codec_info = {"path": codec_spec["path"]} if codec_spec.get("path") else {"config": codec_spec.get("config")}
    cfg = {"lm": lm_part["config"], "conditioner": cond_part["config"], "codec": codec_info, "meta": meta}
    return lm, conditioner, codec, cfg
