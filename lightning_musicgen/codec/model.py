"""CompressionModel: SEANet encoder + RVQ + SEANet decoder (EnCodec), configured by `CodecConfig`.

An nn.Module only: reading and writing codec files is `lightning_musicgen.model_files.codec`
(`save_codec(model, dir)`, `load_codec(path)`; see docs/model_files.md), which depends on this module.

Vocabulary (MusicGen's): `n_q` codebooks of `card` codes each. `config.n_q` is how many the model has
(`max_n_q`); `n_q` is how many `encode` uses (settable, for variable bandwidth). Files written before
the rename (keys "num_codebooks", "bins") are translated by the loader in `model_files.codec`, not here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_musicgen.codec.quantization import QuantizedResult, ResidualVectorQuantizer
from lightning_musicgen.config_dict import dataclass_from_dict
from lightning_musicgen.codec.seanet import SEANetDecoder, SEANetEncoder
from lightning_musicgen.errors import ConfigError



@dataclass
class CodecConfig:
    """Every hyperparameter of a CompressionModel (defaults: MusicGen's EnCodec 32 kHz)."""
    sample_rate: int = 32000
    channels: int = 1
    dimension: int = 128
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 5, 4, 4)
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    true_skip: bool = True
    causal: bool = False
    norm: str = "weight_norm"
    pad_mode: str = "reflect"
    trim_right_ratio: float = 1.0
    n_q: int = 4
    card: int = 2048
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    q_dropout: bool = False

    def __post_init__(self):
        self.ratios = tuple(int(r) for r in self.ratios)
        for name in ("sample_rate", "channels", "dimension", "n_filters", "n_q", "card"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"codec config: {name} must be positive, got {getattr(self, name)}")
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise ConfigError(f"codec config: ratios must be positive integers, got {list(self.ratios)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecConfig":
        return dataclass_from_dict(cls, d, "codec config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        return d


class CompressionModel(nn.Module):
    """EnCodec-style neural audio codec: wav[B, C, T] <-> codes[B, K, F] at `frame_rate` Hz.

    Attributes: `sample_rate`, `channels`, `frame_rate`, `hop_length`, `n_q` (settable, 1..max_n_q, for
    variable bandwidth), `max_n_q`, `card`.
    """

    def __init__(self, config: CodecConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = CodecConfig.from_dict(overrides)
        elif overrides:
            config = CodecConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        seanet = dict(channels=config.channels, dimension=config.dimension, n_filters=config.n_filters,
                      n_residual_layers=config.n_residual_layers, ratios=config.ratios,
                      kernel_size=config.kernel_size, last_kernel_size=config.last_kernel_size,
                      residual_kernel_size=config.residual_kernel_size, dilation_base=config.dilation_base,
                      compress=config.compress, lstm_layers=config.lstm_layers, true_skip=config.true_skip,
                      causal=config.causal, norm=config.norm, pad_mode=config.pad_mode)
        self.encoder = SEANetEncoder(**seanet)
        self.decoder = SEANetDecoder(**seanet, trim_right_ratio=config.trim_right_ratio)
        self.quantizer = ResidualVectorQuantizer(
            config.dimension, config.n_q, config.card, config.decay, config.kmeans_init,
            config.kmeans_iters, config.threshold_ema_dead_code, config.q_dropout)
        self._n_q = config.n_q

    # -- attributes of the public contract -------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def hop_length(self) -> int:
        return math.prod(self.config.ratios)

    @property
    def frame_rate(self) -> float:
        """Codes per second (50.0 for the 32 kHz model)."""
        return self.config.sample_rate / self.hop_length

    @property
    def card(self) -> int:
        """Codes per codebook."""
        return self.config.card

    @property
    def max_n_q(self) -> int:
        """Codebooks the model has."""
        return self.config.n_q

    @property
    def n_q(self) -> int:
        """Codebooks `encode` uses (1..max_n_q)."""
        return self._n_q

    @n_q.setter
    def n_q(self, n: int) -> None:
        if not 1 <= int(n) <= self.config.n_q:
            raise ConfigError(f"codec n_q must be in [1, {self.config.n_q}], got {n}")
        self._n_q = int(n)

    @property
    def bitrate(self) -> float:
        """Bits per second at the current number of codebooks."""
        return self.frame_rate * self.quantizer.bits_per_frame(self.n_q)

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)

    # -- inference -------------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"expected wav [B, {self.channels}, T], got shape {list(wav.shape)}")

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav[B, C, T] -> codes LongTensor[B, n_q, ceil(T / hop_length)]."""
        self._check_wav(wav)
        with parametrize.cached():
            z = self.encoder(wav)
        return self.quantizer.encode(z, self.n_q)

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B, K, F] -> quantized latent[B, dimension, F]."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, K, F], got shape {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.card):
            raise ValueError(f"codes must be in [0, {self.card}), got [{int(codes.min())}, "
                             f"{int(codes.max())}]")
        return self.quantizer.decode(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B, K, F] (K <= max_n_q) -> wav[B, C, F * hop_length]."""
        z = self.decode_latent(codes)
        with parametrize.cached():
            return self.decoder(z)

    # -- training --------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, n_q: int | None = None) -> tuple[torch.Tensor, QuantizedResult]:
        """Training pass: (reconstruction[B, C, T] trimmed to the input length, quantizer result)."""
        self._check_wav(wav)
        z = self.encoder(wav)
        q = self.quantizer(z, n_q)
        y = self.decoder(q.quantized.to(z.dtype))
        return y[..., : wav.shape[-1]], q
