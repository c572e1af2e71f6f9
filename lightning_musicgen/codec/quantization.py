"""Residual vector quantization with EMA codebooks (EnCodec / SoundStream).

- codebooks are learnt by exponential moving averages of the assigned vectors (no gradient);
- k-means on the first training batch initialises them (once; the `inited` buffer remembers);
- codes whose EMA usage falls under `threshold_ema_dead_code` are replaced by random vectors of the
  current batch;
- under torch.distributed the EMA statistics are all-reduced and initialisation / replacement come
  from rank 0, so every replica keeps identical codebooks;
- everything runs in fp32, also under bf16 autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from lightning_musicgen.distributed import is_distributed, mean_across_ranks


def _broadcast(*tensors: torch.Tensor) -> None:
    if is_distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


def sample_vectors(x: torch.Tensor, n: int) -> torch.Tensor:
    """n rows of x[N, D] drawn at random (without replacement when N >= n)."""
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0], device=x.device)[:n]
    else:
        idx = torch.randint(0, x.shape[0], (n,), device=x.device)
    return x[idx]


def nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean) for each row of x[N, D]."""
    embed_t = embed.t()
    dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed_t + embed_t.pow(2).sum(0, keepdim=True))
    return dist.max(dim=-1).indices


def kmeans(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x[N, D]: returns centroids[k, D] and cluster sizes[k]."""
    centroids = sample_vectors(x, k)
    counts = torch.zeros(k, device=x.device)
    for _ in range(iters):
        assign = nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return centroids, counts


@dataclass
class VQStats:
    """Per-quantizer diagnostics of one training forward."""
    usage: float = 0.0          # fraction of the codebook used in this batch
    perplexity: float = 0.0     # exp(entropy) of the batch code histogram
    dead_replaced: int = 0      # codes re-initialised this step


class EuclideanCodebook(nn.Module):
    """One EMA codebook of `card` vectors of size `dim` (buffer names follow EnCodec)."""

    def __init__(self, dim: int, card: int, decay: float = 0.99, epsilon: float = 1e-5,
                 kmeans_init: bool = True, kmeans_iters: int = 10, threshold_ema_dead_code: float = 2.0):
        super().__init__()
        self.dim, self.card, self.decay, self.epsilon = dim, card, decay, epsilon
        self.kmeans_iters, self.threshold_ema_dead_code = kmeans_iters, threshold_ema_dead_code
        embed = torch.zeros(card, dim) if kmeans_init else nn.init.kaiming_uniform_(torch.empty(card, dim))
        self.register_buffer("inited", torch.tensor([float(not kmeans_init)]))
        self.register_buffer("cluster_size", torch.zeros(card))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x[..., D] -> codes[...]."""
        return nearest(x.reshape(-1, self.dim), self.embed).view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """k-means on the first batch (rank 0's, broadcast to the others)."""
        centroids, counts = kmeans(x, self.card, self.kmeans_iters)
        self.embed.copy_(centroids)
        self.embed_avg.copy_(centroids * counts[:, None])  # EMA sums consistent with embed = avg / size
        self.cluster_size.copy_(counts)
        self.inited.fill_(1.0)
        _broadcast(self.embed, self.embed_avg, self.cluster_size)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """EMA of cluster sizes and sums over the (global) batch; returns this batch's counts."""
        counts = torch.bincount(codes, minlength=self.card).to(x.dtype)
        sums = torch.zeros(self.card, self.dim, device=x.device, dtype=x.dtype).index_add_(0, codes, x)
        stats = mean_across_ranks(torch.cat([counts[:, None], sums], dim=1))
        counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_avg.lerp_(sums, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.card * self.epsilon) * n  # Laplace
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        return counts

    @torch.no_grad()
    def replace_dead_codes(self, x: torch.Tensor) -> int:
        """Re-initialise codes used less than the threshold (EMA count) with vectors of the batch."""
        if self.threshold_ema_dead_code <= 0:
            return 0
        dead = self.cluster_size < self.threshold_ema_dead_code
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        fresh = sample_vectors(x, n_dead)
        _broadcast(fresh)  # rank 0 picks, so replicas stay identical (dead mask is already equal)
        self.embed[dead] = fresh
        self.cluster_size[dead] = self.threshold_ema_dead_code
        self.embed_avg[dead] = fresh * self.threshold_ema_dead_code
        return n_dead

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, VQStats]:
        """x[N, D] -> (quantized[N, D], codes[N], stats); updates the codebook when training."""
        if self.training and not bool(self.inited.item()):
            self.init_from(x.detach())
        codes = nearest(x.detach(), self.embed)
        quantized = self.decode(codes)
        stats = VQStats()
        if self.training:
            counts = self.ema_update(x.detach(), codes)
            stats.dead_replaced = self.replace_dead_codes(x.detach())
            probs = counts / counts.sum().clamp(min=1)
            stats.usage = float((counts > 0).float().mean())
            stats.perplexity = float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum()))
        return quantized, codes, stats


