"""Throughput, MFU, gradient norm and memory for the W&B dashboard (Lightning's `Throughput` meter inside)."""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

from lightning_musicgen.distributed import is_distributed
from lightning_musicgen.errors import InputError
from lightning_musicgen.flops import peak_flops


def find_batch_tensor(batch: Any) -> Optional[torch.Tensor]:
    """The tensor that carries the batch: `codes` (LongTensor[B,K,F]) for the LM, `wav`
    (Tensor[B,C,T]) for the codec, else the first tensor found."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in ("codes", "wav"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            found = find_batch_tensor(item)
            if found is not None:
                return found
    return None


def batch_frame_rate(batch: Any) -> Optional[float]:
    """The codec frame rate a token batch carries in its metas (`meta[i]["frame_rate"]`), if any."""
    metas = batch.get("meta") if isinstance(batch, Mapping) else None
    if isinstance(metas, Sequence) and metas and isinstance(metas[0], Mapping) and "frame_rate" in metas[0]:
        return float(metas[0]["frame_rate"])
    return None


class AudioThroughputMonitor(Callback):
    """Throughput for audio and token batches (Lightning's public `Throughput` meter inside), logged
    every `log_every_n_steps` training steps:

    - `train/samples_per_sec` (all ranks together), `train/batches_per_sec` (micro-batches, per rank),
    - `train/audio_sec_per_sec`: seconds of audio processed per wall-clock second, all ranks,
    - `lm/tokens_per_sec` for code batches (B*K*F codes per second, all ranks), and for wav batches of a
      module that defines `tokens_per_batch(batch)` (MusicGenModule: the codes it encoded),
    - `train/mfu` (model FLOPs per second over the device's peak, per rank) when the module defines
      `flops_per_batch(batch)` (FLOPs of the training step just run on `batch`, this rank; MusicGenModule
      and CodecModule do, counted by `lightning_musicgen.flops`) and the peak is known: `available_flops`
      if given, else `lightning_musicgen.flops.peak_flops` (dense bf16/fp16 datasheet figures of the GPUs
      it names, else Lightning's `get_available_flops`; None on CPU, and then no `train/mfu`),
    - `train/grad_norm` (L2 over all parameters, before clipping; all shards under FSDP),
    - `train/memory_gb`: peak CUDA memory allocated since the last log (max RSS on CPU).

    Audio duration: a wav batch [B,C,T] holds T / `sample_rate` s per sample; a code batch [B,K,F]
    holds F / frame rate s per sample, the frame rate being the one the batch's metas carry (token
    shards record their codec's) or, failing that, `frame_rate`."""

    def __init__(self, sample_rate: int = 32000, frame_rate: Optional[float] = None, window_size: int = 20,
                 log_grad_norm: bool = True, available_flops: Optional[float] = None):
        self.sample_rate, self.frame_rate, self.log_grad_norm = sample_rate, frame_rate, log_grad_norm
        self.available_flops = available_flops
        self.window_size = window_size
        self._meter: Optional[Throughput] = None
        self._t0 = 0.0
        self._batches = 0
        self._samples = self._audio_seconds = self._tokens = 0.0
        self._last_logged_step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dtype = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                 "16-true": torch.float16}.get(str(trainer.precision), torch.float32)
        available = self.available_flops or peak_flops(trainer.strategy.root_device, dtype)
        self._meter = Throughput(available_flops=available, world_size=trainer.world_size,
                                 window_size=self.window_size)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._t0 == 0.0:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        t = find_batch_tensor(batch)
        if t is None:
            raise ValueError("AudioThroughputMonitor: no tensor in the batch")
        samples = int(t.shape[0])
        if torch.is_floating_point(t):
            seconds = samples * t.shape[-1] / self.sample_rate
            count_tokens = getattr(pl_module, "tokens_per_batch", None)  # a module that encodes wav itself
            tokens = (count_tokens(batch) or 0) if callable(count_tokens) else 0
        else:
            frame_rate = batch_frame_rate(batch) or self.frame_rate
            if frame_rate is None:
                raise InputError("AudioThroughputMonitor: a code batch without meta['frame_rate']; "
                                 "set frame_rate to the codec's frame rate")
            seconds = samples * t.shape[-1] / frame_rate
            tokens = samples * (t.shape[1] if t.dim() == 3 else 1) * t.shape[-1]
        self._batches += 1
        self._samples += samples
        self._audio_seconds += seconds
        self._tokens += tokens
        count_flops = getattr(pl_module, "flops_per_batch", None)
        flops = count_flops(batch) if callable(count_flops) else None
        self._meter.update(time=time.perf_counter() - self._t0, batches=self._batches, samples=int(self._samples),
                           lengths=int(round(self._audio_seconds * 1000)), flops=flops)
        step = trainer.global_step
        if step % trainer.log_every_n_steps or step == self._last_logged_step:
            return
        self._last_logged_step = step
        metrics, world = self._meter.compute(), trainer.world_size
        out: dict[str, float] = {}
        if "device/samples_per_sec" in metrics:
            out["train/samples_per_sec"] = metrics["device/samples_per_sec"] * world
            out["train/batches_per_sec"] = metrics["device/batches_per_sec"]
            # lengths were counted in milliseconds of audio, per rank
            out["train/audio_sec_per_sec"] = metrics["device/items_per_sec"] * world / 1000
            if self._tokens:
                out["lm/tokens_per_sec"] = out["train/samples_per_sec"] * self._tokens / self._samples
        if "device/mfu" in metrics:
            out["train/mfu"] = metrics["device/mfu"]
        out["train/memory_gb"] = peak_memory_gb(trainer.strategy.root_device)
        for name, value in out.items():
            pl_module.log(name, float(value), on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self.log_grad_norm or trainer.global_step % trainer.log_every_n_steps:
            return
        norm = total_grad_norm(pl_module, sharded=isinstance(trainer.strategy, FSDPStrategy))
        if norm is not None:
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False, sync_dist=False)


def total_grad_norm(module: torch.nn.Module, sharded: bool = False) -> Optional[torch.Tensor]:
    """L2 norm of all gradients. DDP gradients are identical on every rank after the all-reduce;
    FSDP ranks each hold a shard, so the squared norms are summed over ranks."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    sq = torch.stack([torch.linalg.vector_norm(g.detach().float()) ** 2 for g in grads]).sum()
    if sharded and is_distributed():
        torch.distributed.all_reduce(sq)
    return sq.sqrt()


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the previous call (resets the peak), or the process's
    max resident set size on CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
