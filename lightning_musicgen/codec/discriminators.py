"""Discriminators for codec training: multi-scale STFT (EnCodec's default) and multi-period (HiFi-GAN).

Every discriminator maps wav[B, C, T] to (list of logits, list of per-layer feature lists), one
entry per sub-discriminator. STFTs run in fp32 even under bf16 autocast. With `center=False,
stft_norm="window", channel_layout="real_imag", norm_first_conv=False` the MS-STFT discriminator
computes what audiocraft's does (configs/codec/encodec_32khz.yaml; docs/differences.md).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from lightning_musicgen.errors import ConfigError


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


def conv_stack(z: torch.Tensor, convs: nn.ModuleList, conv_post: nn.Module,
               slope: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv layers, then `conv_post`: (logits, the activation after every layer)."""
    feats = []
    for conv in convs:
        z = F.leaky_relu(conv(z), slope)
        feats.append(z)
    return conv_post(z), feats


class DiscriminatorEnsemble(nn.Module):
    """Sub-discriminators in `self.discriminators` run on the same waveform:
    (list of logits, list of feature lists), one entry per sub-discriminator."""

    discriminators: nn.ModuleList

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [disc(wav) for disc in self.discriminators]
        return [logits for logits, _ in outputs], [feats for _, feats in outputs]


class STFTDiscriminator(nn.Module):
    """2-D conv net on the complex STFT (real and imaginary parts as channels), layout [B, 2C, T, F].

    The spectrogram options select audiocraft's variant or this project's:
    - `center`: torch.stft's centring (True: frames cover the edges; audiocraft: False);
    - `stft_norm`: "frame_length" scales by 1 / sqrt(n_fft) (torch.stft's `normalized`), "window"
      by 1 / sqrt(sum(window**2)) (torchaudio's, audiocraft's);
    - `channel_layout`: "interleaved" orders the channels re(c0), im(c0), re(c1), ...;
      "real_imag" (audiocraft) all real parts, then all imaginary parts (same for mono);
    - `norm_first_conv`: weight norm on the first conv too (audiocraft: only the later ones);
    - `activation_slope`: the LeakyReLU slope (audiocraft's class default 0.2, its EnCodec recipe 0.3).
    """

    def __init__(self, channels: int = 1, filters: int = 32, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int = 1024, max_filters: int = 1024, filters_scale: int = 1,
                 kernel_size: tuple[int, int] = (3, 9), dilations: tuple[int, ...] = (1, 2, 4),
                 stride: tuple[int, int] = (1, 2), center: bool = True, stft_norm: str = "frame_length",
                 channel_layout: str = "interleaved", norm_first_conv: bool = True, activation_slope: float = 0.2):
        super().__init__()
        if stft_norm not in ("frame_length", "window"):
            raise ConfigError(f"stft_norm must be 'frame_length' or 'window', got {stft_norm!r}")
        if channel_layout not in ("interleaved", "real_imag"):
            raise ConfigError(f"channel_layout must be 'interleaved' or 'real_imag', got {channel_layout!r}")
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.center, self.stft_norm, self.channel_layout = center, stft_norm, channel_layout
        self.activation_slope = activation_slope
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        kernel_size, stride = tuple(kernel_size), tuple(stride)
        first = nn.Conv2d(2 * channels, filters, kernel_size, padding=_same_padding(kernel_size))
        convs = [weight_norm(first) if norm_first_conv else first]
        in_ch = filters
        for i, d in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, dilation=(d, 1),
                                               padding=_same_padding(kernel_size, (d, 1)))))
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        square = (kernel_size[0], kernel_size[0])
        convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, square, padding=_same_padding(square))))
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(out_ch, 1, square, padding=_same_padding(square)))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        b, c, t = wav.shape
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(wav.float().reshape(b * c, t), self.n_fft, self.hop_length, self.win_length,
                              window=self.window, normalized=self.stft_norm == "frame_length", center=self.center,
                              return_complex=True)
            if self.stft_norm == "window":
                spec = spec / self.window.pow(2).sum().sqrt()
        spec = torch.view_as_real(spec).reshape(b, c, *spec.shape[1:], 2)      # [B, C, F, T, 2]
        order = (0, 1, 4, 3, 2) if self.channel_layout == "interleaved" else (0, 4, 1, 3, 2)
        return spec.permute(*order).reshape(b, 2 * c, spec.shape[3], spec.shape[2])  # [B, 2C, T, F]

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return conv_stack(self.spectrogram(wav), self.convs, self.conv_post, self.activation_slope)


class MultiScaleSTFTDiscriminator(DiscriminatorEnsemble):
    """EnCodec's MS-STFT discriminator: one STFTDiscriminator per FFT size (hop = n_fft / 4);
    `kwargs` (spectrogram and layer options) go to every STFTDiscriminator."""

    def __init__(self, channels: int = 1, filters: int = 32, n_ffts: tuple[int, ...] = (1024, 2048, 512, 256, 128),
                 **kwargs):
        super().__init__()
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(channels, filters, n_fft=n, hop_length=n // 4, win_length=n, **kwargs) for n in n_ffts)



class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded into [T / p, p] and 2-D convs along time."""

    def __init__(self, period: int, channels: int = 1, hidden: tuple[int, ...] = (32, 64, 128, 256),
                 kernel_size: int = 5, stride: int = 3, activation_slope: float = 0.1):
        super().__init__()
        self.period, self.activation_slope = period, activation_slope
        convs, in_ch = [], channels
        for i, h in enumerate(hidden):
            convs.append(weight_norm(nn.Conv2d(in_ch, h, (kernel_size, 1), (stride if i < len(hidden) - 1 else 1, 1),
                                               padding=((kernel_size - 1) // 2, 0))))
            in_ch = h
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(in_ch, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = wav.shape
        pad = (-t) % self.period
        if pad:
            wav = F.pad(wav, (0, pad), mode="reflect" if pad < t else "constant")
        return conv_stack(wav.view(b, c, -1, self.period), self.convs, self.conv_post,
                          self.activation_slope)


class MultiPeriodDiscriminator(DiscriminatorEnsemble):
    """HiFi-GAN's MPD (periods 2, 3, 5, 7, 11): an alternative to the MS-STFT discriminator."""

    def __init__(self, channels: int = 1, periods: tuple[int, ...] = (2, 3, 5, 7, 11),
                 hidden: tuple[int, ...] = (32, 64, 128, 256), activation_slope: float = 0.1):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels, tuple(hidden),
                                                                activation_slope=activation_slope) for p in periods)



def build_discriminator(kind: str, channels: int, **kwargs) -> nn.Module:
    """'msstftd' (EnCodec) or 'mpd' (HiFi-GAN multi-period)."""
    if kind == "msstftd":
        return MultiScaleSTFTDiscriminator(channels, **kwargs)
    if kind == "mpd":
        return MultiPeriodDiscriminator(channels, **kwargs)
    raise ConfigError(f"discriminator must be 'msstftd' or 'mpd', got {kind!r}")
