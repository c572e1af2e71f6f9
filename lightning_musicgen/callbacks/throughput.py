"""Throughput, gradient norm and memory for the W&B dashboard (Lightning's ThroughputMonitor inside)."""
from __future__ import annotations

import resource
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import RunningStage


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


class AudioThroughputMonitor(ThroughputMonitor):
    """ThroughputMonitor that understands audio and token batches and logs, every `log_every_n_steps`:

    - `train/samples_per_sec` (all ranks together), `train/steps_per_sec`,
    - `train/audio_sec_per_sec`: seconds of audio processed per wall-clock second,
    - `lm/tokens_per_sec` for code batches (B*K*F codes per second),
    - `train/mfu` when the module defines `flops_per_batch` and the device's peak is known,
    - `train/grad_norm` (L2 over all parameters, before clipping; all shards under FSDP),
    - `train/memory_gb`: peak CUDA memory allocated since the last log (max RSS on CPU).

    Audio duration: a wav batch [B,C,T] holds T / `sample_rate` s per sample; a code batch
    [B,K,F] holds F / `frame_rate` s per sample (50 Hz for the 32 kHz EnCodec)."""

    def __init__(self, sample_rate: int = 32000, frame_rate: float = 50.0, window_size: int = 20,
                 log_grad_norm: bool = True):
        super().__init__(batch_size_fn=self._batch_size, length_fn=self._audio_samples, window_size=window_size)
        self.sample_rate, self.frame_rate, self.log_grad_norm = sample_rate, frame_rate, log_grad_norm
        self._is_codes: Optional[bool] = None
        self._codebooks = 1

    def _batch_size(self, batch: Any) -> int:
        t = find_batch_tensor(batch)
        if t is None:
            raise ValueError("AudioThroughputMonitor: no tensor in the batch")
        self._is_codes = not torch.is_floating_point(t)
        self._codebooks = t.shape[1] if self._is_codes and t.dim() == 3 else 1
        return int(t.shape[0])

    def _audio_samples(self, batch: Any) -> int:
        """Per-sample length in audio time units: samples (wav) or frames (codes), summed over the batch."""
        t = find_batch_tensor(batch)
        return int(t.shape[0] * t.shape[-1])

    def _compute(self, trainer: Trainer, iter_num: Optional[int] = None) -> None:
        if not trainer._logger_connector.should_update_logs:
            return
        stage = trainer.state.stage
        throughput = self._throughputs[stage]
        metrics, world = throughput.compute(), throughput.world_size
        prefix = "train" if stage == RunningStage.TRAINING else "val"
        out: dict[str, float] = {}
        if "device/samples_per_sec" in metrics:
            out[f"{prefix}/samples_per_sec"] = metrics["device/samples_per_sec"] * world
            out[f"{prefix}/steps_per_sec"] = metrics["device/batches_per_sec"]
        if "device/items_per_sec" in metrics:
            items = metrics["device/items_per_sec"] * world
            if self._is_codes:
                out[f"{prefix}/audio_sec_per_sec"] = items / self.frame_rate
                out["lm/tokens_per_sec" if prefix == "train" else "lm/val_tokens_per_sec"] = items * self._codebooks
            else:
                out[f"{prefix}/audio_sec_per_sec"] = items / self.sample_rate
        if "device/mfu" in metrics:
            out[f"{prefix}/mfu"] = metrics["device/mfu"]
        if prefix == "train":
            out["train/memory_gb"] = peak_memory_gb(trainer.strategy.root_device)
        if out:
            trainer._logger_connector.log_metrics(out, step=iter_num)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self.log_grad_norm or not trainer._logger_connector.should_update_logs:
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
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
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
