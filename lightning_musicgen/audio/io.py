"""The one audio loader/writer of the package (soundfile), plus resampling (`dsp.resample`) and channel conversion."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lightning_musicgen.audio import dsp


class AudioReadError(RuntimeError):
    """Raised when an audio file cannot be read; the message names the file and the reason."""


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Return (sample_rate, channels, frames) without decoding the file."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioReadError(f"{path}: cannot read audio ({exc})") from exc
    return info.samplerate, info.channels, info.frames


def read_audio(path, start: float = 0.0, duration: float | None = None) -> tuple[torch.Tensor, int]:
    """Read `duration` seconds from `start` seconds of a file as float32 [C, T] and its rate.

    Accepts a path or a binary file object (e.g. a FLAC blob in a WebDataset sample).
    """
    try:
        with sf.SoundFile(path if not isinstance(path, os.PathLike) else str(path)) as f:
            sr = f.samplerate
            first = int(round(start * sr))
            if first:
                f.seek(min(first, f.frames))
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        name = getattr(path, "name", path)
        raise AudioReadError(f"{name}: cannot read audio ({exc})") from exc
    return torch.from_numpy(np.ascontiguousarray(data.T)), sr


def write_audio(path, wav: torch.Tensor, sample_rate: int, format: str | None = None,
                subtype: str | None = None) -> None:
    """Write float audio [C, T] (or [T]) to `path` (or a file object); clipped to [-1, 1]."""
    wav = wav.detach().float().cpu()
    if wav.dim() == 1:
        wav = wav[None]
    data = wav.clamp(-1, 1).numpy().T
    if format is None and isinstance(path, (str, Path)):
        format = Path(path).suffix.lstrip(".").upper() or "WAV"
    if subtype is None and format and format.upper() == "WAV":
        subtype = "PCM_16"
    sf.write(path, data, sample_rate, format=format, subtype=subtype)


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (identity when the rates match)."""
    if orig_sr == new_sr:
        return wav
    return dsp.resample(wav, orig_sr, new_sr)


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert [..., C, T] to `channels` (1: average; 2 from mono: duplicate)."""
    have = wav.shape[-2]
    if have == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if have == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    if have > channels:
        return wav[..., :channels, :]
    raise ValueError(f"cannot convert {have} channels to {channels}")


def load_audio(path, sample_rate: int | None = None, channels: int | None = None,
               start: float = 0.0, duration: float | None = None) -> tuple[torch.Tensor, int]:
    """Read a file and bring it to `sample_rate` and `channels` (None keeps the file's)."""
    wav, sr = read_audio(path, start=start, duration=duration)
    if wav.shape[-1] == 0:
        raise AudioReadError(f"{getattr(path, 'name', path)}: no audio samples")
    if channels is not None:
        wav = convert_channels(wav, channels)
    if sample_rate is not None and sample_rate != sr:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return wav, sr
