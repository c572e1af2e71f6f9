"""Signal processing the package needs, in torch (no torchaudio): mel spectrograms, band-limited
resampling and ITU-R BS.1770-4 integrated loudness.

- `MelSpectrogram(sample_rate, n_fft, ...)`: wav[..., T] -> mel[..., n_mels, frames]. Hann window
  (periodic), `torch.stft` with reflect padding when `center`, magnitude ** `power`, HTK mel scale
  with unnormalised triangular filters: the conventions of torchaudio's transform of the same name
  (tested against values recorded from torchaudio 2.11.0).
- `slaney_mel_filterbank(n_freqs, n_mels, f_min, f_max, sample_rate)`: float64 numpy [n_freqs, n_mels],
  Slaney mel scale (linear below 1 kHz, logarithmic above) and Slaney area normalisation (2 / width):
  librosa's default filters, equal to `transformers.audio_utils.mel_filter_bank(..., norm="slaney",
  mel_scale="slaney")`, which this package cannot import because it imports any installed torchaudio.
- `resample(wav, orig_sr, new_sr)`: windowed-sinc interpolation along the last axis (Kaiser window,
  beta 14.77, 64 zero crossings, cut-off at 0.9475 of the lower Nyquist: the "kaiser_best" filter,
  whose stop band keeps folded-back energy below -60 dB), output length ceil(T * new / orig).
- `integrated_loudness(wav[C, T], sample_rate)`: LUFS with K-weighting (high shelf +4 dB at 1.5 kHz,
  high-pass at 38 Hz), 400 ms blocks with 75 % overlap, absolute gate -70 LUFS, relative gate
  -10 LU; channel weights 1, 1, 1, 1.41, 1.41 (L, R, C, Ls, Rs).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy import signal
from torch import nn


def hz_to_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """HTK mel scale."""
    if isinstance(freq, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters as a matrix [n_freqs, n_mels] (rows: STFT bins 0..sr/2)."""
    bin_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    edges = mel_to_hz(mel_points)                      # [n_mels + 2] filter edges in Hz
    widths = edges[1:] - edges[:-1]                    # [n_mels + 1]
    offsets = edges[None, :] - bin_freqs[:, None]      # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def _slaney_hz_to_mel(freq: np.ndarray) -> np.ndarray:
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


def slaney_mel_filterbank(n_freqs: int, n_mels: int, f_min: float, f_max: float, sample_rate: int) -> np.ndarray:
    """Slaney-scale, area-normalised triangular filters [n_freqs, n_mels] in float64 (librosa's default)."""
    if not 0.0 <= f_min <= f_max:
        raise ValueError(f"mel filter bank range [{f_min}, {f_max}] Hz: need 0 <= f_min <= f_max")
    span = _slaney_hz_to_mel(np.array([f_min, f_max], dtype=np.float64))
    edges = _slaney_mel_to_hz(np.linspace(span[0], span[1], n_mels + 2))   # [n_mels + 2] in Hz
    bin_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    widths = np.diff(edges)
    offsets = edges[None, :] - bin_freqs[:, None]
    triangles = np.maximum(0.0, np.minimum(-offsets[:, :-2] / widths[:-1], offsets[:, 2:] / widths[1:]))
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[None, :]


class MelSpectrogram(nn.Module):
    """wav[..., T] -> mel spectrogram [..., n_mels, frames] (frames = T // hop + 1 when centred)."""

    def __init__(self, sample_rate: int, n_fft: int = 400, win_length: int | None = None,
                 hop_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                 n_mels: int = 128, power: float = 2.0, normalized: bool = False, center: bool = True,
                 pad_mode: str = "reflect"):
        super().__init__()
        self.n_fft, self.win_length = n_fft, win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.power, self.normalized, self.center, self.pad_mode = power, normalized, center, pad_mode
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max if f_max is not None else sample_rate / 2,
                            n_mels, sample_rate)
        self.register_buffer("filters", fb, persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        shape = wav.shape
        spec = torch.stft(wav.reshape(-1, shape[-1]), self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window.to(wav.dtype), center=self.center,
                          pad_mode=self.pad_mode, normalized=self.normalized, onesided=True,
                          return_complex=True)
        spec = spec.abs() if self.power == 1.0 else spec.abs().pow(self.power)
        mel = torch.matmul(spec.transpose(-1, -2), self.filters.to(spec.dtype)).transpose(-1, -2)
        return mel.reshape(*shape[:-1], *mel.shape[-2:])


ZERO_CROSSINGS = 64            # sinc lobes on each side of the kernel's centre
ROLLOFF = 0.9475               # cut-off as a fraction of the lower of the two Nyquist frequencies
KAISER_BETA = 14.769656459379492


@lru_cache(maxsize=16)
def _sinc_kernels(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase kernels [new, 1, 2 * width + orig] for reduced rates orig -> new, and `width`."""
    cutoff = min(orig, new) * ROLLOFF
    width = math.ceil(ZERO_CROSSINGS * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig   # input times
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new                  # output offsets
    t = ((taps + phases) * cutoff).clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = torch.special.i0(KAISER_BETA * torch.sqrt(1 - (t / ZERO_CROSSINGS) ** 2)) \
        / torch.special.i0(torch.tensor(KAISER_BETA, dtype=torch.float64))
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    kernels = sinc * window * (cutoff / orig)
    return kernels[:, None, :].to(dtype), width


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of wav[..., T] from `orig_sr` to `new_sr` Hz (identity if equal)."""
    if orig_sr == new_sr:
        return wav
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernels, width = _sinc_kernels(orig, new, wav.dtype if wav.is_floating_point() else torch.float32)
    shape = wav.shape
    x = wav.reshape(-1, 1, shape[-1])
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x, kernels.to(x.device), stride=orig)     # [N, new, frames]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    out_len = math.ceil(new * shape[-1] / orig)
    return y[..., :out_len].reshape(*shape[:-1], out_len)


CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)   # BS.1770: L, R, C, Ls, Rs (LFE is not measured)


