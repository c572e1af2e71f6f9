"""Loudness normalisation to a LUFS target (ITU-R BS.1770-4 integrated loudness from `dsp`)."""
from __future__ import annotations

import torch

from lightning_musicgen.audio.dsp import integrated_loudness_lufs


def integrated_loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS of [C, T] audio; -inf-like (-120) for silence or clips under 0.4 s."""
    if wav.shape[-1] < int(0.4 * sample_rate):
        return -120.0
    value = integrated_loudness_lufs(wav, sample_rate)
    return value if value == value and value > -120.0 else -120.0  # NaN (all gated) -> silence


def normalize_loudness(wav: torch.Tensor, sample_rate: int, target_lufs: float = -14.0,
                       max_gain_db: float = 30.0, peak: float = 0.99) -> torch.Tensor:
    """Scale [C, T] audio to `target_lufs`, boosting at most `max_gain_db` (silence stays silent) and
    never past `peak` (the gain is lowered instead of clipping)."""
    loudness = integrated_loudness(wav, sample_rate)
    if loudness <= -70.0:
        return wav
    gain_db = min(target_lufs - loudness, max_gain_db)
    gain = 10.0 ** (gain_db / 20.0)
    current_peak = float(wav.abs().max())
    if current_peak * gain > peak:
        gain = peak / current_peak
    return wav * gain
