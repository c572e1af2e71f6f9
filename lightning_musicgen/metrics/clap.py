"""CLAP score: mean cosine similarity between text and audio embeddings of a CLAP model."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CLAPScore(Metric):
    """Mean cosine similarity between each caption and the audio generated from it.

    Args:
        clap: a `ClapEmbedder` (then `update(wav, texts, sample_rate)` takes waveforms and captions)
            or None (then `update(audio_embeddings [B, D], text_embeddings [B, D])`).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, clap=None, **kwargs):
        super().__init__(**kwargs)
        self.clap = clap
        if clap is not None:
            clap.eval().requires_grad_(False)
        self.add_state("cosine_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, audio, texts, sample_rate: int | None = None) -> None:
        if self.clap is not None:
            if sample_rate is None:
                raise ValueError("CLAPScore.update: sample_rate is required with a CLAP model")
            if len(texts) != audio.shape[0]:
                raise ValueError(f"CLAPScore: {audio.shape[0]} clips but {len(texts)} captions")
            audio, texts = self.clap.embed_audio(audio, sample_rate), self.clap.embed_text(list(texts))
        if audio.shape != texts.shape:
            raise ValueError(f"CLAPScore: audio {tuple(audio.shape)} and text {tuple(texts.shape)} embeddings differ")
        cosine = torch.nn.functional.cosine_similarity(audio.double(), texts.double(), dim=-1)
        self.cosine_sum += cosine.sum()
        self.count += cosine.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            raise ValueError("CLAPScore: no pairs were added")
        return self.cosine_sum / self.count
