"""The one chroma extractor: used by the melody conditioner and by the chroma-cosine metric.

Same recipe as MusicGen's melody conditioning: a power spectrogram (window 2**14, hop 2**12,
normalized), librosa-style chroma filters (via transformers' `chroma_filter_bank`), max
normalisation per frame and, optionally, an argmax one-hot bottleneck.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.audio_utils import chroma_filter_bank


class ChromaExtractor(nn.Module):
    """Waveform [B, C, T] (or [B, T]) at `sample_rate` -> chroma [B, frames, n_chroma]."""

    def __init__(self, sample_rate: int = 32000, n_chroma: int = 12, n_fft: int = 16384,
                 hop_length: int = 4096, argmax: bool = True):
        super().__init__()
        self.sample_rate, self.n_chroma = sample_rate, n_chroma
        self.n_fft, self.hop_length, self.argmax = n_fft, hop_length, argmax
        filters = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma,
                                     sampling_rate=sample_rate, tuning=0.0)
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
