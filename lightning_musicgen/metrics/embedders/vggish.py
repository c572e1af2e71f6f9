"""VGGish (Hershey et al., 2017), the embedding network of the original FAD, in the torchvggish format.

Weights: the torchvggish checkpoint (`vggish-10086976.pth`, a state dict with `features.*` and
`embeddings.*`) and, optionally, its PCA file (`vggish_pca_params-970ea276.pth` with
`pca_eigen_vectors` [128, 128] and `pca_means` [128]). The log-mel front end follows the VGGish
recipe: 16 kHz, 25 ms periodic-Hann frames every 10 ms, |rfft| of 512, 64 HTK-mel bands
125-7500 Hz (triangles in the mel domain, DC bin dropped), log(mel + 0.01), 0.96 s examples.
Resampling uses `audio.dsp.resample` (the original used resampy): embeddings differ slightly from TF-VGGish.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_musicgen.errors import CheckpointError
from lightning_musicgen.metrics.embedders.base import AudioEmbedder, load_strict, load_torch_file

SAMPLE_RATE = 16000
WINDOW, HOP, N_FFT, N_MELS = 400, 160, 512, 64
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames


def _hz_to_htk_mel(hz: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def vggish_mel_matrix(num_bins: int = N_FFT // 2 + 1, num_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                      low_hz: float = 125.0, high_hz: float = 7500.0) -> Tensor:
    """[num_bins, num_mels] triangular weights, computed in the HTK-mel domain as VGGish does."""
    bins_mel = _hz_to_htk_mel(torch.linspace(0, sample_rate / 2, num_bins, dtype=torch.float64))
    edges = torch.linspace(float(_hz_to_htk_mel(torch.tensor(low_hz))), float(_hz_to_htk_mel(torch.tensor(high_hz))),
                           num_mels + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0)
    weights[0] = 0.0  # the DC bin never contributes
    return weights.float()


class VGGishNetwork(nn.Module):
    """The VGG stack + 3 fully connected layers; parameter names match torchvggish checkpoints."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for width in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]:
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                        nn.Linear(4096, 128), nn.ReLU())

    def forward(self, examples: Tensor) -> Tensor:
        """log-mel examples [N, 1, 96, 64] -> embeddings [N, 128]."""
        x = self.features(examples)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens height, width, channels
        return self.embeddings(x)


class VGGish(AudioEmbedder):
    """VGGish embeddings: one 128-d vector per 0.96 s of audio (`eval/fad_vggish`).

    Args:
        checkpoint: path to the torchvggish state dict (`vggish-10086976.pth`).
        pca_params: optional path to the PCA file; with `postprocess=True` embeddings are PCA-whitened
            and 8-bit quantized like the released AudioSet embeddings. The FAD literature
            (and the frechet-audio-distance package's default) uses the raw embeddings: the default.
    """

    name = "vggish"
    sample_rate = SAMPLE_RATE
    embedding_dim = 128

    def __init__(self, checkpoint, pca_params=None, postprocess: bool = False):
        super().__init__()
        self.network = VGGishNetwork()
        load_strict(self.network, load_torch_file(checkpoint, "VGGish"), checkpoint, "torchvggish VGGish")
        self.postprocess = postprocess
        if postprocess:
            params = load_torch_file(pca_params, "VGGish PCA")
            try:
                matrix = torch.as_tensor(params["pca_eigen_vectors"]).float()
                means = torch.as_tensor(params["pca_means"]).float().reshape(-1)
            except KeyError as exc:
                raise CheckpointError(f"{pca_params}: VGGish PCA file lacks {exc}") from None
            if matrix.shape != (128, 128) or means.numel() != 128:
                raise CheckpointError(f"{pca_params}: PCA shapes {tuple(matrix.shape)}, {tuple(means.shape)}; "
                                      "expected (128, 128), (128,)")
            self.register_buffer("pca_matrix", matrix)
            self.register_buffer("pca_means", means)
        self.register_buffer("mel", vggish_mel_matrix(), persistent=False)
        self.register_buffer("window", torch.hann_window(WINDOW, periodic=True), persistent=False)
        self.eval()

    def log_mel_examples(self, mono: Tensor) -> Tensor:
        """mono 16 kHz [B, T] -> examples [B, N, 96, 64] (short clips are zero-padded to one example)."""
        min_len = WINDOW + HOP * (EXAMPLE_FRAMES - 1)
        if mono.shape[-1] < min_len:
            mono = nn.functional.pad(mono, (0, min_len - mono.shape[-1]))
        frames = mono.unfold(-1, WINDOW, HOP) * self.window  # [B, F, 400]
        magnitude = torch.fft.rfft(frames, n=N_FFT).abs()
        log_mel = torch.log(magnitude @ self.mel + 0.01)  # [B, F, 64]
        n = log_mel.shape[1] // EXAMPLE_FRAMES
        return log_mel[:, :n * EXAMPLE_FRAMES].reshape(mono.shape[0], n, EXAMPLE_FRAMES, N_MELS)

    @torch.no_grad()
    def embeddings(self, wav: Tensor, sample_rate: int) -> Tensor:
        examples = self.log_mel_examples(self.to_mono(wav, sample_rate))
        b, n = examples.shape[:2]
        emb = self.network(examples.reshape(b * n, 1, EXAMPLE_FRAMES, N_MELS))
        if self.postprocess:
            pca = (emb - self.pca_means) @ self.pca_matrix.T
            emb = torch.round((pca.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))
        return emb.reshape(b, n, -1)

