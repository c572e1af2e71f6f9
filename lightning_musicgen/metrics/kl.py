"""KL divergence between a classifier's label distributions on reference and generated audio."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-row KL(p || q) = sum_c p_c (log p_c - log q_c), with `eps` added inside both logs."""
    p, q = p.double(), q.double()
    return (p * ((p + eps).log() - (q + eps).log())).sum(-1)


class KLDivergence(Metric):
    """Mean KL divergence between label distributions of paired reference and generated clips.

    As in the MusicGen paper the headline value is KL(reference || generated) (`kl`); the reverse
    KL(generated || reference) (`kl_reverse`) and their sum (`kl_symmetric`) are returned too.
    Each pair is one generated clip and the reference clip of the same prompt.

    Args:
        classifier: an `AudioEmbedder` with `class_probs(wav, sample_rate) -> [B, classes]`
            (then `update` takes waveforms), or None (then `update` takes probabilities [B, classes]).
        eps: added to the probabilities inside the logarithms.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, classifier=None, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        if classifier is not None:
            classifier.eval().requires_grad_(False)
        self.eps = eps
        for name in ("kl_sum", "kl_reverse_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: Tensor, reference: Tensor, sample_rate: int | None = None) -> None:
        if self.classifier is not None:
            if sample_rate is None:
                raise ValueError("KLDivergence.update: sample_rate is required with a classifier")
            generated = self.classifier.class_probs(generated, sample_rate)
            reference = self.classifier.class_probs(reference, sample_rate)
        if generated.shape != reference.shape:
            raise ValueError(f"KLDivergence: generated {tuple(generated.shape)} and reference "
                             f"{tuple(reference.shape)} probabilities differ in shape")
        self.kl_sum += kl_divergence(reference, generated, self.eps).sum()
        self.kl_reverse_sum += kl_divergence(generated, reference, self.eps).sum()
        self.count += generated.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            raise ValueError("KLDivergence: no pairs were added")
        kl, reverse = self.kl_sum / self.count, self.kl_reverse_sum / self.count
        return {"kl": kl, "kl_reverse": reverse, "kl_symmetric": kl + reverse}
