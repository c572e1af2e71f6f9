"""The model-file format itself, independent of the models: names and versions, content hashes,
frozen-part references of training checkpoints, reading a folder's config.json / model.safetensors or
a torch checkpoint, and what a path holds (`folder_kind`, `model_kind`). See the package docstring for
the layouts. Every error is one line naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError

FORMAT = "lightning_musicgen"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LEGACY_CODEC = "lightning_musicgen.codec"
LEGACY_MUSICGEN = "lightning_musicgen.musicgen"
ADAPTERS_FORMAT = "lightning_musicgen.lora"
TEXT_ENCODER_PREFIX = "conditioner.text.encoder."


# ---- hashes and references ------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def tensors_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (independent of file formats)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_reference(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> dict[str, str]:
    """A frozen file/folder as {"path" (relative to base_dir when given), "absolute", "sha256"}."""
    absolute = Path(path).expanduser().resolve()
    if not absolute.exists():
        raise CheckpointNotFoundError(f"{path}: missing")
    rel = os.path.relpath(absolute, Path(base_dir).resolve()) if base_dir is not None else str(absolute)
    return {"path": rel, "absolute": str(absolute), "sha256": content_hash(absolute)}


def resolve_reference(ref: dict[str, str], checkpoint: str | os.PathLike, what: str) -> Path:
    """The file a reference names, resolved against the checkpoint's folder, hash-checked."""
    base = Path(checkpoint).resolve().parent
    stored = Path(ref["path"])
    candidates = [stored if stored.is_absolute() else base / stored, Path(ref.get("absolute") or stored)]
    for candidate in candidates:
        if candidate.exists() and content_hash(candidate) == ref["sha256"]:
            return candidate
    seen = next((c for c in candidates if c.exists()), None)
    state = f"changed ({seen} hashes differently)" if seen is not None else "missing"
    raise CheckpointNotFoundError(f"{checkpoint}: {what} {candidates[0]} is {state}; expected sha256 {ref['sha256']}")


# ---- small helpers ----------------------------------------------------------------------------
def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: detached, on CPU, contiguous, no shared storage."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise CheckpointNotFoundError(f"{folder}: not a model folder ({CONFIG} missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: format {cfg.get('format')!r} is not {FORMAT!r} (a transformers or "
                              "audiocraft folder? use `convert --from-hf` / `--from-audiocraft`)")
    if int(cfg.get("version", 0)) > VERSION:
        raise CheckpointError(f"{cfg_path}: version {cfg.get('version')} is newer than this package reads ({VERSION})")
    return cfg


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: missing")
    return load_file(str(path))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """One of our own training checkpoints or single-file models (Lightning pickles plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def folder_kind(path: str | os.PathLike) -> str | None:
    """"musicgen" / "codec" for a model folder, else None."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG).is_file():
        try:
            return json.loads((path / CONFIG).read_text()).get("kind")
        except json.JSONDecodeError:
            return None
    return None



# ---- what a path holds --------------------------------------------------------------------------
def model_kind(path: str | os.PathLike) -> str:
    """"musicgen" or "codec" for any file or folder this module reads."""
    path = Path(path)
    if path.is_dir():
        kind = folder_kind(path)
        if kind in ("musicgen", "codec"):
            return kind
        raise CheckpointError(f"{path}: not a model folder ({CONFIG} with kind musicgen or codec missing)")
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file or folder")
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict):
        hp = ckpt.get("hyper_parameters") or {}
        if ckpt.get("format") == LEGACY_MUSICGEN or "lm" in hp:
            return "musicgen"
        if ckpt.get("format") == LEGACY_CODEC or "codec" in hp or "codec_config" in ckpt:
            return "codec"
    raise CheckpointError(f"{path}: neither a MusicGen nor a codec checkpoint")

