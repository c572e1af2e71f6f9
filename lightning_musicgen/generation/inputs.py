"""Checking and loading what a user hands to `MusicGen`: descriptions, melody and prompt audio.

Audio comes as a path, a list of paths (one per description), a tensor `[C, T]` / `[B, C, T]`
already at the target rate, or a `(tensor, sample_rate)` pair; it leaves as a float tensor
`[B, C, T]` at `sample_rate`. Bad inputs raise `InputError` (or the loader's `AudioReadError`)
naming the argument and the item.
"""
from __future__ import annotations

import math
import os

import torch

from lightning_musicgen.errors import InputError


def _as_batch_list(x, batch_size: int, what: str) -> list:
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(items) == 1:
        items = items * batch_size
    if len(items) != batch_size:
        raise InputError(f"{what}: got {len(items)} items for {batch_size} descriptions")
    return items


def load_audio_batch(audio, batch_size: int, sample_rate: int, channels: int | None, what: str) -> torch.Tensor:
    """A path, a list of paths, a tensor [C, T] / [B, C, T] (at `sample_rate`) or a
    (tensor, sample_rate) pair -> float tensor [B, C, T]. Shorter clips of a batch are repeated
    (tiled) up to the longest one."""
    from lightning_musicgen.audio import convert_channels, load_audio, resample
    if isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[0], torch.Tensor):
        wav, sr = audio
        wav = wav if wav.dim() == 3 else wav.reshape(1, -1, wav.shape[-1])
        wav = resample(wav.float(), int(sr), sample_rate)
        clips = list(wav) if wav.shape[0] > 1 else [wav[0]]
    elif isinstance(audio, torch.Tensor):
        wav = audio if audio.dim() == 3 else audio.reshape(1, -1, audio.shape[-1])
        clips = list(wav.float()) if wav.shape[0] > 1 else [wav[0].float()]
    else:
        paths = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not all(isinstance(p, (str, os.PathLike)) for p in paths):
            raise TypeError(f"{what}: expected a path, a list of paths, a tensor or (tensor, sample_rate)")
        clips = [load_audio(p, sample_rate=sample_rate, channels=channels)[0] for p in paths]
    clips = _as_batch_list(clips, batch_size, what)
    for i, clip in enumerate(clips):
        if clip.shape[-1] == 0:
            raise InputError(f"{what}[{i}]: no audio samples")
    if channels is not None:
        clips = [convert_channels(c, channels) for c in clips]
    length = max(c.shape[-1] for c in clips)
    clips = [c.repeat(1, math.ceil(length / c.shape[-1]))[..., :length] for c in clips]
    return torch.stack(clips)


def check_descriptions(descriptions) -> list[str | None]:
    """A list of non-empty texts (None = unconditional for that item); a single string is a list of one."""
    if isinstance(descriptions, str):
        descriptions = [descriptions]
    descriptions = list(descriptions)
    if not descriptions:
        raise InputError("descriptions: empty list (give at least one text)")
    for i, d in enumerate(descriptions):
        if d is not None and (not isinstance(d, str) or not d.strip()):
            raise InputError(f"descriptions[{i}]: empty text {d!r} (use None for an unconditional sample)")
    return descriptions
