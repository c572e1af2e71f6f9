"""Audio, mel-spectrogram and chroma images to whatever loggers a Trainer has (used by the
LightningModules and the training callbacks alike; depends on `audio` only).

W&B (`log_audio` / `log_image`: files under the run's media/), TensorBoard (`add_audio` /
`add_image`) and CSV (wav + png files next to metrics.csv, under media/); other loggers get
only the scalars. Logging media never raises: a failure is one warning.
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_musicgen.audio import ChromaExtractor, write_audio
from lightning_musicgen.audio.dsp import MelSpectrogram

_mel_cache: dict[int, MelSpectrogram] = {}
_chroma_cache: dict[int, ChromaExtractor] = {}


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return (img.flip(0).cpu().numpy() * 255).astype(np.uint8)  # low frequencies / pitch C at the bottom


@torch.no_grad()
def mel_image(wav: torch.Tensor, sample_rate: int, n_mels: int = 80, dynamic_range_db: float = 80.0) -> np.ndarray:
    """wav [C, T] or [T] -> uint8 image [n_mels, frames] of the log-mel spectrogram."""
    if sample_rate not in _mel_cache:
        _mel_cache[sample_rate] = MelSpectrogram(sample_rate, n_fft=2048, hop_length=512, n_mels=n_mels)
    wav = wav.float().cpu().reshape(-1, wav.shape[-1]).mean(0)
    db = 10 * torch.log10(_mel_cache[sample_rate](wav).clamp(min=1e-10))
    return _to_uint8(db.clamp(min=db.max() - dynamic_range_db))


@torch.no_grad()
def chroma_image(wav: torch.Tensor, sample_rate: int, row_height: int = 8) -> np.ndarray:
    """wav [C, T] -> uint8 image [12 * row_height, frames] of the (soft) chroma, the package's extractor."""
    if sample_rate not in _chroma_cache:
        _chroma_cache[sample_rate] = ChromaExtractor(sample_rate, argmax=False)
    chroma = _chroma_cache[sample_rate](wav.float().cpu().reshape(1, -1, wav.shape[-1]))[0].T  # [12, frames]
    return _to_uint8(chroma.repeat_interleave(row_height, dim=0))


def _safe(name: str, max_len: int = 64) -> str:
    """A file/tag-safe version of a caption, cut to `max_len` characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:max_len]


def log_scalars(trainer, metrics: dict[str, float]) -> None:
    """Scalars to every logger (call on rank 0) at the trainer's global step; also visible to
    ModelCheckpoint / EarlyStopping through `trainer.callback_metrics`."""
    for key, value in metrics.items():
        trainer.callback_metrics[key] = torch.tensor(float(value))
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=trainer.global_step)


def log_media(trainer, key: str, audios: list[torch.Tensor], sample_rate: int, captions: list[str],
              images: dict[str, list[np.ndarray]] | None = None) -> None:
    """Audio clips [C, T] (+ named image lists, one image per clip) to every logger, rank 0 only."""
    if not trainer.is_global_zero or not audios:
        return
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
    step = trainer.global_step
    mono = [a.detach().float().clamp(-1, 1).mean(0).cpu().numpy() for a in audios]
    for logger in trainer.loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.log_audio(f"{key}/audio", mono, step=step, caption=captions, sample_rate=[sample_rate] * len(mono))
                for name, imgs in (images or {}).items():
                    logger.log_image(f"{key}/{name}", imgs, step=step, caption=captions)
            elif isinstance(logger, TensorBoardLogger):
                for caption, clip in zip(captions, mono):
                    logger.experiment.add_audio(f"{key}/{_safe(caption)}", torch.from_numpy(clip)[None], step,
                                                sample_rate=sample_rate)
                for name, imgs in (images or {}).items():
                    for caption, img in zip(captions, imgs):
                        logger.experiment.add_image(f"{key}/{name}/{_safe(caption)}", img, step, dataformats="HW")
            elif isinstance(logger, CSVLogger):
                folder = os.path.join(logger.log_dir, "media", f"step_{step:08d}")
                os.makedirs(folder, exist_ok=True)
                for caption, clip in zip(captions, audios):
                    write_audio(os.path.join(folder, f"{_safe(key)}_{_safe(caption)}.wav"), clip, sample_rate)
                if images:
                    from PIL import Image
                    for name, imgs in images.items():
                        for caption, img in zip(captions, imgs):
                            Image.fromarray(img).save(os.path.join(folder, f"{_safe(key)}_{name}_{_safe(caption)}.png"))
        except Exception as exc:  # media must never stop a training run
            rank_zero_warn(f"could not log {key} media to {type(logger).__name__} ({type(exc).__name__}: {exc})")
