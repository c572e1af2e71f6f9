"""Any checkpoint or model folder -> our model folder (`export_model_folder`, the `export` verb without
--format): a codec file -> a codec folder; a MusicGen file -> a MusicGen folder with its codec (or the one
given) and its text encoder copied in or referred to by name.
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning_musicgen.model_files.codec import codec_module_state, load_codec, save_codec
from lightning_musicgen.model_files.files import model_kind, read_checkpoint
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.model_files.write import save_musicgen


def export_model_folder(path: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                        text_encoder_weights: str = "auto", codec: str | os.PathLike | None = None,
                        text_encoder: str | None = None) -> Path:
    """Any checkpoint or folder -> our model folder (`export` without --format). `codec`: the codec
    to put in (any codec file) when the checkpoint records none (a run on token shards).
    `text_encoder_weights`: see `copies_text_encoder` (the source's carried weights stay with "auto");
    `text_encoder`: a local folder for a text encoder the source records by name only."""
    path, out = Path(path), Path(out)
    if model_kind(path) == "codec":
        weights = "trained"
        if path.is_file():
            ckpt = read_checkpoint(path)
            if "state_dict" in ckpt and "format" not in ckpt:
                weights = codec_module_state(ckpt, use_ema)[2]
        return save_codec(load_codec(path, use_ema=use_ema), out, weights)
    lm, conditioner, recorded, info = load_musicgen(path, use_ema=use_ema, load_codec_model=codec is None,
                                                    text_encoder=text_encoder)
    codec_model = load_codec(codec) if codec is not None else recorded
    return save_musicgen(out, lm, conditioner, info["conditioner"], codec_model, weights=info["weights"],
                         text_encoder_weights=text_encoder_weights,
                         text_encoder_carried=info["text_encoder_carried"], max_duration=info["max_duration"],
                         meta=info["meta"])
