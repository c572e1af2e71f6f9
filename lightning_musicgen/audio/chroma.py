"""The one chroma extractor: used by the melody conditioner, the chroma-cosine metric and the key estimator.

Defaults are MusicGen's melody conditioning: a power spectrogram (window 2**14, hop 2**12, normalized),
librosa-style chroma filters (`chroma_filter_bank`, equal to transformers' and librosa's) at A440, max
normalisation per frame and, optionally, an argmax one-hot bottleneck.

Options for analysis (the key estimator uses them): `tuning` = the reference pitch's offset from A440 in
fractions of a chroma bin (librosa's convention), or "estimate" for each waveform's own tuning from its
spectral peaks (`estimate_tuning`); `log_compression` = gamma: chroma of log(1 + gamma * power / max power)
(the max over the waveform's whole spectrogram, so the result does not depend on its level) instead of
the power, so that loud partials do not drown the others; `center_octave`, `octave_width` = the
filters' Gaussian weighting over octaves (octave 5 is centred on A440; 3 and 1 make a bass chroma).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lightning_musicgen.errors import ConfigError


def chroma_filter_bank(n_fft: int, n_chroma: int, sample_rate: int, center_octave: float = 5.0,
                       octave_width: float = 2.0, tuning: float = 0.0) -> np.ndarray:
    """Chroma filters [n_chroma, n_fft // 2 + 1] (float64), librosa's design: each STFT bin spreads over
    the pitch classes with a Gaussian of one bin's width in chroma units, columns L2-normalised, weighted
    by a Gaussian over octaves (centre `center_octave`, width `octave_width`), rows starting at C; A is
    440 * 2**(tuning / n_chroma) Hz."""
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    reference = 440.0 * 2.0 ** (tuning / n_chroma)
    bins = n_chroma * np.log2(freqs / (reference / 16))       # pitch of each bin in chroma units above A0/2
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


def estimate_tuning(power: torch.Tensor, sample_rate: int, n_fft: int, min_hz: float = 80.0,
                    max_hz: float = 4000.0, floor_db: float = 40.0) -> float:
    """Tuning of a power spectrogram [F, frames] (F = n_fft // 2 + 1) in semitones from A440, in
    [-0.5, 0.5): the magnitude-weighted circular mean of the spectral peaks' deviations from the
    equal-tempered semitone grid. Peaks are local maxima in [min_hz, max_hz] within `floor_db` of their
    frame's loudest bin, located between bins by a parabola through the log magnitudes (Hann window)."""
    mag = power.double().clamp_min(1e-20).sqrt()
    lo = max(1, int(min_hz * n_fft / sample_rate))
    hi = min(mag.shape[0] - 2, int(max_hz * n_fft / sample_rate))
    if hi <= lo:
        return 0.0
    left, mid, right = mag[lo - 1:hi], mag[lo:hi + 1], mag[lo + 1:hi + 2]
    floor = mag.amax(0, keepdim=True) * 10 ** (-floor_db / 20)
    peak = (mid > left) & (mid >= right) & (mid > floor)
    if not peak.any():
        return 0.0
    la, lb, lc = left.log(), mid.log(), right.log()
    offset = 0.5 * (la - lc) / (la - 2 * lb + lc).clamp_max(-1e-12)
    bin_index = torch.arange(lo, hi + 1, dtype=mag.dtype).unsqueeze(1) + offset.clamp(-0.5, 0.5)
    semitones = 12 * torch.log2(bin_index * sample_rate / n_fft / 440.0)
    angle = 2 * np.pi * semitones[peak]
    weight = mid[peak]
    mean = torch.complex((weight * angle.cos()).sum(), (weight * angle.sin()).sum())
    return float(torch.angle(mean) / (2 * np.pi))


class ChromaExtractor(nn.Module):
    """Waveform [B, C, T] (or [B, T]) at `sample_rate` -> chroma [B, frames, n_chroma] (see the module
    docstring for `tuning` and `log_compression`; with tuning="estimate" each waveform gets its own)."""

    def __init__(self, sample_rate: int = 32000, n_chroma: int = 12, n_fft: int = 16384,
                 hop_length: int = 4096, argmax: bool = True, tuning: float | str = 0.0,
                 log_compression: float | None = None, center_octave: float = 5.0, octave_width: float = 2.0):
        super().__init__()
        if not (tuning == "estimate" or isinstance(tuning, (int, float))):
            raise ConfigError(f"chroma tuning {tuning!r}: a number of chroma bins or 'estimate'")
        self.sample_rate, self.n_chroma = sample_rate, n_chroma
        self.n_fft, self.hop_length, self.argmax = n_fft, hop_length, argmax
        self.tuning, self.log_compression = tuning, log_compression
        self.octaves = (center_octave, octave_width)
        filters = chroma_filter_bank(n_fft, n_chroma, sample_rate, *self.octaves,
                                     tuning=0.0 if tuning == "estimate" else tuning)
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def filters_for(self, power: torch.Tensor) -> torch.Tensor:
        """[B, n_chroma, F]: the fixed filters, or each spectrogram's own (tuning="estimate")."""
        if self.tuning != "estimate":
            return self.filters.unsqueeze(0).expand(power.shape[0], -1, -1)
        banks = []
        for p in power:
            bins = estimate_tuning(p, self.sample_rate, self.n_fft) * self.n_chroma / 12
            bank = chroma_filter_bank(self.n_fft, self.n_chroma, self.sample_rate, *self.octaves, tuning=bins)
            banks.append(torch.from_numpy(bank).to(power))
        return torch.stack(banks)

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
        filters = self.filters_for(power).to(wav.device)
        if self.log_compression is not None:
            peak = power.amax(dim=(1, 2), keepdim=True).clamp_min(1e-20)
            power = torch.log1p(self.log_compression * power / peak)
        chroma = torch.einsum("bcf,bft->btc", filters, power)
        chroma = nn.functional.normalize(chroma, p=float("inf"), dim=-1, eps=1e-6)
        if self.argmax:
            chroma = nn.functional.one_hot(chroma.argmax(-1), self.n_chroma).to(chroma.dtype)
        return chroma