def _rbj_high_shelf(sample_rate: int, gain_db: float, freq: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    a = 10 ** (gain_db / 40.0)
    w0 = 2 * math.pi * freq / sample_rate
    alpha = math.sin(w0) / (2 * q)
    cos_w0 = math.cos(w0)
    b = np.array([a * ((a + 1) + (a - 1) * cos_w0 + 2 * math.sqrt(a) * alpha),
                  -2 * a * ((a - 1) + (a + 1) * cos_w0),
                  a * ((a + 1) + (a - 1) * cos_w0 - 2 * math.sqrt(a) * alpha)])
    den = np.array([(a + 1) - (a - 1) * cos_w0 + 2 * math.sqrt(a) * alpha,
                    2 * ((a - 1) - (a + 1) * cos_w0),
                    (a + 1) - (a - 1) * cos_w0 - 2 * math.sqrt(a) * alpha])
    return b / den[0], den / den[0]


def _rbj_high_pass(sample_rate: int, freq: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    w0 = 2 * math.pi * freq / sample_rate
    alpha = math.sin(w0) / (2 * q)
    cos_w0 = math.cos(w0)
    b = np.array([(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2])
    den = np.array([1 + alpha, -2 * cos_w0, 1 - alpha])
    return b / den[0], den / den[0]


def k_weighting(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """BS.1770's K-weighting of [C, T] float64 audio: a +4 dB high shelf at 1.5 kHz, then a 38 Hz high-pass."""
    b, a = _rbj_high_shelf(sample_rate, 4.0, 1500.0, 1 / math.sqrt(2))
    wav = signal.lfilter(b, a, wav, axis=-1)
    b, a = _rbj_high_pass(sample_rate, 38.0, 0.5)
    return signal.lfilter(b, a, wav, axis=-1)


def integrated_loudness_lufs(wav: torch.Tensor, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness of [C, T] audio in LUFS (-inf when every block is gated out,
    NaN for audio shorter than one 400 ms block)."""
    x = np.asarray(wav.detach().double().cpu().reshape(-1, wav.shape[-1]).numpy())
    if x.shape[0] > len(CHANNEL_WEIGHTS):
        raise ValueError(f"loudness is defined for at most {len(CHANNEL_WEIGHTS)} channels, got {x.shape[0]}")
    block, step = round(0.4 * sample_rate), round(0.1 * sample_rate)
    if x.shape[-1] < block:
        return float("nan")
    y = k_weighting(x, sample_rate) ** 2
    n_blocks = 1 + (x.shape[-1] - block) // step
    csum = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y, axis=-1)], axis=-1)
    starts = np.arange(n_blocks) * step
    power = (csum[:, starts + block] - csum[:, starts]) / block                # [C, blocks]
    weighted = (np.asarray(CHANNEL_WEIGHTS[:x.shape[0]])[:, None] * power).sum(0)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(weighted)
    kept = weighted[block_lufs > -70.0]
    if kept.size == 0:
        return float("-inf")
    relative_gate = -0.691 + 10 * np.log10(kept.mean()) - 10.0
    kept = weighted[(block_lufs > -70.0) & (block_lufs > relative_gate)]
    if kept.size == 0:
        return float("-inf")
    return float(-0.691 + 10 * np.log10(kept.mean()))
