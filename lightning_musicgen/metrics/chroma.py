"""Chroma cosine similarity between generated audio and the melody it was conditioned on."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_musicgen.audio import ChromaExtractor, resample


class ChromaCosine(Metric):
    """Frame-wise cosine between the argmax chromas of generated and reference (melody) audio.

    Uses the package's one `ChromaExtractor` (the melody conditioner's), so with `argmax=True` a
    frame scores 1 when both clips have the same dominant pitch class and 0 otherwise. The value
    is the mean over all compared frames (the shorter clip of each pair sets the frame count).

    Args:
        sample_rate: rate at which chroma is computed (audio at other rates is resampled).
        n_chroma, n_fft, hop_length, argmax: passed to `ChromaExtractor` (MusicGen's defaults).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, sample_rate: int = 32000, n_chroma: int = 12, n_fft: int = 16384,
                 hop_length: int = 4096, argmax: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.chroma = ChromaExtractor(sample_rate, n_chroma=n_chroma, n_fft=n_fft,
                                      hop_length=hop_length, argmax=argmax)
        self.add_state("cosine_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: Tensor, reference: Tensor, sample_rate: int | None = None) -> None:
        """generated, reference: waveforms [B, C, T] (lengths may differ) at `sample_rate`."""
        if generated.shape[0] != reference.shape[0]:
            raise ValueError(f"ChromaCosine: {generated.shape[0]} generated vs {reference.shape[0]} reference clips")
        sample_rate = sample_rate or self.sample_rate
        generated, reference = (resample(w.float(), sample_rate, self.sample_rate) for w in (generated, reference))
        gen, ref = self.chroma(generated), self.chroma(reference)  # [B, frames, n_chroma]
        frames = min(gen.shape[1], ref.shape[1])
        cosine = torch.nn.functional.cosine_similarity(gen[:, :frames].double(), ref[:, :frames].double(),
                                                       dim=-1, eps=1e-8)
        self.cosine_sum += cosine.sum()
        self.frames += cosine.numel()

    def compute(self) -> Tensor:
        if self.frames == 0:
            raise ValueError("ChromaCosine: no frames were added")
        return self.cosine_sum / self.frames
