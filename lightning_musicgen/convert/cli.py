"""`python -m lightning_musicgen convert --from-hf DIR_OR_NAME | --from-audiocraft PATH --out DIR`.

--from-hf reads a transformers `save_pretrained` folder (or, where the hub is reachable, a hub
name), looks at its config's `model_type` and hands it to the matching converter.
--from-audiocraft reads audiocraft's `state_dict.bin` / `compression_state_dict.bin` (a folder
holding them, e.g. an official model repo, or one file) or a solver `checkpoint.th`.
Both write our model folder (see docs/model_files.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONVERTERS = {
    # model_type in config.json -> "module:function(folder, out, tokenizer=None)"
    "encodec": "lightning_musicgen.convert.encodec:convert_encodec",
    "musicgen": "lightning_musicgen.convert.musicgen:convert_musicgen",
    "musicgen_melody": "lightning_musicgen.convert.musicgen:convert_musicgen",
}


def resolve_folder(name_or_dir: str) -> Path:
    """A local folder as is; otherwise a hub name, fetched (or found in the local HF cache)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SystemExit(f"error: --from-hf {name_or_dir}: expected a save_pretrained folder, got a file")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name_or_dir))
    except Exception as exc:  # offline, unknown repo, ...
        raise SystemExit(f"error: --from-hf {name_or_dir}: not a folder and not reachable on the hub "
                         f"({type(exc).__name__}); pass the path of a save_pretrained folder") from exc


def model_type(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise SystemExit(f"error: {cfg}: missing (is this a transformers save_pretrained folder?)")
    kind = json.loads(cfg.read_text()).get("model_type")
    if kind not in CONVERTERS:
        raise SystemExit(f"error: {cfg}: model_type {kind!r} is not one of {sorted(CONVERTERS)}")
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_musicgen convert",
        description="Convert MusicGen / MusicGen-melody / EnCodec weights (transformers or audiocraft "
                    "layout) into a model folder that CompressionModel.from_checkpoint or "
                    "MusicGen.from_pretrained loads.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR_OR_NAME",
                        help="save_pretrained folder, or a hub name such as facebook/musicgen-small")
    source.add_argument("--from-audiocraft", metavar="PATH",
                        help="folder with state_dict.bin / compression_state_dict.bin, one of them, or checkpoint.th")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write our model folder")
    parser.add_argument("--tokenizer", metavar="PATH", default=None,
                        help="text tokenizer folder (default: the --from-hf folder)")
    parser.add_argument("--codec", metavar="PATH", default=None,
                        help="--from-audiocraft: the codec (our model folder or checkpoint) when PATH has none")
    parser.add_argument("--text-encoder", metavar="DIR", default=None,
                        help="--from-audiocraft: local folder of the T5 model the LM names (default: its name)")
    args = parser.parse_args(argv)
    if args.from_audiocraft:
        from lightning_musicgen.convert.audiocraft import convert_audiocraft
        try:
            out = convert_audiocraft(args.from_audiocraft, args.out, codec=args.codec, text_encoder=args.text_encoder)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
            return 2
        print(f"converted {args.from_audiocraft} (audiocraft) -> {out}")
        return 0
    folder = resolve_folder(args.from_hf)
    kind = model_type(folder)
    module_name, func_name = CONVERTERS[kind].split(":")
    import importlib
    convert = getattr(importlib.import_module(module_name), func_name)
    out = convert(folder, Path(args.out), tokenizer=args.tokenizer)
    print(f"converted {kind} from {folder} -> {out or args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
