"""`CodecReconstruction`: SI-SNR, mel distance and audio of codec reconstructions of fixed
validation clips during training.

What the LightningModule must offer: `eval_model()` (CodecModule: the EMA codec when enabled) or a
`codec` attribute, an object with `encode(wav [B, C, T]) -> codes` and `decode(codes) -> wav` and
`sample_rate` (`lightning_musicgen.codec.CompressionModel`).
"""
from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import MeanMetric

from lightning_musicgen.codec.losses import MelDistance, si_snr
from lightning_musicgen.errors import InputError
from lightning_musicgen.media import log_media, log_scalars, mel_image
from lightning_musicgen.training.periodic import PeriodicEvaluation, validation_batches


class CodecReconstruction(PeriodicEvaluation):
    """Every `every_n_steps` steps and/or `every_n_epochs` epochs, encode and decode the first
    `num_clips` validation clips (read once; under DDP each rank takes every world_size-th), log
    `eval/codec_si_snr` and `eval/codec_mel_distance` (means over all ranks' clips) and, from rank 0,
    `num_audio_samples` original/reconstruction pairs with mel images."""

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = None, num_clips: int = 16,
                 batch_size: int = 4, num_audio_samples: int = 4, log_images: bool = True):
        super().__init__(every_n_steps, every_n_epochs)
        self.num_clips, self.batch_size = num_clips, batch_size
        self.num_audio_samples, self.log_images = num_audio_samples, log_images
        self.si_snr, self.mel_distance = MeanMetric(), MeanMetric()
        self.clips: list[torch.Tensor] | None = None
        self._mel: MelDistance | None = None

    @staticmethod
    def codec_of(pl_module: LightningModule):
        if hasattr(pl_module, "eval_model") and callable(pl_module.eval_model):
            return pl_module.eval_model()
        if getattr(pl_module, "codec", None) is not None:
            return pl_module.codec
        raise AttributeError(f"CodecReconstruction: {type(pl_module).__name__} has neither eval_model() nor codec")

    def _collect(self, trainer: Trainer) -> list[torch.Tensor]:
        clips = []
        for batch in validation_batches(trainer):
            wav, mask = batch["wav"], batch.get("mask")
            for i in range(wav.shape[0]):
                clip = wav[i, ..., :int(mask[i].sum())] if mask is not None else wav[i]
                if clip.shape[-1] > 0:
                    clips.append(clip.float().cpu())
                if len(clips) >= self.num_clips:
                    return clips
        if not clips:
            raise InputError("CodecReconstruction: the validation data gave no audio")
        return clips

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        self._last_step = trainer.global_step
        codec = self.codec_of(pl_module)
        was_training, codec_training = pl_module.training, codec.training
        codec.eval()
        try:
            if self.clips is None:
                self.clips = self._collect(trainer)
            if self._mel is None:
                self._mel = MelDistance(int(codec.sample_rate))
            device = pl_module.device
            self._mel.to(device)
            self.si_snr.to(device)
            self.mel_distance.to(device)
            mine = self.clips[trainer.global_rank::trainer.world_size]
            pairs = []
            for start in range(0, len(mine), self.batch_size):
                chunk = mine[start:start + self.batch_size]
                length = min(c.shape[-1] for c in chunk)
                x = torch.stack([c[..., :length] for c in chunk]).to(device)
                y = codec.decode(codec.encode(x)).float()[..., :length]
                for xi, yi in zip(x, y):  # per clip, so the mean over clips is the same on any world size
                    self.si_snr.update(si_snr(yi[None], xi[None]))
                    self.mel_distance.update(self._mel(yi[None], xi[None]))
                pairs += list(zip(x.cpu(), y.cpu()))
        finally:
            codec.train(codec_training)
            pl_module.train(was_training)
        scalars = {"eval/codec_si_snr": float(self.si_snr.compute()),
                   "eval/codec_mel_distance": float(self.mel_distance.compute())}
        self.si_snr.reset()
        self.mel_distance.reset()
        log_scalars(trainer, scalars)
        pairs = pairs[:self.num_audio_samples]
        if trainer.is_global_zero and pairs:
            sr = int(codec.sample_rate)
            audios = [w for pair in pairs for w in pair]
            captions = [f"{i} {kind}" for i in range(len(pairs)) for kind in ("original", "reconstruction")]
            images = {"mel": [mel_image(a, sr) for a in audios]} if self.log_images else None
            log_media(trainer, "eval/codec", audios, sr, captions, images)
        return scalars
