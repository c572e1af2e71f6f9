"""Pitch content of a waveform, from the package's `ChromaExtractor` (MusicGen's melody chroma settings).

`pitch_content(wav [C, T] or [T], sample_rate)` -> `{"clarity", "changes_per_second", "frames"}`:

- clarity: how much one pitch class dominates each frame, (max - mean) / max of the frame's 12 chroma
  energies, rescaled by 12/11 so that a single pitch class is 1 and a flat chroma (noise) is 0;
  averaged over the frames that are not silent (frame energy within 60 dB of the loudest frame).
- changes_per_second: how often the dominant pitch class changes between consecutive non-silent
  frames, per second of audio. Held notes make it low, a drone makes it 0, noise (a new argmax
  at almost every 128 ms frame) makes it about 7.
Music with notes that move has a high clarity and a change rate near the training music's; an
unpitched texture has a low clarity, a drone a near-zero change rate.
"""
from __future__ import annotations

import torch

from lightning_musicgen.audio import ChromaExtractor, resample

_extractors: dict[int, ChromaExtractor] = {}


def _extractor(hop_length: int) -> ChromaExtractor:
    if hop_length not in _extractors:
        _extractors[hop_length] = ChromaExtractor(32000, 12, hop_length=hop_length, argmax=False)
    return _extractors[hop_length]


@torch.no_grad()
def chroma_energies(wav: torch.Tensor, sample_rate: int, hop_length: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(chroma [frames, 12] normalised to max 1 per frame, frame energy [frames] in dB)."""
    extractor = _extractor(hop_length)
    mono = wav.float().reshape(-1, wav.shape[-1]).mean(0)
    mono = resample(mono[None], sample_rate, extractor.sample_rate)[0]
    chroma = extractor(mono[None])[0]
    frames = chroma.shape[0]
    padded = torch.nn.functional.pad(mono, (extractor.n_fft // 2, extractor.n_fft // 2))
    starts = torch.arange(frames) * extractor.hop_length
    power = torch.stack([padded[s: s + extractor.n_fft].pow(2).mean() for s in starts.tolist()])
    return chroma, 10 * torch.log10(power.clamp_min(1e-12))


def pitch_content(wav: torch.Tensor, sample_rate: int, hop_length: int = 4096, silence_db: float = 60.0) -> dict:
    """The statistics of the module docstring for one clip."""
    chroma, energy = chroma_energies(wav, sample_rate, hop_length)
    loud = energy > energy.max() - silence_db
    chroma = chroma[loud]
    if chroma.shape[0] == 0:
        return {"clarity": 0.0, "changes_per_second": 0.0, "frames": 0}
    peak = chroma.max(-1).values.clamp_min(1e-8)
    clarity = ((peak - chroma.mean(-1)) / peak * 12 / 11).mean()
    dominant = chroma.argmax(-1)
    changes = (dominant[1:] != dominant[:-1]).sum().item()
    seconds = wav.shape[-1] / sample_rate
    return {"clarity": float(clarity), "changes_per_second": changes / seconds, "frames": int(chroma.shape[0])}
