"""Pre-norm decoder transformer for MusicGen: causal self-attention, optional cross-attention,
a 4x feed-forward, sinusoidal positions (RoPE as an option), and a KV cache for generation.

Attention goes through `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on CUDA); `attention_backend="xformers"` uses xformers' memory-efficient kernel where it is
installed (CUDA only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_musicgen.errors import ConfigError


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """positions [...] -> [..., dim] as [cos(p * f_i), sin(p * f_i)], f_i = max_period**(-i/(dim/2-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32)
                      * -(math.log(max_period) / max(half - 1, 1)))
    angles = positions.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class RotaryEmbedding(nn.Module):
    """Rotary position embedding applied to queries and keys [B, H, L, Dh] (half-split layout)."""

    def __init__(self, head_dim: int, max_period: float = 10000.0):
        super().__init__()
        inv = max_period ** (-torch.arange(0, head_dim // 2, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        L = x.shape[-2]
        pos = torch.arange(offset, offset + L, device=x.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq.to(x.device)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class LayerCache:
    """Self-attention keys/values [B, H, max_len, Dh] filled up to `length`, plus the
    cross-attention keys/values computed once per generation."""
    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class KVCache:
    """One `LayerCache` per layer; `offset` = number of positions already processed."""
    layers: list[LayerCache] = field(default_factory=list)

    @property
    def offset(self) -> int:
        return self.layers[0].length if self.layers else 0


def _attention(q, k, v, mask, causal: bool, dropout: float, backend: str) -> torch.Tensor:
    """q [B,H,Lq,D], k/v [B,H,Lk,D]; mask bool (True = attend) broadcastable to [B,H,Lq,Lk]."""
    if backend == "xformers" and mask is None and q.is_cuda:
        from xformers import ops as xops
        # xformers does not follow autocast: a KV cache kept in fp32 under bf16 autocast meets bf16 queries
        k, v = k.to(q.dtype), v.to(q.dtype)
        bias = xops.LowerTriangularMask() if causal else None
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias, p=dropout)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=causal and mask is None)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection and an optional KV cache."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, dropout: float = 0.0,
                 rope: RotaryEmbedding | None = None, backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout, self.backend = num_heads, dim // num_heads, dropout, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = cache.length if cache is not None else 0
        if self.rope is not None:
            q, k = self.rope(q, offset), self.rope(k, offset)
        mask, causal = None, True
        if cache is not None:
            if offset + L > cache.k.shape[2]:
                raise RuntimeError(f"KV cache overflow: {offset + L} positions > cache size {cache.k.shape[2]}")
            cache.k[:, :, offset:offset + L] = k
            cache.v[:, :, offset:offset + L] = v
            cache.length = offset + L
            k, v = cache.k[:, :, :offset + L], cache.v[:, :, :offset + L]
            if offset > 0:
                causal = L > 1  # a single new query sees every cached key
                if causal:  # bottom-right aligned causal mask
                    rows = torch.arange(offset, offset + L, device=x.device)[:, None]
                    mask = torch.arange(offset + L, device=x.device)[None, :] <= rows
        dropout = self.dropout if self.training else 0.0
        y = _attention(q, k, v, mask, causal, dropout, self.backend)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    """Multi-head attention from the sequence to the condition tokens (keys padded where
    `mask` is False; a row with no valid key attends to all of them, which are zeros)."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout, self.backend = num_heads, dim // num_heads, dropout, backend
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def project_kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, Lc, D = cond.shape
        k, v = self.kv(cond).view(B, Lc, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None,
                cache: LayerCache | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        if cache is not None and cache.cross_kv is not None:
            k, v = cache.cross_kv
        else:
            k, v = self.project_kv(cond)
            if cache is not None:
                cache.cross_kv = (k, v)
        mask = None
        if cond_mask is not None:
            keep = cond_mask.bool() | ~cond_mask.bool().any(dim=1, keepdim=True)
            mask = keep[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        y = _attention(q, k, v, mask, False, dropout, self.backend)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class DecoderLayer(nn.Module):
    """x + SelfAttn(LN(x)); x + CrossAttn(LN(x), cond); x + FFN(LN(x)) (pre-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, cross_attention: bool = True,
                 activation: str = "gelu", bias: bool = False, dropout: float = 0.0,
                 rope: RotaryEmbedding | None = None, backend: str = "sdpa", norm_eps: float = 1e-5):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = SelfAttention(dim, num_heads, bias, dropout, rope, backend)
        self.norm_cross = nn.LayerNorm(dim, eps=norm_eps) if cross_attention else None
        self.cross_attn = CrossAttention(dim, num_heads, bias, dropout, backend) if cross_attention else None
        self.norm_ffn = nn.LayerNorm(dim, eps=norm_eps)
        acts = {"gelu": nn.GELU(), "relu": nn.ReLU(), "gelu_tanh": nn.GELU(approximate="tanh")}
        if activation not in acts:
            raise ConfigError(f"activation {activation!r} is not one of {sorted(acts)}")
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim, bias=bias), acts[activation],
                                 nn.Linear(ffn_dim, dim, bias=bias))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm_self(x), cache))
        if self.cross_attn is not None:
            if cond is None and (cache is None or cache.cross_kv is None):
                raise ValueError("this layer has cross-attention: pass the condition tensor")
            x = x + self.dropout(self.cross_attn(self.norm_cross(x), cond, cond_mask, cache))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class Transformer(nn.Module):
    """A stack of `DecoderLayer`s with positions added at the input (sinusoidal) or rotated into
    queries/keys (RoPE). `positional`: "sin", "rope" or "sin_rope"."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, ffn_dim: int | None = None,
                 cross_attention: bool = True, activation: str = "gelu", bias: bool = False,
                 dropout: float = 0.0, positional: str = "sin", max_period: float = 10000.0,
                 attention_backend: str = "sdpa", gradient_checkpointing: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        if positional not in ("sin", "rope", "sin_rope"):
            raise ConfigError(f"positional {positional!r} is not one of sin, rope, sin_rope")
        if attention_backend not in ("sdpa", "xformers"):
            raise ConfigError(f"attention_backend {attention_backend!r} is not one of sdpa, xformers")
        self.dim, self.num_heads, self.positional, self.max_period = dim, num_heads, positional, max_period
        self.gradient_checkpointing = gradient_checkpointing
        rope = RotaryEmbedding(dim // num_heads, max_period) if "rope" in positional else None
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, ffn_dim or 4 * dim, cross_attention, activation, bias, dropout, rope,
                         attention_backend, norm_eps) for _ in range(num_layers))
        self.input_dropout = nn.Dropout(dropout)

    def make_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        p = next(self.parameters())
        shape = (batch_size, self.num_heads, max_len, self.dim // self.num_heads)
        dev, dt = device or p.device, dtype or p.dtype
        return KVCache([LayerCache(torch.zeros(shape, device=dev, dtype=dt), torch.zeros(shape, device=dev, dtype=dt))
                        for _ in self.layers])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        offset = cache.offset if cache is not None else 0
        if "sin" in self.positional:
            pos = torch.arange(offset, offset + x.shape[1], device=x.device)
            x = x + sinusoidal_embedding(pos, self.dim, self.max_period).to(x.dtype)
        x = self.input_dropout(x)
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cond, cond_mask, use_reentrant=False)
            else:
                x = layer(x, cond, cond_mask, layer_cache)
        return x
