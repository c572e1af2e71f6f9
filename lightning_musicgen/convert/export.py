"""`python -m lightning_musicgen export --ckpt PATH --out DIR [--format model|transformers|audiocraft]`.

PATH: a training checkpoint (CodecModule or MusicGenModule), a model folder or a converted file.
- model (default): our model folder (see docs/model_files.md), EMA weights when the run kept them;
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
           copy_text_encoder: bool = False, codec: str | None = None) -> Path:
    """Write `path` (checkpoint, model folder or converted file) to `out` in `format`; returns what was written."""
    if format == "transformers":
        from lightning_musicgen.convert.to_transformers import export_transformers
        return export_transformers(path, out, use_ema=use_ema)
    if format == "audiocraft":
        from lightning_musicgen.convert.audiocraft import export_audiocraft
        return export_audiocraft(path, out, use_ema=use_ema)
    from lightning_musicgen.model_files import export_model_folder
    return export_model_folder(path, out, use_ema=use_ema, copy_text_encoder=copy_text_encoder, codec=codec)


def export_command(*, ckpt: str, out: str, format: Literal["model", "transformers", "audiocraft"] = "model",
                   codec: Optional[str] = None, raw_weights: bool = False, copy_text_encoder: bool = False) -> None:
    """Write a portable model from a checkpoint: our model folder, transformers' layout or audiocraft's.

    A model that a format cannot express is refused with one line saying why.

    Args:
        ckpt: training checkpoint (CodecModule or MusicGenModule), model folder or converted file.
        out: output folder (created; must be new or empty).
        format: model: our model folder; transformers: a save_pretrained folder; audiocraft:
            state_dict.bin and/or compression_state_dict.bin.
        codec: model format: the codec to include when the checkpoint records none (token-shard runs).
        raw_weights: the trained weights even when the run kept an EMA.
        copy_text_encoder: copy the text encoder's weights into the model folder (default: its name +
            tokenizer files, loaded by name and hash-checked).
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--out {target}: exists and is not an empty folder")
    with inputs_checked_by_library():
        written = export(ckpt, target, format, use_ema=not raw_weights, copy_text_encoder=copy_text_encoder,
                         codec=codec)
    print(f"exported {ckpt} -> {written} ({format})")
