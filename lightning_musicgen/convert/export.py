"""`python -m lightning_musicgen export --ckpt PATH --out DIR [--format model|transformers|audiocraft]`.

PATH: a training checkpoint (CodecModule or MusicGenModule), a model folder or a converted file.
- model (default): our model folder (see docs/model_files.md), EMA weights when the run kept them;
- transformers: a `save_pretrained` folder of MusicgenForConditionalGeneration,
  MusicgenMelodyForConditionalGeneration or EncodecModel (+ the tokenizer);
- audiocraft: `state_dict.bin` (LM) and/or `compression_state_dict.bin` (codec) as audiocraft's
  `load_lm_model` / `load_compression_model` read them.
A model a format cannot express is refused with one line saying why (exit code 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_musicgen export",
                                description="Write a portable model from a checkpoint: our model folder, "
                                            "transformers' layout or audiocraft's.")
    p.add_argument("--ckpt", required=True, metavar="PATH", help="training checkpoint, model folder or converted file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--format", default="model", choices=["model", "transformers", "audiocraft"],
                   help="model: our model folder (default); transformers; audiocraft")
    p.add_argument("--codec", metavar="PATH", default=None,
                   help="model format: the codec to include when the checkpoint records none (token-shard runs)")
    p.add_argument("--raw-weights", action="store_true", help="the trained weights even when the run kept an EMA")
    p.add_argument("--copy-text-encoder", action="store_true",
                   help="copy the text encoder's weights into the model folder (default: its name + tokenizer "
                        "files, loaded by name and hash-checked)")
    return p


def export(path: str | Path, out: str | Path, format: str = "model", use_ema: bool = True,
           copy_text_encoder: bool = False, codec: str | None = None) -> Path:
    if format == "transformers":
        from lightning_musicgen.convert.to_transformers import export_transformers
        return export_transformers(path, out, use_ema=use_ema)
    if format == "audiocraft":
        from lightning_musicgen.convert.audiocraft import export_audiocraft
        return export_audiocraft(path, out, use_ema=use_ema)
    from lightning_musicgen.model_files import export_model_folder
    return export_model_folder(path, out, use_ema=use_ema, copy_text_encoder=copy_text_encoder, codec=codec)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: --out {out}: exists and is not an empty folder", file=sys.stderr)
        return 2
    try:
        written = export(args.ckpt, out, args.format, use_ema=not args.raw_weights,
                         copy_text_encoder=args.copy_text_encoder, codec=args.codec)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {written} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
