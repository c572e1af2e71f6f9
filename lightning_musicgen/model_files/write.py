"""LM + conditioner (+ codec) -> a MusicGen model folder (`save_musicgen`): config.json, model.safetensors
("lm.*", "conditioner.*", never the text encoder's weights), codec/ (a codec folder) and text_encoder/
(tokenizer files and the encoder's config, plus its weights when `copies_text_encoder` says so).
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning_musicgen.lm.conditioners import ConditionerConfig
from lightning_musicgen.model_files.codec import save_codec
from lightning_musicgen.model_files.files import CONFIG, FORMAT, VERSION, WEIGHTS, plain_tensors, tensors_hash, write_json
from lightning_musicgen.model_files.text_encoder import copies_text_encoder


def save_musicgen(out: str | os.PathLike, lm, conditioner, conditioner_config, codec=None, *,
                  weights: str = "trained", text_encoder_weights: str = "auto", text_encoder_carried: bool = False,
                  max_duration: float = 30.0, meta: dict | None = None) -> Path:
    """LM + conditioner (+ codec) -> a MusicGen model folder. The text encoder goes in as its name,
    tokenizer files and config, plus its weights as `copies_text_encoder(text_encoder_weights, name,
    text_encoder_carried)` decides (`text_encoder_carried`: the source held them, not just a name)."""
    from safetensors.torch import save_file

    if isinstance(conditioner_config, dict):
        conditioner_config = ConditionerConfig.from_dict(conditioner_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = conditioner.text
    text_info = None
    copy = False
    if text is not None:
        copy = copies_text_encoder(text_encoder_weights, str(text.name), text_encoder_carried, not text.freeze)
        text_dir = out / "text_encoder"
        text_dir.mkdir(exist_ok=True)
        text.tokenizer.save_pretrained(str(text_dir))
        if copy:
            text.encoder.save_pretrained(str(text_dir), safe_serialization=True)
        else:
            text.encoder.config.save_pretrained(str(text_dir))
        text_info = {"name": str(text.name), "sha256": tensors_hash(text.encoder.state_dict()), "copied": copy}
    state = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    state.update({f"conditioner.{k}": v for k, v in conditioner.state_dict().items()
                  if not k.startswith("text.encoder.")})
    save_file(plain_tensors(state), str(out / WEIGHTS))
    if codec is not None:
        save_codec(codec, out / "codec")
    config = {"format": FORMAT, "version": VERSION, "kind": "musicgen", "lm": lm.config.to_dict(),
              "conditioner": conditioner_config.to_dict(), "weights": weights, "text_encoder": text_info,
              "codec": "codec" if codec is not None else None, "max_duration": float(max_duration),
              "meta": dict(meta or {})}
    write_json(out / CONFIG, config)
    return out

