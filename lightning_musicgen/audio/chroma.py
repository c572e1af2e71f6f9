"""The one chroma extractor: used by the melody conditioner and by the chroma-cosine metric.

Same recipe as MusicGen's melody conditioning: a power spectrogram (window 2**14, hop 2**12,
normalized), librosa-style chroma filters (`chroma_filter_bank`, equal to transformers' and librosa's),
max normalisation per frame and, optionally, an argmax one-hot bottleneck.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def chroma_filter_bank(n_fft: int, n_chroma: int, sample_rate: int, center_octave: float = 5.0,
                       octave_width: float = 2.0) -> np.ndarray:
    """Chroma filters [n_chroma, n_fft // 2 + 1] (float64), librosa's design at tuning 0: each STFT
    bin spreads over the pitch classes with a Gaussian of one bin's width in chroma units, columns
    L2-normalised, weighted by a Gaussian over octaves (centre `center_octave`, width
    `octave_width`), rows starting at C."""
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    bins = n_chroma * np.log2(freqs / (440.0 / 16))           # pitch of each bin in chroma units above A0/2
    bins = np.concatenate(([bins[0] - 1.5 * n_chroma], bins))   # DC gets a bin of its own far below
    widths = np.concatenate((np.maximum(bins[1:] - bins[:-1], 1.0), [1]))
    dist = np.subtract.outer(bins, np.arange(0, n_chroma, dtype="d")).T
    half = round(float(n_chroma) / 2)
    dist = np.remainder(dist + half + 10 * n_chroma, n_chroma) - half   # wrap to [-n_chroma/2, n_chroma/2)
    weights = np.exp(-0.5 * (2 * dist / np.tile(widths, (n_chroma, 1))) ** 2)
    weights = weights / np.sqrt(np.sum(weights ** 2, axis=0, keepdims=True))
    weights *= np.tile(np.exp(-0.5 * (((bins / n_chroma - center_octave) / octave_width) ** 2)), (n_chroma, 1))
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)    # A-based -> C-based
    return np.ascontiguousarray(weights[:, : int(1 + n_fft / 2)])


class ChromaExtractor(nn.Module):
    """Waveform [B, C, T] (or [B, T]) at `sample_rate` -> chroma [B, frames, n_chroma]."""

    def __init__(self, sample_rate: int = 32000, n_chroma: int = 12, n_fft: int = 16384,
                 hop_length: int = 4096, argmax: bool = True):
        super().__init__()
        self.sample_rate, self.n_chroma = sample_rate, n_chroma
        self.n_fft, self.hop_length, self.argmax = n_fft, hop_length, argmax
        filters = chroma_filter_bank(n_fft, n_chroma, sample_rate)
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return max(num_samples, self.n_fft) // self.hop_length + 1

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 3:
            wav = wav.mean(dim=1)  # chroma of the mono mix
        wav = wav.float()
        if wav.shape[-1] < self.n_fft:  # centre-pad short clips up to one window
            pad = self.n_fft - wav.shape[-1]
            wav = nn.functional.pad(wav, (pad // 2, pad - pad // 2))
        spec = torch.stft(wav, self.n_fft, self.hop_length, window=self.window.to(wav.device),
                          center=True, pad_mode="reflect", normalized=True, return_complex=True)
        power = spec.abs().pow(2)  # [B, F, frames]
        chroma = torch.einsum("cf,bft->btc", self.filters.to(wav.device), power)
        chroma = nn.functional.normalize(chroma, p=float("inf"), dim=-1, eps=1e-6)
        if self.argmax:
            chroma = nn.functional.one_hot(chroma.argmax(-1), self.n_chroma).to(chroma.dtype)
        return chroma
