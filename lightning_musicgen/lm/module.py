"""MusicGenModule: trains `MusicGenLM` (+ its conditioner) with Lightning.

Batches are either audio `{"wav", "mask", "text", "meta"}` (AudioDataModule; encoded here by a
frozen CompressionModel under no_grad; a melody conditioner takes the chroma of `melody` [B, C, T], the
samples' melody conditioning files, when the batch has it, else of `wav`; token batches of `tokenize
--chroma` shards bring it as `chroma` [B, Fc, 12]) or tokens `{"codes", "mask", "text", "meta"}`
(TokenDataModule, pre-tokenized shards). AdamW (betas 0.9/0.95, weight decay 0.1) with linear
warmup + cosine decay stepped per step; gradient clipping comes from the trainer config
(`gradient_clip_val: 1.0`); optional EMA of the LM weights (`lightning_musicgen.ema`, one update per
optimizer step). Checkpoints hold the trainable state only: the configs once (resolved, in
`hyper_parameters`), the frozen codec and text encoder as path/name + content hash (`model_files`),
and the training crop (`segment_duration`, seconds; generation slides a window of that length beyond it).

Logged: `train/loss`, `train/ce_q{k}`, `val/loss`, `val/ce_q{k}`, `lm/ppl_q{k}` (train),
`val/ppl_q{k}`; throughput (`lm/tokens_per_sec`, `train/mfu`) comes from `training.throughput.AudioThroughputMonitor`
(in configs/trainer/default.yaml), with `flops_per_batch` below.

Fine-tuning (see docs/finetuning.md and `lm.finetune`, `lm.lora`, `memory`): `init_from` starts the
LM, its conditioner and its codec from a pretrained model; `lora` trains peft LoRA adapters only
(base weights frozen; checkpoints record the settings, `lora merge` folds them in);
`global_batch_size` derives `trainer.accumulate_grad_batches` from the micro-batch and devices;
`memory_budget_gb` picks the largest micro-batch whose estimated peak fits.
"""
from __future__ import annotations

import warnings

import torch
from lightning.pytorch import LightningModule

from lightning_musicgen.compat import attached_trainer
from lightning_musicgen.ema import EMA
from lightning_musicgen.errors import CheckpointError, ConfigError, InputError
from lightning_musicgen.flops import lm_train_flops
from lightning_musicgen.lm.conditioners import ConditionerConfig, ConditionProvider, build_condition_provider
from lightning_musicgen.lm.model import LMConfig, MusicGenLM
from lightning_musicgen.optim import WEIGHT_DECAY_ON, adamw_warmup_cosine


