"""SEANet encoder/decoder (EnCodec's convolutional autoencoder): strided convs, residual blocks, LSTM.

Padding follows EnCodec exactly (reflect padding, the extra right padding that makes the last
window complete, asymmetric split for non-causal convs), so weights converted from transformers'
`EncodecModel` give the same numbers.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from lightning_musicgen.errors import ConfigError


def _normed(conv: nn.Module, norm: str) -> nn.Module:
    if norm == "weight_norm":
        return weight_norm(conv)
    if norm == "none":
        return conv
    raise ConfigError(f"norm must be 'weight_norm' or 'none', got {norm!r}")


def pad1d(x: torch.Tensor, left: int, right: int, mode: str = "reflect") -> torch.Tensor:
    """F.pad that also reflect-pads inputs shorter than the padding (zero-extend first, then trim)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode if mode != "zero" else "constant")
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    out = F.pad(x, (left, right), mode="reflect")
    return out[..., : out.shape[-1] - extra]


class StreamableConv1d(nn.Module):
    """Conv1d with EnCodec padding: the output has ceil(T / stride) frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, causal: bool = False, norm: str = "weight_norm",
                 pad_mode: str = "reflect"):
        super().__init__()
        self.conv = _normed(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation), norm)
        self.causal, self.pad_mode, self.stride = causal, pad_mode, stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.padding_total = self.effective_kernel - stride

    def extra_padding(self, length: int) -> int:
        """Right padding so that the last window is complete."""
        n_frames = (length - self.effective_kernel + self.padding_total) / self.stride + 1
        ideal = (math.ceil(n_frames) - 1) * self.stride + self.effective_kernel - self.padding_total
        return ideal - length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.extra_padding(x.shape[-1])
        if self.causal:
            left, right = self.padding_total, extra
        else:
            right = self.padding_total // 2
            left, right = self.padding_total - right, right + extra
        return self.conv(pad1d(x, left, right, self.pad_mode))


class StreamableConvTranspose1d(nn.Module):
    """ConvTranspose1d that trims the fixed padding (all on the right when causal)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 causal: bool = False, norm: str = "weight_norm", trim_right_ratio: float = 1.0):
        super().__init__()
        self.convtr = _normed(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride), norm)
        if not causal and trim_right_ratio != 1.0:
            raise ConfigError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        padding_total = kernel_size - stride
        right = math.ceil(padding_total * trim_right_ratio) if causal else padding_total // 2
        self.trim_left, self.trim_right = padding_total - right, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        return y[..., self.trim_left: y.shape[-1] - self.trim_right]


class SkipLSTM(nn.Module):
    """LSTM over time on a [B, C, T] tensor, with a skip connection."""

    def __init__(self, dimension: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(dimension, dimension, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        y = self.lstm(x)[0] + x
        return y.permute(1, 2, 0)


class ResidualBlock(nn.Module):
    """SEANet residual unit: ELU, conv(k, dilation) to dim/compress, ELU, conv(1) back to dim."""

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2,
                 true_skip: bool = True, **conv_kw):
        super().__init__()
        hidden = dim // compress
        # in-place ELU wherever its input has no other reader (the first one feeds the shortcut too)
        self.block = nn.Sequential(
            nn.ELU(), StreamableConv1d(dim, hidden, kernel_size, dilation=dilation, **conv_kw),
            nn.ELU(inplace=True), StreamableConv1d(hidden, dim, 1, **conv_kw))
        self.shortcut = nn.Identity() if true_skip else StreamableConv1d(dim, dim, 1, **conv_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SEANetEncoder(nn.Module):
    """Waveform [B, channels, T] -> latent [B, dimension, ceil(T / prod(ratios))].

    `ratios` are given in decoder order (e.g. [8, 5, 4, 4]) and applied reversed, as in EnCodec.
    """

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 64,
                 n_residual_layers: int = 1, ratios: tuple[int, ...] = (8, 5, 4, 4), kernel_size: int = 7,
                 last_kernel_size: int = 7, residual_kernel_size: int = 3, dilation_base: int = 2,
                 compress: int = 2, lstm_layers: int = 2, true_skip: bool = True, causal: bool = False,
                 norm: str = "weight_norm", pad_mode: str = "reflect"):
        super().__init__()
        conv_kw = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        layers: list[nn.Module] = [StreamableConv1d(channels, n_filters, kernel_size, **conv_kw)]
        mult = 1
        for ratio in reversed(list(ratios)):
            dim = mult * n_filters
            for j in range(n_residual_layers):
                layers.append(ResidualBlock(dim, residual_kernel_size, dilation_base ** j, compress,
                                            true_skip, **conv_kw))
            layers += [nn.ELU(inplace=True), StreamableConv1d(dim, dim * 2, ratio * 2, stride=ratio, **conv_kw)]
            mult *= 2
        if lstm_layers:
            layers.append(SkipLSTM(mult * n_filters, lstm_layers))
        layers += [nn.ELU(inplace=True), StreamableConv1d(mult * n_filters, dimension, last_kernel_size, **conv_kw)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SEANetDecoder(nn.Module):
    """Latent [B, dimension, F] -> waveform [B, channels, F * prod(ratios)]."""

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 64,
                 n_residual_layers: int = 1, ratios: tuple[int, ...] = (8, 5, 4, 4), kernel_size: int = 7,
                 last_kernel_size: int = 7, residual_kernel_size: int = 3, dilation_base: int = 2,
                 compress: int = 2, lstm_layers: int = 2, true_skip: bool = True, causal: bool = False,
                 norm: str = "weight_norm", pad_mode: str = "reflect", trim_right_ratio: float = 1.0):
        super().__init__()
        conv_kw = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [StreamableConv1d(dimension, mult * n_filters, kernel_size, **conv_kw)]
        if lstm_layers:
            layers.append(SkipLSTM(mult * n_filters, lstm_layers))
        for ratio in ratios:
            dim = mult * n_filters
            layers += [nn.ELU(inplace=True),
                       StreamableConvTranspose1d(dim, dim // 2, ratio * 2, stride=ratio, causal=causal, norm=norm,
                                                 trim_right_ratio=trim_right_ratio)]
            for j in range(n_residual_layers):
                layers.append(ResidualBlock(dim // 2, residual_kernel_size, dilation_base ** j, compress,
                                            true_skip, **conv_kw))
            mult //= 2
        layers += [nn.ELU(inplace=True), StreamableConv1d(n_filters, channels, last_kernel_size, **conv_kw)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)
