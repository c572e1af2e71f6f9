"""CodecModule: adversarial training of a CompressionModel (EnCodec recipe) with manual optimisation.

One training step (one batch of wav[B, C, T]):
1. the generator reconstructs y (the RVQ updates its EMA codebooks on the way);
2. after `adversarial_warmup_steps`, the discriminator takes a step on (x, y.detach());
3. the generator losses L1 (time), multi-scale mel, adversarial and feature matching are
   combined by the gradient balancer (on d loss / d y), the commitment loss is added as is, and the
   generator takes an Adam step; optional EMA of the generator weights follows (`lightning_musicgen.ema`).

`trainer.global_step` counts batches: the discriminator's optimizer is stepped directly (not through
Lightning's counter). Gradients are clipped here (`gradient_clip_val`), so the trainer's must be null.
Supported precisions: 32-true and bf16-mixed (STFTs and losses always run in fp32).
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_musicgen.codec.discriminators import build_discriminator
from lightning_musicgen.codec.losses import (ADV_LOSSES, FEATURE_MATCHING, Balancer, MelDistance, MultiScaleMelLoss,
                                             discriminator_loss, feature_matching_loss, generator_adversarial_loss,
                                             si_snr)
from lightning_musicgen.codec.model import CodecConfig, CompressionModel
from lightning_musicgen.compat import attached_trainer, ddp_kwargs
from lightning_musicgen.ema import EMA
from lightning_musicgen.errors import ConfigError
from lightning_musicgen.flops import codec_train_flops
from lightning_musicgen.optim import WarmupCosineLR

DEFAULT_WEIGHTS = {"adv": 4.0, "feat": 4.0, "l1": 0.1, "msspec": 2.0}


def _no_closure() -> None:
    return None  # manual optimisation: backward already ran


class CodecModule(LightningModule):
    """Trains a CompressionModel (`self.generator`) against an MS-STFT (or multi-period) discriminator.

    Args:
        codec: the CompressionModel hyperparameters (defaults: MusicGen's EnCodec 32 kHz).
        discriminator: 'msstftd' (EnCodec) or 'mpd' (HiFi-GAN multi-period); `discriminator_kwargs`
            go to its constructor (e.g. filters, n_ffts, and the spectrogram options of
            `STFTDiscriminator`).
        adv_loss: audiocraft's names: "hinge" (generator -D(y), EnCodec's recipe), "hinge2"
            (generator relu(1 - D(y))), "mse" (LSGAN); the discriminator's loss is the hinge for
            both hinges. feature_matching: "relative" (each layer's L1 over mean|real|) or "l1"
            (audiocraft).
        loss_weights: balanced losses {adv, feat, l1, msspec}; a missing or 0 weight disables one.
        commitment_weight: weight of the RVQ commitment loss (added outside the balancer).
        balance_grads, balancer_total_norm, balancer_ema_decay: the gradient balancer.
        lr, disc_lr, betas: Adam (EnCodec: 3e-4, betas (0.5, 0.9)); `warmup_steps`, `total_steps` and
            `min_lr_ratio` shape both learning rates (default: constant).
        adversarial_warmup_steps: batches trained on reconstruction losses only before the
            discriminator starts; `disc_every`: discriminator step every N batches.
        gradient_clip_val: max gradient norm for each network (None: no clipping).
        ema_decay: keep an EMA of the generator (`generator_ema.module`, one update per generator
            step) used for validation and export.
        log_audio_every_n_steps, log_audio_samples: reconstructions sent to the logger by rank 0.
    """

    def __init__(self, codec: CodecConfig | None = None, discriminator: str = "msstftd",
                 discriminator_kwargs: dict[str, Any] | None = None,
                 loss_weights: dict[str, float] | None = None, commitment_weight: float = 1.0,
                 balance_grads: bool = True, balancer_total_norm: float = 1.0,
                 balancer_ema_decay: float = 0.999, lr: float = 3e-4, disc_lr: float | None = None,
                 betas: tuple[float, float] = (0.5, 0.9), warmup_steps: int = 0, total_steps: int | None = None,
                 min_lr_ratio: float = 1.0, adversarial_warmup_steps: int = 0, disc_every: int = 1,
                 gradient_clip_val: float | None = None, ema_decay: float | None = None,
                 log_audio_every_n_steps: int = 1000, log_audio_samples: int = 2, adv_loss: str = "hinge2",
                 feature_matching: str = "relative"):
        super().__init__()
        if isinstance(codec, dict):
            codec = CodecConfig.from_dict(codec)
        codec = codec or CodecConfig()
        weights = dict(DEFAULT_WEIGHTS if loss_weights is None else loss_weights)
        unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ConfigError(f"loss_weights: unknown loss(es) {unknown}; known: {sorted(DEFAULT_WEIGHTS)}")
        if disc_every < 1:
            raise ConfigError(f"disc_every must be >= 1, got {disc_every}")
        if adv_loss not in ADV_LOSSES:
            raise ConfigError(f"model.init_args.adv_loss: one of {ADV_LOSSES}, got {adv_loss!r}")
        if feature_matching not in FEATURE_MATCHING:
            raise ConfigError(f"model.init_args.feature_matching: one of {FEATURE_MATCHING}, got {feature_matching!r}")
        self.save_hyperparameters(ignore=["codec"])
        self.hparams["codec"] = codec.to_dict()
        self.automatic_optimization = False
        self.codec_config = codec
        self.generator = CompressionModel(codec)
        self.discriminator = build_discriminator(discriminator, codec.channels, **(discriminator_kwargs or {}))
        self.generator_ema = EMA(self.generator, ema_decay) if ema_decay is not None else None
        self.msspec = MultiScaleMelLoss(codec.sample_rate)
        self.mel_distance = MelDistance(codec.sample_rate)
        self.weights = weights
        self.balancer = Balancer(weights, balance=balance_grads, total_norm=balancer_total_norm,
                                 ema_decay=balancer_ema_decay)

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        total = hp.total_steps or (self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None)
        total = max(total or 1, hp.warmup_steps, 1)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.disc_lr or hp.lr, betas=tuple(hp.betas))
        scheds = [WarmupCosineLR(o, hp.warmup_steps, total, hp.min_lr_ratio) for o in (opt_g, opt_d)]
        return [opt_g, opt_d], scheds

    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        precision = str(getattr(trainer, "precision", "32-true")) if trainer else "32-true"
        if precision.startswith("16"):
            raise ConfigError(f"CodecModule: precision {precision!r} is not supported (use bf16-mixed or 32-true)")
        kwargs = ddp_kwargs(trainer.strategy) if trainer else None
        if kwargs is not None and trainer.world_size > 1 and not kwargs.get("find_unused_parameters"):
            # the discriminator and generator backwards each leave the other network without gradients
            raise ConfigError("CodecModule under DDP needs trainer.strategy.init_args.find_unused_parameters=true "
                              "(or strategy: ddp_find_unused_parameters_true)")

    def _wav(self, batch) -> torch.Tensor:
        wav = batch["wav"] if isinstance(batch, dict) else batch
        if wav.dim() != 3 or wav.shape[1] != self.codec_config.channels:
            raise ValueError(f"batch wav: expected [B, {self.codec_config.channels}, T], got {list(wav.shape)}")
        return wav

    def flops_per_batch(self, batch) -> int:
        """Model FLOPs of the generator's training step on `batch` (`lightning_musicgen.flops.codec_train_flops`:
        encoder and decoder forward + backward, the quantizer's distances; not the discriminator).
        AudioThroughputMonitor turns it into `train/mfu`."""
        wav = self._wav(batch)
        return codec_train_flops(self.codec_config, wav.shape[0], wav.shape[-1])

    def adversarial_active(self) -> bool:
        return self.weights.get("adv", 0) > 0 or self.weights.get("feat", 0) > 0

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        x = self._wav(batch)
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        step = self.global_step
        y, q = self.generator(x)

        adversarial = self.adversarial_active() and step >= hp.adversarial_warmup_steps
        logs: dict[str, float] = {}
        if adversarial and step % hp.disc_every == 0:
            real_logits, _ = self.discriminator(x)
            fake_logits, _ = self.discriminator(y.detach())
            d_loss = discriminator_loss(real_logits, fake_logits, "mse" if hp.adv_loss == "mse" else "hinge")
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            # through the strategy, not LightningOptimizer.step: that would count a second global step per
            # batch; the strategy runs the on_before_optimizer_step hooks (NonFiniteGuard) and precision
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure, model=self)
            sched_d.step()  # the discriminator's schedule counts its own steps
            logs["train/d_loss"] = d_loss.detach()

        losses = {"l1": torch.nn.functional.l1_loss(y.float(), x.float()), "msspec": self.msspec(y, x)}
        if adversarial:
            fake_logits, fake_feats = self.discriminator(y)
            with torch.no_grad():
                _, real_feats = self.discriminator(x)
            losses["adv"] = generator_adversarial_loss(fake_logits, hp.adv_loss)
            losses["feat"] = feature_matching_loss(fake_feats, real_feats, hp.feature_matching)
        grad_y = self.balancer.backward_gradient(losses, y)
        # one backward for the balanced gradient into y and the commitment loss
        surrogate = (y * grad_y.detach()).sum() + hp.commitment_weight * q.commit_loss
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(surrogate)
        self._clip(opt_g)
        opt_g.step()
        sched_g.step()
        if self.generator_ema is not None:
            self.generator_ema.update(self.generator, self.global_step)  # once per generator step

        with torch.no_grad():
            for name, value in losses.items():
                logs[f"train/{name}"] = value.detach()
            logs["train/commit"] = q.commit_loss.detach()
            logs["train/loss"] = sum(self.weights.get(k, 0.0) * v.detach() for k, v in losses.items()) \
                + hp.commitment_weight * q.commit_loss.detach()
            for name, scale in self.balancer.scales.items():
                logs[f"codec/balancer_scale_{name}"] = scale
                logs[f"codec/grad_norm_{name}"] = self.balancer.norms[name]
            logs["codec/si_snr"] = si_snr(y.detach(), x)
            logs["codec/mel_distance"] = self.mel_distance(y.detach(), x)
            dead = 0
            for k, st in enumerate(q.stats):
                logs[f"codec/usage_q{k}"] = st.usage
                logs[f"codec/perplexity_q{k}"] = st.perplexity
                logs[f"codec/dead_codes_q{k}"] = float(st.dead_replaced)
                dead += st.dead_replaced
            logs["codec/dead_codes"] = float(dead)
            logs["codec/bitrate_kbps"] = self.generator.frame_rate * self.generator.quantizer.bits_per_frame(
                q.num_quantizers) / 1000
            logs["codec/num_quantizers"] = float(q.num_quantizers)
        self.log("train/loss", logs.pop("train/loss"), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=x.shape[0])
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        every = hp.log_audio_every_n_steps
        if every and step % every == 0:
            self._log_reconstructions("train", x, y.detach())

    def _clip(self, opt) -> None:
        if self.hparams.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")

    # -- validation ------------------------------------------------------------------------------
    def eval_model(self) -> CompressionModel:
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    def validation_step(self, batch, batch_idx):
        x = self._wav(batch)
        model = self.eval_model()
        y, q = model(x)
        b = x.shape[0]
        self.log("val/l1", torch.nn.functional.l1_loss(y.float(), x.float()), batch_size=b, sync_dist=True)
        self.log("val/msspec", self.msspec(y, x), batch_size=b, sync_dist=True)
        self.log("val/mel_distance", self.mel_distance(y, x), batch_size=b, sync_dist=True, prog_bar=True)
        self.log("val/si_snr", si_snr(y, x), batch_size=b, sync_dist=True)
        self.log("val/commit", q.commit_loss, batch_size=b, sync_dist=True)
        if batch_idx == 0:
            self._log_reconstructions("val", x, y)

    # -- reconstructions to the logger -----------------------------------------------------------
    def _log_reconstructions(self, split: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """The first `log_audio_samples` originals and reconstructions, with their mel images, to every logger
        (rank 0; `media.log_media`, which never stops the run on a logging error)."""
        n = min(self.hparams.log_audio_samples, x.shape[0])
        if n <= 0 or not self.trainer.is_global_zero or not self.trainer.loggers:
            return
        from lightning_musicgen.media import log_media, mel_image
        sr = self.codec_config.sample_rate
        audios = [w for pair in zip(x[:n], y[:n]) for w in pair]
        captions = [f"{kind} {i}" for i in range(n) for kind in ("original", "reconstruction")]
        log_media(self.trainer, split, audios, sr, captions, {"mel": [mel_image(a, sr) for a in audios]})

    def configure_callbacks(self):
        from lightning_musicgen.training.defaults import reliability_callbacks
        return reliability_callbacks(self.trainer)  # non-finite guard, signals, RNG states, skip reports

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the codec config is stored once, in hyper_parameters["codec"]
        checkpoint["balancer"] = self.balancer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.balancer.load_state_dict(checkpoint.get("balancer", {}))

    def export(self, path) -> Any:
        """Write the (EMA) generator as a codec model folder (see lightning_musicgen.model_files)."""
        from lightning_musicgen.model_files.codec import save_codec
        return save_codec(self.eval_model(), path, "ema" if self.generator_ema is not None else "trained")

