"""`python -m lightning_musicgen export --ckpt PATH --out DIR [--format model|transformers|audiocraft]`.

PATH: a training checkpoint (CodecModule or MusicGenModule), a model folder or a converted file.
- model (default): our model folder (see docs/model_files.md), EMA weights when the run kept them,
  the text encoder's weights as `--text-encoder-weights` says; one line names what the folder still
  refers to outside itself (nothing is printed for a self-contained one);
- transformers: a `save_pretrained` folder of MusicgenForConditionalGeneration,
  MusicgenMelodyForConditionalGeneration or EncodecModel (+ the tokenizer);
- audiocraft: `state_dict.bin` (LM) and/or `compression_state_dict.bin` (codec) as audiocraft's
  `load_lm_model` / `load_compression_model` read them.
A model a format cannot express is refused with one line saying why (exit code 2).
`export` is the library function, `export_command` the verb.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from lightning_musicgen.errors import InputError, inputs_checked_by_library


def export(path: str | Path, out: str | Path, format: str = "model", use_ema: bool = True,
           text_encoder_weights: str = "auto", codec: str | None = None, text_encoder: str | None = None) -> Path:
    """Write `path` (checkpoint, model folder or converted file) to `out` in `format`; returns what was written."""
    if format == "transformers":
        from lightning_musicgen.convert.to_transformers import export_transformers
        return export_transformers(path, out, use_ema=use_ema)
    if format == "audiocraft":
        from lightning_musicgen.convert.audiocraft import export_audiocraft
        return export_audiocraft(path, out, use_ema=use_ema)
    from lightning_musicgen.model_files.export import export_model_folder
    return export_model_folder(path, out, use_ema=use_ema, text_encoder_weights=text_encoder_weights, codec=codec,
                               text_encoder=text_encoder)


def export_command(*, ckpt: str, out: str, format: Literal["model", "transformers", "audiocraft"] = "model",
                   codec: Optional[str] = None, raw_weights: bool = False,
                   text_encoder_weights: Literal["auto", "copy", "refer"] = "auto",
                   text_encoder: Optional[str] = None) -> None:
    """Write a portable model from a checkpoint: our model folder, transformers' layout or audiocraft's.

    A model that a format cannot express is refused with one line saying why.

    Args:
        ckpt: training checkpoint (CodecModule or MusicGenModule), model folder or converted file.
        out: output folder (created; must be new or empty).
        format: model: our model folder; transformers: a save_pretrained folder; audiocraft:
            state_dict.bin and/or compression_state_dict.bin.
        codec: model format: the codec to include when the checkpoint records none (token-shard runs).
        raw_weights: the trained weights even when the run kept an EMA.
        text_encoder_weights: model format: auto: copy the text encoder's weights into the folder when
            the source carried them (converted models) or the encoder does not ship with an installed
            package (all but minilm); copy: always; refer: only its name + tokenizer files, loaded by
            name and hash-checked (a trained encoder is copied regardless).
        text_encoder: model format: a local folder of the text encoder the source names but does not
            hold (e.g. /models/t5-base), read instead of its name.
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--out {target}: exists and is not an empty folder")
    with inputs_checked_by_library():
        written = export(ckpt, target, format, use_ema=not raw_weights, text_encoder_weights=text_encoder_weights,
                         codec=codec, text_encoder=text_encoder)
    print(f"exported {ckpt} -> {written} ({format})")
    if format == "model":
        from lightning_musicgen.convert import print_outside_notice
        print_outside_notice(written)
