"""Codec model files -> CompressionModel and back: a codec model folder (`save_codec` / `load_codec`),
the generator of a CodecModule checkpoint (EMA weights when kept), and the single-file format of earlier
versions ({"format": LEGACY_CODEC, "config", "n_q", "state_dict"}, old key names read as the current ones).
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning_musicgen.codec.model import CodecConfig, CompressionModel
from lightning_musicgen.config_dict import current_names
from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError
from lightning_musicgen.model_files.files import (CONFIG, FORMAT, LEGACY_CODEC, LEGACY_MUSICGEN, VERSION, WEIGHTS, folder_kind,
                                                 load_weights, plain_tensors, read_checkpoint, read_config, strip_prefix,
                                                 write_json)


def save_codec(codec: CompressionModel, out: str | os.PathLike, weights: str = "trained") -> Path:
    """A CompressionModel -> a codec model folder."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, {"format": FORMAT, "version": VERSION, "kind": "codec",
                               "codec": codec.config.to_dict(), "n_q": codec.n_q,
                               "weights": weights})
    save_file(plain_tensors(codec.state_dict()), str(out / WEIGHTS))
    return out


def _n_q(d: dict) -> int | None:
    """The active codebook count a codec file records ("num_codebooks" in files older than the rename)."""
    return current_names(d, "codec file").get("n_q")


def codec_from_state(config: dict, state: dict, n_q: int | None = None, source: str = "checkpoint"):
    model = CompressionModel(CodecConfig.from_dict(current_names(config, f"{source}: codec config")))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: codec weights do not match its config ({str(exc).splitlines()[0]})") from exc
    model.n_q = n_q or model.max_n_q
    return model


def codec_from_legacy(d: dict, source: str = "checkpoint"):
    """The single-file codec format of earlier versions ({"format": LEGACY_CODEC, "config", "n_q", "state_dict"},
    as written by earlier versions) -> CompressionModel."""
    if not isinstance(d, dict) or d.get("format") != LEGACY_CODEC:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise CheckpointError(f"{source}: not a {LEGACY_CODEC} checkpoint (format={found!r})")
    return codec_from_state(d["config"], d["state_dict"], _n_q(d), source)


def codec_module_state(ckpt: dict, use_ema: bool = True) -> tuple[dict, dict, str]:
    """A CodecModule checkpoint -> (codec config dict, generator state, "ema" | "trained")."""
    state = ckpt["state_dict"]
    config = (ckpt.get("hyper_parameters") or {}).get("codec") or ckpt.get("codec_config")
    for prefix, kind in (("generator_ema.module.", "ema"), ("generator_ema.", "ema"), ("generator.", "trained")):
        if kind == "ema" and not use_ema:
            continue
        part = strip_prefix(state, prefix)
        if part and (kind == "trained" or not any(k.startswith("module.") for k in part)):
            return dict(config), part, kind
    raise CheckpointError("CodecModule checkpoint without generator weights")


def load_codec(path: str | os.PathLike, use_ema: bool = True):
    """Any codec file -> CompressionModel: a codec folder, a MusicGen folder (its codec), a
    CodecModule checkpoint (EMA weights if kept), or the single-file format of earlier versions."""
    path = Path(path)
    if path.is_dir():
        kind = folder_kind(path)
        if kind == "musicgen":
            return load_codec(path / "codec")
        cfg = read_config(path)
        if cfg.get("kind") != "codec":
            raise CheckpointError(f"{path / CONFIG}: kind {cfg.get('kind')!r} is not a codec")
        return codec_from_state(cfg["codec"], load_weights(path), _n_q(cfg), str(path))
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: codec checkpoint not found")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a codec checkpoint")
    if ckpt.get("format") == LEGACY_CODEC:
        return codec_from_legacy(ckpt, str(path))
    if "state_dict" in ckpt and ("codec" in (ckpt.get("hyper_parameters") or {}) or "codec_config" in ckpt):
        config, state, _ = codec_module_state(ckpt, use_ema)
        return codec_from_state(config, state, None, str(path))
    if ckpt.get("format") == LEGACY_MUSICGEN and isinstance(ckpt.get("codec"), dict) \
            and ckpt["codec"].get("format") == LEGACY_CODEC:
        return codec_from_legacy(ckpt["codec"], str(path))
    raise CheckpointError(f"{path}: neither a codec model folder, a CodecModule checkpoint nor a converted codec file")

