"""The offline default embedder: the VGG tagger shipped (TensorFlow weights) in the `musicnn` package.

musicnn (Pons & Serra, 2019) ships its trained checkpoints inside its PyPI wheel. We read the
`MTT_vgg` (MagnaTagATune, 50 tags) or `MSD_vgg` (Million Song Dataset, 50 tags) checkpoint with
our own TensorFlow-checkpoint reader (no TensorFlow needed) and run the same network in torch:
16 kHz, librosa-style mel power spectrogram (512 FFT, hop 256, 96 Slaney bands), float16 then
log10(10000 x + 1), 3 s patches (187 frames), five 3x3 conv/BN/max-pool blocks of 128 filters,
a 50-way dense layer. Install it with `pip install --no-deps musicnn` (its TensorFlow and old
numpy pins are not needed). Metrics computed with it are named `*_musicnn_vgg`: it is a music
tagger trained on MTT, not VGGish, and its FAD is not comparable to published FAD-VGGish numbers.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import Tensor, nn

from lightning_musicgen.audio.dsp import slaney_mel_filterbank
from lightning_musicgen.errors import CheckpointError
from lightning_musicgen.metrics.embedders.base import AudioEmbedder
from lightning_musicgen.metrics.embedders.tf_checkpoint import read_tf_checkpoint

SAMPLE_RATE, N_FFT, HOP, N_MELS, PATCH_FRAMES, FILTERS = 16000, 512, 256, 96, 187, 128
POOLS = [((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4))]
MTT_LABELS = ["guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
              "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
              "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
              "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance",
              "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal",
              "female voice", "choral"]


def musicnn_checkpoint(model: str = "MTT_vgg") -> str:
    """The checkpoint prefix of `model` inside the installed musicnn package."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("musicnn is not installed (pip install --no-deps musicnn)")
    return os.path.join(list(spec.submodule_search_locations)[0], model) + os.sep


class MusicnnVGGNetwork(nn.Module):
    """log-mel patches [N, 1, 187, 96] -> (pool5 features [N, 256], tag logits [N, classes])."""

    def __init__(self, num_classes: int = 50):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=1e-3)  # TF batch_normalization's default epsilon
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else FILTERS, FILTERS, 3, padding=1) for i in range(5))
        self.bns = nn.ModuleList(nn.BatchNorm2d(FILTERS, eps=1e-3) for _ in range(5))
        self.pools = nn.ModuleList(nn.MaxPool2d(k, s) for k, s in POOLS)
        self.dense = nn.Linear(2 * 1 * FILTERS, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.input_bn(x)
        for conv, bn, pool in zip(self.convs, self.bns, self.pools):
            x = pool(bn(torch.relu(conv(x))))  # TF order: conv+ReLU, then BN, then pool
        features = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens time, mel, channels
        return features, self.dense(features)

    def load_tf(self, tensors: dict[str, np.ndarray], where: str) -> None:
        """Copy `tf.compat.v1.layers` variables (1CNN..5CNN, batch_normalization[_1..5], dense)."""
        def get(name):
            if name not in tensors:
                raise CheckpointError(f"{where}: not a musicnn VGG checkpoint (missing variable {name})")
            return torch.from_numpy(tensors[name]).float()

        def load_bn(bn: nn.BatchNorm2d, scope: str):
            for attr, var in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                              ("running_var", "moving_variance")):
                value = get(f"{scope}/{var}")
                if value.shape != getattr(bn, attr).shape:
                    raise CheckpointError(f"{where}: {scope}/{var} has shape {tuple(value.shape)}")
                getattr(bn, attr).data.copy_(value)

        with torch.no_grad():
            load_bn(self.input_bn, "batch_normalization")
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                kernel = get(f"{i + 1}CNN/kernel").permute(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
                if kernel.shape != conv.weight.shape:
                    raise CheckpointError(f"{where}: {i + 1}CNN/kernel has shape {tuple(kernel.shape)}")
                conv.weight.copy_(kernel)
                conv.bias.copy_(get(f"{i + 1}CNN/bias"))
                load_bn(bn, f"batch_normalization_{i + 1}")
            kernel = get("dense/kernel")
            if kernel.shape != (self.dense.in_features, self.dense.out_features):
                raise CheckpointError(f"{where}: dense/kernel has shape {tuple(kernel.shape)}")
            self.dense.weight.copy_(kernel.T)
            self.dense.bias.copy_(get("dense/bias"))


class MusicnnVGG(AudioEmbedder):
    """musicnn's VGG tagger: 256-d embeddings per 3 s patch (`eval/fad_musicnn_vgg`) and tag
    distributions (softmax of the 50 tag logits averaged over patches, `eval/kl_musicnn_vgg`).

    Args:
        checkpoint: a TensorFlow checkpoint prefix; default: `model` inside the musicnn package.
        model: `MTT_vgg` or `MSD_vgg` (used when `checkpoint` is None).
    """

    name = "musicnn_vgg"
    sample_rate = SAMPLE_RATE
    embedding_dim = 2 * FILTERS
    num_classes = 50

    def __init__(self, checkpoint: str | None = None, model: str = "MTT_vgg"):
        super().__init__()
        checkpoint = checkpoint or musicnn_checkpoint(model)
        self.network = MusicnnVGGNetwork(self.num_classes)
        self.network.load_tf(read_tf_checkpoint(checkpoint), checkpoint)
        mel = slaney_mel_filterbank(N_FFT // 2 + 1, N_MELS, 0.0, SAMPLE_RATE / 2, SAMPLE_RATE)
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.eval()

    def patches(self, mono: Tensor) -> Tensor:
        """mono 16 kHz [B, T] -> log-mel patches [B, N, 187, 96]; short clips are repeat-padded."""
        min_len = (PATCH_FRAMES - 1) * HOP
        if mono.shape[-1] < min_len:
            mono = mono.repeat(1, -(-min_len // mono.shape[-1]))[:, :min_len]
        spec = torch.stft(mono, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)
        mel = torch.einsum("bft,fm->btm", spec, self.mel).half().float()  # musicnn stores float16
        log_mel = torch.log10(10000.0 * mel + 1.0)
        n = log_mel.shape[1] // PATCH_FRAMES
        return log_mel[:, :n * PATCH_FRAMES].reshape(mono.shape[0], n, PATCH_FRAMES, N_MELS)

    @torch.no_grad()
    def _run(self, wav: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
        patches = self.patches(self.to_mono(wav, sample_rate))
        b, n = patches.shape[:2]
        features, logits = self.network(patches.reshape(b * n, 1, PATCH_FRAMES, N_MELS))
        return features.reshape(b, n, -1), logits.reshape(b, n, -1)

    def embeddings(self, wav: Tensor, sample_rate: int) -> Tensor:
        return self._run(wav, sample_rate)[0]

    def class_probs(self, wav: Tensor, sample_rate: int) -> Tensor:
        return self._run(wav, sample_rate)[1].softmax(-1).mean(1)

    @torch.no_grad()
    def tags(self, wav: Tensor, sample_rate: int) -> Tensor:
        """Independent tag probabilities [B, 50] (sigmoid, as musicnn reports them), mean over patches."""
        return torch.sigmoid(self._run(wav, sample_rate)[1]).mean(1)
