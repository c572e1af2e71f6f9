"""transformers' ClapModel (e.g. a saved laion/larger_clap_music) for the CLAP score and FAD-CLAP."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from lightning_musicgen.errors import CheckpointError
from lightning_musicgen.metrics.embedders.base import AudioEmbedder, check_weights_path


def _pooled(output) -> Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClapEmbedder(AudioEmbedder):
    """CLAP audio and text embeddings (L2-normalised, projection space) from a local folder.

    Args:
        path: a `save_pretrained` folder holding the ClapModel, its feature extractor and tokenizer.
        seed: the feature extractor picks random chunks of long clips ("fusion"/"rand_trunc"); a
            fixed seed makes scores reproducible.
    """

    name = "clap"

    def __init__(self, path, seed: int = 0):
        super().__init__()
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel
        path = check_weights_path(path, "CLAP")
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: CLAP weights must be a save_pretrained folder")
        try:
            self.model = ClapModel.from_pretrained(path, local_files_only=True).eval()
            self.feature_extractor = ClapFeatureExtractor.from_pretrained(path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: cannot load CLAP model ({first})") from None
        self.sample_rate = self.feature_extractor.sampling_rate
        self.embedding_dim = self.model.config.projection_dim
        self.seed = seed

    @torch.no_grad()
    def embed_audio(self, wav: Tensor, sample_rate: int) -> Tensor:
        mono = self.to_mono(wav, sample_rate).cpu().numpy()
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            inputs = self.feature_extractor(list(mono), sampling_rate=self.sample_rate, return_tensors="pt")
        finally:
            np.random.set_state(state)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return _pooled(self.model.get_audio_features(**inputs)).float()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**tokens)).float()

    def embeddings(self, wav: Tensor, sample_rate: int) -> Tensor:
        return self.embed_audio(wav, sample_rate)[:, None]  # one embedding per clip