class MusicGenModule(LightningModule):
    """LightningModule around `MusicGenLM` and a `ConditionProvider`.

    Args:
        lm: the LM's `LMConfig` (YAML: its fields; `n_q`/`card` null = read from the codec).
        conditioner: the `ConditionerConfig` (YAML: {"text": {"name": "t5-base", ...}, "melody": ... |
            null, "fuse": "cross" | "prepend", "cfg_dropout": 0.3, ...}). Text and melody `dim`
            default to the LM width.
        codec_checkpoint: codec model folder (or CodecModule / converted checkpoint) used to encode
            wav batches and recorded (path + content hash) in checkpoints; not needed with token
            batches. It stays frozen and out of the state dict.
        lr, betas, weight_decay, warmup_steps, total_steps (default: trainer.max_steps), min_lr_ratio:
            AdamW + warmup-cosine. `weight_decay_on`: "matrices" (norms and 1-D parameters get none)
            or "all" (audiocraft: every parameter decays).
        keep_only_valid_steps: leave the pattern's overhang steps out of the loss (audiocraft's
            training; see `MusicGenLM.loss`). False scores every code that generation samples.
        ema_decay: keep an exponential moving average of the LM weights, one update per optimizer
            step (None: off); exported model folders hold the EMA weights when it is on.
        init_from: a model folder (`convert`, `export`), a converted file of earlier versions or a
            MusicGenModule checkpoint to start from. Its architecture wins: `lm` / `conditioner` may
            then only change training-time settings (dropout, gradient_checkpointing, cfg/word dropout,
            ...). The codec comes from it too unless `codec_checkpoint` is given.
        lora: LoRA settings ({r, alpha, dropout, targets, train_condition_projection}, see `lm.lora`):
            only the adapters (and optionally the condition projections) train. None: full fine-tuning
            (the text encoder stays frozen with `conditioner.text.freeze`).
        global_batch_size: samples per optimizer step over all devices; accumulate_grad_batches is set
            to global_batch_size / (micro-batch x devices) when the fit starts.
        memory_budget_gb: per-device memory budget; the data's batch_size (the micro-batch) becomes
            the largest the estimate (`lightning_musicgen.memory`) fits in it.
    """

    def __init__(self, lm: LMConfig | None = None, conditioner: ConditionerConfig | None = None,
                 codec_checkpoint: str | None = None, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1, warmup_steps: int = 4000, total_steps: int | None = None,
                 min_lr_ratio: float = 0.0, ema_decay: float | None = None, weight_decay_on: str = "matrices",
                 keep_only_valid_steps: bool = False, init_from: str | None = None,
                 lora: dict | None = None, global_batch_size: int | None = None,
                 memory_budget_gb: float | None = None):
        super().__init__()
        if weight_decay_on not in WEIGHT_DECAY_ON:
            raise ConfigError(f"model.init_args.weight_decay_on: one of {WEIGHT_DECAY_ON}, got {weight_decay_on!r}")
        self.codec_checkpoint = codec_checkpoint
        self._codec = None  # not a submodule: frozen, never saved, never trained
        self._codec_reference = None
        self.init_from, self.global_batch_size, self.memory_budget_gb = init_from, global_batch_size, memory_budget_gb
        if init_from:
            self._init_pretrained(init_from, lm, conditioner)
        else:
            self._init_fresh(lm, conditioner)
        self.lora = None
        if lora is not None:
            self._add_lora(lora)
        # the configs are stored once, resolved (n_q, card, widths), in the checkpoint's hyper_parameters
        self.save_hyperparameters(ignore=["lm", "conditioner", "lora"])
        self.hparams["lm"] = self.lm.config.to_dict()
        self.hparams["conditioner"] = self.conditioner_config.to_dict()
        self.hparams["lora"] = self.lora.to_dict() if self.lora is not None else None
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.weight_decay_on, self.keep_only_valid_steps = weight_decay_on, keep_only_valid_steps
        self.ema = EMA(self.lm, ema_decay) if ema_decay else None  # after LoRA: it averages the adapters too
        self._warned_melody = False
        self._trained_shape: tuple[int, int, int] | None = None  # (frames, cross, prefix length): last train step
        self._text_encoder_hash = None

    def _init_fresh(self, lm: LMConfig | dict | None, conditioner: ConditionerConfig | dict | None) -> None:
        lm_cfg = LMConfig.from_dict(lm) if isinstance(lm, dict) else (lm or LMConfig())
        cond_cfg = ConditionerConfig.from_dict(conditioner) if isinstance(conditioner, dict) \
            else (conditioner or ConditionerConfig())
        codec_checkpoint = self.codec_checkpoint
        codec = None
        if codec_checkpoint:  # loaded now: a missing or wrong-kind file fails here, in one line
            codec = self._load_codec()
        if codec is not None and (lm_cfg.n_q is None or lm_cfg.card is None):
            lm_cfg = LMConfig.from_dict({**lm_cfg.to_dict(), "n_q": lm_cfg.n_q or codec.n_q,
                                         "card": lm_cfg.card or codec.card})  # null -> the codec's
        self.lm = MusicGenLM(lm_cfg)
        if codec is not None and (codec.card != self.lm.card or codec.max_n_q < self.lm.n_q):
            raise ConfigError(f"lm.n_q={self.lm.n_q}, lm.card={self.lm.card} do not match the codec {codec_checkpoint} "
                              f"({codec.max_n_q} codebooks x {codec.card} codes); set them to null "
                              "to use the codec's")
        self.conditioner_config = cond_cfg.with_dim(self.lm.dim)
        self.conditioner: ConditionProvider = build_condition_provider(self.conditioner_config)
        if self.conditioner.cross_attention != self.lm.cross_attention:
            raise ConfigError(f"conditioner fuse={cond_cfg.fuse!r} does not match "
                             f"lm.cross_attention={self.lm.cross_attention}")

    # ---- fine-tuning -------------------------------------------------------------------------
    def _init_pretrained(self, init_from: str, lm: dict | None, conditioner: dict | None) -> None:
        from lightning_musicgen.lm.finetune import apply_overrides, load_pretrained
        pre = load_pretrained(init_from)
        self.lm, self.conditioner, self.conditioner_config = apply_overrides(pre, lm, conditioner)
        if not self.codec_checkpoint:
            self.codec_checkpoint = pre.codec_checkpoint

    def _add_lora(self, lora: dict) -> None:
        from lightning_musicgen.lm.lora import LoRASettings, add_lora, freeze_for_lora
        self.lora = LoRASettings.from_any(lora)
        add_lora(self.lm, self.lora)
        freeze_for_lora(self.conditioner, self.lora)

    def save_adapters(self, path) -> None:
        """Write the LoRA adapters (and trained projections) alone: a small safetensors file that
        `model_files.adapters.load_adapters` puts onto the base model."""
        from lightning_musicgen.model_files.adapters import save_adapters
        if self.lora is None:
            raise InputError("save_adapters: this module trains no LoRA adapters (model.init_args.lora is null)")
        save_adapters(path, self.lm, self.conditioner, self.lora, meta={"init_from": self.init_from})

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None and (self.global_batch_size or self.memory_budget_gb):
            self._plan_batches(self.trainer)

    def _plan_batches(self, trainer) -> None:
        """Micro-batch from the memory budget (if set), then accumulation from the global batch size."""
        from lightning.pytorch.utilities import rank_zero_info

        from lightning_musicgen.lm.finetune import accumulation, micro_batch_for_budget
        dm, world = trainer.datamodule, trainer.world_size
        if dm is None or not hasattr(dm, "batch_size"):
            raise ConfigError("global_batch_size / memory_budget_gb: need a datamodule with a batch_size")
        micro = int(dm.batch_size)
        if self.memory_budget_gb:
            from lightning_musicgen.data import TokenDataModule
            from lightning_musicgen.memory import estimate_for_module
            seconds = getattr(dm, "segment_duration", None)
            if not seconds:
                raise ConfigError("memory_budget_gb: the datamodule needs a segment_duration (crop length)")
            precision = str(trainer.precision)
            micro = micro_batch_for_budget(
                lambda b: estimate_for_module(self, b, float(seconds), precision,
                                              audio=not isinstance(dm, TokenDataModule)).peak,
                self.memory_budget_gb * 2**30, self.global_batch_size, world)
            if micro != dm.batch_size:
                dm.batch_size = micro
                dm.setup("fit")  # the training stream batches with the new micro-batch
        if self.global_batch_size:
            trainer.accumulate_grad_batches = accumulation(self.global_batch_size, micro, world)
        rank_zero_info(f"micro-batch {micro} x {world} device(s) x accumulate {trainer.accumulate_grad_batches} "
                       f"= {micro * world * trainer.accumulate_grad_batches} samples per optimizer step")

    # ---- codec -------------------------------------------------------------------------------
    def _load_codec(self):
        if self._codec is None:
            from lightning_musicgen.model_files.codec import load_codec
            codec = load_codec(self.codec_checkpoint).eval().requires_grad_(False)
            object.__setattr__(self, "_codec", codec)  # bypass nn.Module registration: not a submodule
        return self._codec

    @property
    def codec(self):
        """The frozen CompressionModel (loaded on first use, moved to this module's device)."""
        if not self.codec_checkpoint:
            raise ConfigError("model.init_args.codec_checkpoint: needed to encode audio batches (or use token shards)")
        codec = self._load_codec()
        if codec.n_q != self.lm.n_q and codec.max_n_q >= self.lm.n_q:
            codec.n_q = self.lm.n_q
        if (codec.n_q, codec.card) != (self.lm.n_q, self.lm.card):
            raise ConfigError(f"codec {self.codec_checkpoint}: {codec.n_q} x {codec.card} codes "
                              f"!= LM n_q={self.lm.n_q} x card={self.lm.card}")
        if next(codec.parameters()).device != self.device:
            codec.to(self.device)
        return codec

    @torch.no_grad()
    def tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch -> (codes [B, K, F], frame mask [B, F])."""
        if "codes" in batch:
            codes, mask = batch["codes"], batch.get("mask")
            if codes.shape[1] != self.lm.n_q:
                raise ConfigError(f"token batch has {codes.shape[1]} codebooks, the LM models lm.n_q={self.lm.n_q}")
            card = max((int(m.get("card") or 0) for m in batch.get("meta") or []), default=0)
            if card > self.lm.card:  # token ids beyond the LM's embeddings: fail in one line, not in an index error
                raise ConfigError(f"token shards hold codes of a {card}-code codec, above lm.card={self.lm.card}; "
                                  f"set lm.card to {card}")
            if mask is None:
                mask = torch.ones(codes.shape[0], codes.shape[-1], dtype=torch.bool, device=codes.device)
            return codes, mask.bool()
        wav = batch["wav"]
        codec = self.codec
        with torch.autocast(wav.device.type, enabled=False):
            codes = codec.encode(wav.float())
        F = codes.shape[-1]
        lengths = batch["mask"].sum(-1) if "mask" in batch else torch.full((wav.shape[0],), wav.shape[-1])
        frames = torch.ceil(lengths.float() / codec.hop_length).long().clamp(max=F)
        mask = torch.arange(F, device=codes.device)[None, :] < frames.to(codes.device)[:, None]
        return codes, mask

    def check_chroma(self, batch: dict) -> None:
        """Token shards' chroma must be what this LM's melody conditioner would compute."""
        melody = self.conditioner.melody.extractor
        stored = next((m["chroma"] for m in batch.get("meta") or [] if "chroma" in m), {})
        for key in ("sample_rate", "n_chroma", "n_fft", "hop_length"):
            if key in stored and int(stored[key]) != int(getattr(melody, key)):
                raise ConfigError(f"token shards hold chroma with {key}={stored[key]}, the LM's melody conditioner "
                                  f"uses melody.{key}={getattr(melody, key)}: re-tokenize or set melody.{key}")

    def conditions(self, batch: dict):
        melody = chroma = None
        if self.conditioner.melody is not None:
            if "melody" in batch:
                melody = batch["melody"]  # melody conditioning files, cropped like the audio (data/pipeline.py)
            elif "wav" in batch:
                melody = batch["wav"]  # chroma of the training crop itself
            elif "chroma" in batch:  # token shards written by `tokenize --chroma`
                self.check_chroma(batch)
                chroma = batch["chroma"]
            elif not self._warned_melody:
                warnings.warn("melody conditioner with token batches without chroma: training with the null "
                              "melody (tokenize with --chroma to carry it)")
                self._warned_melody = True
        return self.conditioner(list(batch["text"]), melody=melody, chroma=chroma)

    # ---- steps -------------------------------------------------------------------------------
    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        codes, mask = self.tokens(batch)
        conditions = self.conditions(batch)
        loss, per_codebook = self.lm.loss(codes, conditions, mask, keep_only_valid_steps=self.keep_only_valid_steps)
        if stage == "train":
            cross = conditions.cross.shape[1] if self.lm.cross_attention and conditions.cross is not None else 0
            self._trained_shape = (codes.shape[-1], cross, conditions.prefix_len)
        B = codes.shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=B, on_step=on_step, on_epoch=not on_step,
                 sync_dist=not on_step)
        for k, ce in enumerate(per_codebook):
            self.log(f"{stage}/ce_q{k}", ce, batch_size=B, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
            ppl_group = "lm" if stage == "train" else "val"
            self.log(f"{ppl_group}/ppl_q{k}", torch.exp(ce.detach()), batch_size=B, on_step=on_step,
                     on_epoch=not on_step, sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def tokens_per_batch(self, batch: dict) -> int | None:
        """Codes (B x K x F) of the training step just run on `batch`; None before any step."""
        return None if self._trained_shape is None else len(batch["text"]) * self.lm.n_q * self._trained_shape[0]

    def flops_per_batch(self, batch: dict) -> int | None:
        """Model FLOPs (`lightning_musicgen.flops`) of the training step just run on `batch` on this rank: the
        LM's forward and backward at the frames and condition lengths that step saw; None before any step.
        AudioThroughputMonitor turns it into `train/mfu`."""
        if self._trained_shape is None:
            return None
        frames, cross, prefix = self._trained_shape
        return lm_train_flops(self.lm.config, len(batch["text"]), self.lm.pattern.num_steps(frames), cross, prefix)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.lm, self.global_step)  # once per optimizer step

    def configure_callbacks(self):
        from lightning_musicgen.training.defaults import reliability_callbacks
        return reliability_callbacks(self.trainer)  # non-finite guard, signals, RNG states, skip reports

    # ---- optimizer -----------------------------------------------------------------------------
    def configure_optimizers(self):
        total = self.total_steps or (self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None)
        if not total:
            raise ConfigError("model.init_args.total_steps: set it (or trainer.max_steps) for the cosine schedule")
        warmup = min(self.warmup_steps, total)
        return adamw_warmup_cosine(self, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay,
                                   warmup_steps=warmup, total_steps=total, min_lr_ratio=self.min_lr_ratio,
                                   weight_decay_on=self.weight_decay_on)

    # ---- checkpoints -----------------------------------------------------------------------------
    def _frozen_text_encoder(self):
        text = self.conditioner.text
        return text if text is not None and text.freeze else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Trainable state only: the frozen text encoder and codec are referenced, not embedded."""
        from lightning_musicgen.model_files.files import TEXT_ENCODER_PREFIX, make_reference, tensors_hash
        frozen = {}
        text = self._frozen_text_encoder()
        if text is not None:
            if self._text_encoder_hash is None:
                self._text_encoder_hash = tensors_hash(text.encoder.state_dict())
            frozen["text_encoder"] = {"name": str(text.name), "sha256": self._text_encoder_hash}
            for key in [k for k in checkpoint["state_dict"] if k.startswith(TEXT_ENCODER_PREFIX)]:
                del checkpoint["state_dict"][key]
        if self.codec_checkpoint:
            callback = getattr(attached_trainer(self), "checkpoint_callback", None)
            base = getattr(callback, "dirpath", None)
            if self._codec_reference is None or self._codec_reference[0] != base:
                self._codec_reference = (base, make_reference(self.codec_checkpoint, base))
            frozen["codec"] = self._codec_reference[1]
        checkpoint["frozen"] = frozen
        seconds = getattr(getattr(attached_trainer(self), "datamodule", None), "segment_duration", None)
        if seconds:  # the longest window generation may use before it slides (model_files: max_duration)
            checkpoint["segment_duration"] = float(seconds)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume: put this module's own (hash-checked) frozen text encoder back into the state."""
        from lightning_musicgen.model_files.files import TEXT_ENCODER_PREFIX, tensors_hash
        ref = (checkpoint.get("frozen") or {}).get("text_encoder")
        text = self._frozen_text_encoder()
        state = checkpoint.get("state_dict", {})
        if ref is None or text is None or any(k.startswith(TEXT_ENCODER_PREFIX) for k in state):
            return
        own = text.encoder.state_dict()
        if tensors_hash(own) != ref["sha256"]:
            raise CheckpointError(f"checkpoint: text encoder {text.name!r} hashes differently from the one it was "
                                  f"trained with (expected sha256 {ref['sha256']})")
        state.update({TEXT_ENCODER_PREFIX + k: v for k, v in own.items()})
