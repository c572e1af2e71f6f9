"""PANNs CNN14 (Kong et al., 2020): an AudioSet tagger (527 classes) for KL and FAD-PANNs.

Weights: the released PANNs checkpoint (e.g. `Cnn14_mAP=0.431.pth`: a dict whose `model` entry is
the state dict of their `Cnn14` with `bn0`, `conv_block1..6`, `fc1`, `fc_audioset` and the fixed
front-end tensors `spectrogram_extractor.*`, `logmel_extractor.melW`). Front end as in PANNs:
32 kHz, Hann 1024 / hop 320 power STFT (centred, reflect), 64 Slaney mel bands 50-14000 Hz
(`melW` from the checkpoint), 10 log10(max(x, 1e-10)).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_musicgen.audio.dsp import slaney_mel_filterbank
from lightning_musicgen.errors import CheckpointError
from lightning_musicgen.metrics.embedders.base import AudioEmbedder, load_strict, load_torch_file

SAMPLE_RATE, N_FFT, HOP, N_MELS, NUM_CLASSES = 32000, 1024, 320, 64, 527
FRONT_END_KEYS = ("spectrogram_extractor.", "logmel_extractor.")
MIN_SAMPLES = 32 * HOP  # five 2x2 poolings need at least 32 frames


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, pool: int) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return nn.functional.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14Network(nn.Module):
    """log-mel [B, 1, frames, 64] -> (embedding [B, 2048], logits [B, 527]); PANNs parameter names."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = [1, 64, 128, 256, 512, 1024, 2048]
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, num_classes)

    def forward(self, log_mel: Tensor) -> tuple[Tensor, Tensor]:
        x = self.bn0(log_mel.transpose(1, 3)).transpose(1, 3)  # normalise each mel band
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)
        x = x.mean(dim=3)  # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # over time
        embedding = torch.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


class Cnn14(AudioEmbedder):
    """PANNs CNN14 on 10 s segments: 2048-d embeddings (`eval/fad_panns`) and AudioSet label
    distributions (`eval/kl_panns`).

    The label distribution is the softmax of the 527 logits averaged over segments (PANNs itself
    reports independent sigmoids; a softmax makes a distribution, as audiocraft does for PaSST).
    """

    name = "panns"
    sample_rate = SAMPLE_RATE
    embedding_dim = 2048
    num_classes = NUM_CLASSES

    def __init__(self, checkpoint, segment_seconds: float = 10.0, min_segment_seconds: float = 1.0):
        super().__init__()
        state = load_torch_file(checkpoint, "PANNs CNN14")
        state = state.get("model", state) if isinstance(state, dict) else state
        mel = state.get("logmel_extractor.melW")
        if mel is None:
            mel = torch.from_numpy(slaney_mel_filterbank(N_FFT // 2 + 1, N_MELS, 50.0, 14000.0, SAMPLE_RATE)).float()
        if tuple(mel.shape) != (N_FFT // 2 + 1, N_MELS):
            raise CheckpointError(f"{checkpoint}: logmel_extractor.melW has shape {tuple(mel.shape)}, "
                                  "expected (513, 64)")
        self.register_buffer("mel", mel.float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.network = Cnn14Network()
        load_strict(self.network, {k: v for k, v in state.items() if not k.startswith(FRONT_END_KEYS)},
                    checkpoint, "PANNs CNN14")
        self.segment = int(segment_seconds * SAMPLE_RATE)
        self.min_segment = int(min_segment_seconds * SAMPLE_RATE)
        self.eval()

    def log_mel(self, mono: Tensor) -> Tensor:
        spec = torch.stft(mono, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)  # [B, F, frames]
        mel = torch.einsum("bft,fm->btm", spec, self.mel)
        return 10.0 * torch.log10(mel.clamp(min=1e-10))[:, None]  # [B, 1, frames, 64]

    def _segments(self, mono: Tensor) -> list[Tensor]:
        """Split into 10 s segments; a short last segment is dropped unless it is the only one.
        Segments under the network's minimum input (32 frames, ~0.32 s) are repeat-padded."""
        segments = list(torch.split(mono, self.segment, dim=-1))
        kept = [s for s in segments if s.shape[-1] >= self.min_segment] or segments[:1]
        return [s.repeat(1, -(-MIN_SAMPLES // s.shape[-1]))[:, :MIN_SAMPLES] if s.shape[-1] < MIN_SAMPLES else s
                for s in kept]

    @torch.no_grad()
    def _run(self, wav: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
        mono = self.to_mono(wav, sample_rate)
        embeddings, logits = zip(*(self.network(self.log_mel(s)) for s in self._segments(mono)))
        return torch.stack(embeddings, 1), torch.stack(logits, 1)  # [B, N, 2048], [B, N, 527]

    def embeddings(self, wav: Tensor, sample_rate: int) -> Tensor:
        return self._run(wav, sample_rate)[0]

    def class_probs(self, wav: Tensor, sample_rate: int) -> Tensor:
        return self._run(wav, sample_rate)[1].softmax(-1).mean(1)
