"""Official weights (transformers' or audiocraft's layout) -> our model folder; the `convert` verb.

    python -m lightning_musicgen convert --from-hf DIR_OR_NAME --out DIR
    python -m lightning_musicgen convert --from-audiocraft PATH --out DIR

--from-hf reads a transformers `save_pretrained` folder (or, where the hub is reachable, a hub
name), looks at its config's `model_type` and hands it to the matching converter.
--from-audiocraft reads audiocraft's `state_dict.bin` / `compression_state_dict.bin` (a folder
holding them, e.g. an official model repo, or one file) or a solver `checkpoint.th`.
Both write our model folder (see docs/model_files.md). Bad inputs raise `InputError`.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Literal, Optional

from lightning_musicgen.errors import InputError, inputs_checked_by_library

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
        raise InputError(f"--from-hf {name_or_dir}: expected a save_pretrained folder, got a file")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name_or_dir))
    except Exception as exc:  # offline, unknown repo, ...
        raise InputError(f"--from-hf {name_or_dir}: not a folder and not reachable on the hub "
                         f"({type(exc).__name__}); pass the path of a save_pretrained folder") from exc


def model_type(folder: Path) -> str:
    """The `model_type` of a save_pretrained folder's config.json, one of CONVERTERS."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise InputError(f"{cfg}: missing (is this a transformers save_pretrained folder?)")
    kind = json.loads(cfg.read_text()).get("model_type")
    if kind not in CONVERTERS:
        raise InputError(f"{cfg}: model_type {kind!r} is not one of {sorted(CONVERTERS)}")
    return kind


def convert_command(*, from_hf: Optional[str] = None, from_audiocraft: Optional[str] = None, out: str,
                    tokenizer: Optional[str] = None, codec: Optional[str] = None,
                    text_encoder: Optional[str] = None,
                    text_encoder_weights: Literal["auto", "copy", "refer"] = "auto") -> None:
    """Convert transformers or audiocraft weights into our model folder.

    Reads MusicGen / MusicGen-melody / EnCodec weights in transformers' or audiocraft's layout and
    writes a model folder that model_files.codec.load_codec or MusicGen.from_pretrained loads.
    Give exactly one of --from-hf and --from-audiocraft. One line names what the folder refers to
    outside itself (nothing is printed for a self-contained one).

    Args:
        from_hf: a transformers save_pretrained folder, or a hub name such as facebook/musicgen-small.
        from_audiocraft: folder with state_dict.bin / compression_state_dict.bin, one of them, or checkpoint.th.
        out: where to write our model folder.
        tokenizer: text tokenizer folder (default: the --from-hf folder).
        codec: --from-audiocraft: the codec (our model folder or checkpoint) when PATH has none.
        text_encoder: --from-audiocraft: local folder of the T5 model the LM names (default: its name).
        text_encoder_weights: --from-audiocraft: auto/copy: copy that T5 into the folder (audiocraft's
            files name it without holding it); refer: keep only its name (the folder then needs it
            at load time). --from-hf copies the source's own text encoder.
    """
    if (from_hf is None) == (from_audiocraft is None):
        raise InputError("give one of --from-hf DIR_OR_NAME or --from-audiocraft PATH"
                         + (" (not both)" if from_hf is not None else ""))
    if from_audiocraft is not None:
        from lightning_musicgen.convert.audiocraft import convert_audiocraft
        with inputs_checked_by_library():
            written = convert_audiocraft(from_audiocraft, out, codec=codec, text_encoder=text_encoder,
                                         text_encoder_weights=text_encoder_weights)
        print(f"converted {from_audiocraft} (audiocraft) -> {written}")
        print_outside_notice(written)
        return
    folder = resolve_folder(from_hf)
    kind = model_type(folder)
    module_name, func_name = CONVERTERS[kind].split(":")
    converter = getattr(importlib.import_module(module_name), func_name)
    written = converter(folder, Path(out), tokenizer=tokenizer)
    print(f"converted {kind} from {folder} -> {written or out}")
    print_outside_notice(written or out)


def print_outside_notice(folder) -> None:
    """Print the one line naming what a model folder refers to outside itself (nothing when self-contained)."""
    from lightning_musicgen.model_files.text_encoder import outside_notice
    notice = outside_notice(folder)
    if notice:
        print(notice)
