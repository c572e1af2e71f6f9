"""Fréchet distance between Gaussians and the Fréchet Audio Distance as a torchmetrics Metric."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_musicgen.errors import ConfigError, InputError, MissingFileError


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).
    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of the symmetric PSD matrix sqrt(sigma1) sigma2 sqrt(sigma1) (same spectrum as
    sigma1 sigma2), in float64. Unlike `scipy.linalg.sqrtm` of the non-symmetric product this stays
    real and finite for singular or near-singular covariances (fewer samples than dimensions).
    Accepts numpy arrays or tensors.
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m) if not isinstance(m, Tensor) else m).double().flatten()
                for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(np.asarray(s) if not isinstance(s, Tensor) else s).double()
                      for s in (sigma1, sigma2))
    sigma1, sigma2 = torch.atleast_2d(sigma1), torch.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(),) * 2:
        raise ValueError(f"frechet_distance: shapes do not match: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
                         f"sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    sqrt1 = _sqrt_psd(sigma1.cpu())
    middle = sqrt1 @ sigma2.cpu() @ sqrt1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = (mu1 - mu2).cpu()
    return float(diff @ diff + sigma1.trace().cpu() + sigma2.trace().cpu() - 2 * tr_covmean)


def load_reference_stats(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read reference statistics (mu [D], sigma [D, D]) from a .npz/.npy-dict or torch file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: reference statistics file not found")
    try:
        if path.endswith((".npz", ".npy")):
            data = np.load(path, allow_pickle=False)
            data = {k: data[k] for k in data.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
        mu, sigma = (torch.as_tensor(np.asarray(data[k])).double() for k in ("mu", "sigma"))
    except KeyError as exc:
        raise InputError(f"{path}: reference statistics need keys 'mu' and 'sigma' (missing {exc})") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read reference statistics ({exc})") from None
    if sigma.shape != (mu.numel(), mu.numel()):
        raise InputError(f"{path}: sigma has shape {tuple(sigma.shape)}, expected {(mu.numel(),) * 2}")
    return mu.flatten(), sigma


def save_reference_stats(path: str | os.PathLike, mu, sigma) -> None:
    """Write mu and sigma to an .npz file readable by `load_reference_stats`."""
    np.savez(os.fspath(path), mu=np.asarray(torch.as_tensor(mu).double()),
             sigma=np.asarray(torch.as_tensor(sigma).double()))


class FrechetAudioDistance(Metric):
    """Fréchet distance between the embedding distributions of generated and reference audio.

    Keeps running sums (count, sum, sum of outer products, float64) for both sets, so the state is
    small, constant in the number of clips and summed across DDP ranks. Every frame embedding of a
    clip is one sample, as in the original FAD.

    Args:
        embedder: an `AudioEmbedder` (then `update` takes waveforms [B, C, T] and a sample rate)
            or None (then `update` takes embeddings [N, D] or [B, N, D]).
        num_features: embedding size D (taken from the embedder when given).
        reference_stats: optional path to a file of `mu` and `sigma` (e.g. of a whole dataset);
            then reference audio passed to `update(..., real=True)` is not needed.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, embedder=None, num_features: int | None = None,
                 reference_stats: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embedder = embedder
        if embedder is not None:
            embedder.eval().requires_grad_(False)
            num_features = embedder.embedding_dim
        if num_features is None:
            raise ConfigError("FrechetAudioDistance needs an embedder or num_features")
        self.num_features = num_features
        self.reference_mu = self.reference_sigma = None
        if reference_stats is not None:
            self.reference_mu, self.reference_sigma = load_reference_stats(reference_stats)
            if self.reference_mu.numel() != num_features:
                raise ConfigError(f"{reference_stats}: statistics have {self.reference_mu.numel()} features, "
                                  f"the embedder gives {num_features}")
        for which in ("fake", "real"):
            self.add_state(f"{which}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{which}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{which}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def _features(self, x: Tensor, sample_rate: int | None) -> Tensor:
        if self.embedder is not None:
            if sample_rate is None:
                raise ValueError("FrechetAudioDistance.update: sample_rate is required with an embedder")
            x = self.embedder.embeddings(x, sample_rate)
        return x.reshape(-1, x.shape[-1]).double()

    def update(self, x: Tensor, real: bool = False, sample_rate: int | None = None) -> None:
        """Add generated (real=False) or reference (real=True) audio or embeddings."""
        feats = self._features(x, sample_rate)
        if feats.shape[-1] != self.num_features:
            raise ValueError(f"FrechetAudioDistance: got {feats.shape[-1]} features, expected {self.num_features}")
        which = "real" if real else "fake"
        setattr(self, f"{which}_n", getattr(self, f"{which}_n") + feats.shape[0])
        setattr(self, f"{which}_sum", getattr(self, f"{which}_sum") + feats.sum(0))
        setattr(self, f"{which}_outer", getattr(self, f"{which}_outer") + feats.T @ feats)

    def _stats(self, which: str) -> tuple[Tensor, Tensor]:
        n = getattr(self, f"{which}_n")
        if n < 2:
            raise ValueError(f"FrechetAudioDistance: need at least 2 {which} embeddings, have {int(n)}")
        mu = getattr(self, f"{which}_sum") / n
        sigma = (getattr(self, f"{which}_outer") - n * torch.outer(mu, mu)) / (n - 1)  # unbiased, like np.cov
        return mu, sigma

    def generated_stats(self) -> tuple[Tensor, Tensor]:
        return self._stats("fake")

    def reference_stats(self) -> tuple[Tensor, Tensor]:
        if self.reference_mu is not None:
            return self.reference_mu, self.reference_sigma
        return self._stats("real")

    def compute(self) -> Tensor:
        mu1, sigma1 = self.generated_stats()
        mu2, sigma2 = self.reference_stats()
        return torch.tensor(frechet_distance(mu1, sigma1, mu2, sigma2), dtype=torch.float64)
