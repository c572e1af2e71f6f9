"""What every embedder offers the metrics: mono resampling, embeddings, class probabilities."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from lightning_musicgen.audio import resample
from lightning_musicgen.errors import CheckpointError, ConfigError, MissingFileError


class AudioEmbedder(nn.Module):
    """Base of the pretrained audio networks used by the metrics (never trained here).

    Subclasses set `name` (used in logged metric names, e.g. `eval/fad_vggish`), `sample_rate`,
    `embedding_dim` and implement `embeddings`; classifiers also set `num_classes` and implement
    `class_probs`.
    """

    name: str = "embedder"
    sample_rate: int = 16000
    embedding_dim: int = 0
    num_classes: int | None = None

    def to_mono(self, wav: Tensor, sample_rate: int) -> Tensor:
        """[B, C, T] or [B, T] at `sample_rate` -> float32 mono [B, T] at the model's rate."""
        if wav.dim() == 3:
            wav = wav.mean(dim=1)
        elif wav.dim() != 2:
            raise ValueError(f"{self.name}: expected audio [B, C, T] or [B, T], got shape {tuple(wav.shape)}")
        param = next(self.parameters(), None)
        wav = wav.float().to(param.device if param is not None else wav.device)
        return resample(wav, int(sample_rate), self.sample_rate)

    def embeddings(self, wav: Tensor, sample_rate: int) -> Tensor:
        """Frame-level embeddings [B, N, embedding_dim] (N frames per clip)."""
        raise NotImplementedError

    def class_probs(self, wav: Tensor, sample_rate: int) -> Tensor:
        """A probability distribution over the classifier's labels per clip [B, num_classes]."""
        raise NotImplementedError(f"{self.name} is not a classifier")


def check_weights_path(path, what: str) -> str:
    """One-line error naming the missing file instead of a deep torch.load traceback."""
    if path is None:
        raise ConfigError(f"{what}: no weights path configured")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: {what} weights not found")
    return path


def load_torch_file(path, what: str) -> dict:
    path = check_weights_path(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load {what} weights ({exc})") from None


def load_strict(module: nn.Module, state_dict: dict, path, what: str) -> None:
    """load_state_dict(strict=True) with a one-line message naming the file and the first bad keys."""
    missing, unexpected = [], []
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)}!={tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: not a {what} checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"shape mismatch {wrong[:3]})")
    module.load_state_dict(state_dict, strict=True)