@dataclass
class QuantizedResult:
    """Output of ResidualVectorQuantizer.forward."""
    quantized: torch.Tensor                  # [B, D, F], straight-through to the input
    codes: torch.Tensor                      # [B, K, F]
    commit_loss: torch.Tensor                # scalar, mean over the quantizers used
    num_quantizers: int
    stats: list[VQStats] = field(default_factory=list)


class ResidualVectorQuantizer(nn.Module):
    """K codebooks applied in turn to the residual of the previous ones.

    `q_dropout` (training only) keeps a random number of quantizers in [1, n_q] per batch, which
    trains every bandwidth at once; the draw uses a generator seeded identically on every rank.
    """

    def __init__(self, dimension: int = 128, n_q: int = 4, card: int = 2048, decay: float = 0.99,
                 kmeans_init: bool = True, kmeans_iters: int = 10, threshold_ema_dead_code: float = 2.0,
                 q_dropout: bool = False, seed: int = 1234):
        super().__init__()
        self.dimension, self.n_q, self.card, self.q_dropout = dimension, n_q, card, q_dropout
        self.layers = nn.ModuleList(
            EuclideanCodebook(dimension, card, decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                              threshold_ema_dead_code=threshold_ema_dead_code) for _ in range(n_q))
        self._rng = torch.Generator().manual_seed(seed)

    def bits_per_frame(self, n_q: int | None = None) -> float:
        return (n_q or self.n_q) * math.log2(self.card)

    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Latent [B, D, F] -> codes [B, K, F] (K = n_q or all); fp32 also under autocast."""
        with torch.autocast(z.device.type, enabled=False):
            residual = z.float().transpose(1, 2)
            codes = []
            for layer in self.layers[: n_q or self.n_q]:
                idx = layer.encode(residual)
                residual = residual - layer.decode(idx)
                codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, F] -> latent [B, D, F] (sum of the K codebook vectors)."""
        if codes.shape[1] > self.n_q:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the quantizer has {self.n_q}")
        out = self.layers[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            out = out + self.layers[k].decode(codes[:, k])
        return out.transpose(1, 2)

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> QuantizedResult:
        n_q = n_q or self.n_q
        if self.training and self.q_dropout:
            n_q = int(torch.randint(1, n_q + 1, (1,), generator=self._rng))
        with torch.autocast(z.device.type, enabled=False):
            b, d, f = z.shape
            x = z.float().transpose(1, 2).reshape(-1, d)
            residual, quantized_out = x, torch.zeros_like(x)
            codes, stats, commit = [], [], x.new_zeros(())
            for layer in self.layers[:n_q]:
                q, idx, st = layer(residual)
                q = q.detach()
                commit = commit + F.mse_loss(residual, q)
                residual = residual - q
                quantized_out = quantized_out + q
                codes.append(idx.view(b, f))
                stats.append(st)
            # one straight-through estimator for the sum: the gradient reaches z exactly once
            quantized_out = x + (quantized_out - x).detach()
            quantized = quantized_out.view(b, f, d).transpose(1, 2)
        return QuantizedResult(quantized, torch.stack(codes, dim=1), commit / n_q, n_q, stats)
