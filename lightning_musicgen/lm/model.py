"""MusicGenLM: the token language model over K parallel codebook streams (plain nn.Module),
configured by `LMConfig` (a dataclass: the YAML `lm:` block, checkpoints and model folders).

Input: a pattern-built token sequence `seq[B, K, S]` (see `lm.patterns`), shifted right by one
step with the special token (id `card`) in front. Embedding: the sum of K tables (each of size
card + 1 for the special token). Output: K heads -> logits `[B, K, S, card]`, where
`logits[:, :, s]` predicts the pattern step s (that is, `seq[:, :, s]` before the shift).

Conditions (`LMConditions`) enter through cross-attention (`cross`, `cross_mask`), as a prefix
prepended to the sequence (`prefix`, the melody model; prefix positions produce no logits) and/or
added to the token embeddings, stretched over the sequence's steps (`summed`, a time-aligned chroma).

Generation API (used by `MusicGen`):
    cache = lm.make_cache(batch_size, max_steps, conditions)
    logits = lm(first_chunk, conditions, cache=cache)     # e.g. the special column [B, K, 1]
    logits = lm(next_chunk, conditions, cache=cache)      # one (or more) new steps
The cache holds self-attention K/V; cross-attention K/V are computed on the first call only.
Logits with the cache equal those of one full forward pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_musicgen.config_dict import dataclass_from_dict
from lightning_musicgen.errors import ConfigError
from lightning_musicgen.lm.conditioners import LMConditions
from lightning_musicgen.lm.patterns import PATTERNS, Pattern, get_pattern
from lightning_musicgen.lm.transformer import KVCache, Transformer


ACTIVATIONS = ("gelu", "relu", "gelu_tanh")
POSITIONALS = ("sin", "rope", "sin_rope")
ATTENTION_BACKENDS = ("sdpa", "xformers")


@dataclass
class LMConfig:
    """Every hyperparameter of a MusicGenLM (defaults: MusicGen-small). `n_q`/`card` may be None
    in a training config: MusicGenModule then reads them from its codec."""
    n_q: int | None = 4
    card: int | None = 2048
    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int | None = None
    activation: str = "gelu"
    bias: bool = False
    dropout: float = 0.0
    positional: str = "sin"
    max_period: float = 10000.0
    cross_attention: bool = True
    pattern: str = "delay"
    pattern_kwargs: dict[str, Any] | None = None
    attention_backend: str = "sdpa"
    gradient_checkpointing: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("n_q", "card", "dim", "num_heads", "num_layers", "ffn_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"lm config: {name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"lm config: dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lm config: dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("activation", ACTIVATIONS), ("positional", POSITIONALS),
                              ("pattern", PATTERNS), ("attention_backend", ATTENTION_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"lm config: {name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        self.pattern_kwargs = dict(self.pattern_kwargs or {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LMConfig":
        return dataclass_from_dict(cls, d, "lm config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MusicGenLM(nn.Module):
    """MusicGen's decoder: K embeddings summed, a pre-norm transformer, K output heads.

    `MusicGenLM(LMConfig(...))` or `MusicGenLM(dim=..., ...)` (keyword overrides of the config)."""

    def __init__(self, config: LMConfig | dict | None = None, **overrides):
        super().__init__()
        if isinstance(config, dict):
            config = LMConfig.from_dict(config)
        config = LMConfig.from_dict({**(config or LMConfig()).to_dict(), **overrides})
        if config.n_q is None or config.card is None:
            raise ConfigError("lm config: n_q and card must be set to build the LM (None is only for training "
                              "configs that read them from the codec)")
        self.config = config
        c = config
        self.n_q, self.card, self.dim = c.n_q, c.card, c.dim
        self.special_token = c.card
        self.pattern: Pattern = get_pattern(c.pattern, c.n_q, **c.pattern_kwargs)
        self.emb = nn.ModuleList(nn.Embedding(c.card + 1, c.dim) for _ in range(c.n_q))
        self.transformer = Transformer(c.dim, c.num_heads, c.num_layers, c.ffn_dim, c.cross_attention, c.activation,
                                       c.bias, c.dropout, c.positional, c.max_period, c.attention_backend,
                                       c.gradient_checkpointing, c.norm_eps)
        self.out_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(c.dim, c.card, bias=False) for _ in range(c.n_q))
        self.cross_attention = c.cross_attention

    # ---- core -----------------------------------------------------------------------------
    def make_cache(self, batch_size: int, max_steps: int, conditions: LMConditions | None = None,
                   device=None, dtype=None) -> KVCache:
        """A KV cache for `max_steps` sequence steps (plus the conditions' prefix)."""
        prefix = conditions.prefix_len if conditions is not None else 0
        return self.transformer.make_cache(batch_size, prefix + max_steps, device, dtype)

    def forward(self, seq: torch.Tensor, conditions: LMConditions | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """seq [B, K, S] (ids in [0, card], card = special) -> logits [B, K, S, card]."""
        B, K, S = seq.shape
        if K != self.n_q:
            raise ValueError(f"expected {self.n_q} codebooks, got a sequence of shape {tuple(seq.shape)}")
        x = sum(self.emb[k](seq[:, k]) for k in range(K))
        conditions = conditions or LMConditions()
        if conditions.summed is not None:
            x = x + self._stretched(conditions, S, cache).to(x.dtype)
        prefix_len = 0
        if conditions.prefix is not None and (cache is None or cache.offset == 0):
            prefix_len = conditions.prefix.shape[1]
            x = torch.cat([conditions.prefix.to(x.dtype), x], dim=1)
        cross, cross_mask = conditions.cross, conditions.cross_mask
        if self.cross_attention and cross is None and not (cache is not None and cache.offset > 0):
            raise ValueError("this LM uses cross-attention: conditions.cross is required")
        h = self.transformer(x, cross if self.cross_attention else None, cross_mask, cache)
        h = self.out_norm(h[:, prefix_len:])
        return torch.stack([head(h) for head in self.heads], dim=1)

    @staticmethod
    def _stretched(conditions: LMConditions, S: int, cache: KVCache | None) -> torch.Tensor:
        """`conditions.summed` stretched (nearest) over the whole sequence, the rows of this call's S
        steps. Without a cache the call is the whole sequence (training, audiocraft's
        `input_interpolate`); with one, the whole is what the cache was made for, so each generation
        step adds the frame of its own time (audiocraft stretches over the current input instead)."""
        start, total = 0, S
        if cache is not None:
            total = cache.layers[0].k.shape[2] - conditions.prefix_len
            start = max(cache.offset - conditions.prefix_len, 0)
            if start + S > total:
                raise RuntimeError(f"KV cache overflow: {cache.offset + S} positions > cache size "
                                   f"{cache.layers[0].k.shape[2]}")
        cond = F.interpolate(conditions.summed.transpose(1, 2).float(), size=total, mode="nearest")
        return cond.transpose(1, 2)[:, start: start + S]

    def shift_right(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, K, S] -> the LM input: a special-token step, then seq[..., :-1]."""
        start = seq.new_full((*seq.shape[:2], 1), self.special_token)
        return torch.cat([start, seq[..., :-1]], dim=-1)

    # ---- teacher forcing --------------------------------------------------------------------
    def compute_logits(self, codes: torch.Tensor, conditions: LMConditions | None = None,
                       padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, T] -> (logits [B, K, T, card], valid [B, K, T]): logits[b, k, t] is the
        distribution of codes[b, k, t] given its past under the pattern (build -> forward -> revert).
        `padding_mask` [B, T] (True = real frame): padded codes are replaced by the special token
        before the pattern is built, so they cannot influence anything, and are marked invalid."""
        B, K, T = codes.shape
        _, logits = self._teacher_forced(codes, conditions, padding_mask)
        values, mask = self.pattern.revert(logits, T)
        valid = mask.unsqueeze(0).expand(B, K, T)
        if padding_mask is not None:
            valid = valid & padding_mask.bool()[:, None, :]
        return values, valid

    def loss(self, codes: torch.Tensor, conditions: LMConditions | None = None,
             padding_mask: torch.Tensor | None = None,
             keep_only_valid_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked cross-entropy: (mean over codebooks, per-codebook CE [K]); only valid (k, t)
        positions count: padded frames and steps where the pattern holds no code never do.
        `keep_only_valid_steps` (audiocraft's training) also leaves out the pattern's last
        `overhang` steps (under the delay pattern, the last d_k frames of codebook k).

        Computed in pattern space (logits at step s against `seq[:, :, s]`): every valid (k, t)
        sits at exactly one step, so this equals the CE of `compute_logits` without gathering
        the [B, K, T, card] logits back to frame order."""
        seq, logits = self._teacher_forced(codes, conditions, padding_mask)
        valid = seq != self.special_token
        if keep_only_valid_steps:
            valid[..., self.pattern.valid_steps(codes.shape[-1]):] = False
        ce = F.cross_entropy(logits.float().flatten(0, 2), seq.masked_fill(~valid, -100).flatten(),
                             ignore_index=-100, reduction="none").view_as(seq)  # 0 where not valid
        per_codebook = ce.sum(dim=(0, 2)) / valid.sum(dim=(0, 2)).clamp(min=1)
        return per_codebook.mean(), per_codebook

    def _teacher_forced(self, codes: torch.Tensor, conditions: LMConditions | None,
                        padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pattern sequence [B, K, S], logits [B, K, S, card]) of one teacher-forced pass; padded
        frames become the special token before the pattern is built, so they influence nothing."""
        if padding_mask is not None:
            codes = codes.masked_fill(~padding_mask.bool()[:, None, :], self.special_token)
        seq = self.pattern.build(codes, self.special_token)
        return seq, self(self.shift_right(seq), conditions)
