"""The one place that touches private APIs of torch and Lightning.

Everything here is a thin wrapper, so that a change in a private name breaks one function in this
file (and its test, tests/test_compat.py), not the package. Supported versions: the ranges setup.cfg
declares (torch >=2.11,<2.15, lightning >=2.6,<2.7), checked by tests/test_compat.py.

torch: CPU feature probes and oneDNN's packed linear kernels (generation), `foreach_lerp_` (EMA).
Lightning: `is_accumulating` (fit loop internals), `forward_signal_to_launched_processes` (the private
launcher classes' `kill`), `launched_by_spawn`, `ddp_kwargs` (a DDPStrategy's DistributedDataParallel
arguments), `attached_trainer` (a LightningModule's trainer or None), `batches_processed_in_epoch`
(the training epoch loop's progress counter), `setup_activation_checkpointing` (Fabric's FSDP helper,
for an FSDP module wrapped by hand: benchmarks/gpu_check.py on CPU) and `skip_checkpoint_saves_at_this_step`
(ModelCheckpoint's record of the last saved step: NonFiniteGuard holds saves back while a run diverges).
"""
from __future__ import annotations

import signal
from typing import Any, Optional

import torch


def cpu_has_bf16_instructions() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles).

    Without them, bf16 matrix products run tens of times slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_capability() -> str:
    """ATen's vectorisation level for this CPU: 'AVX512', 'AVX2', 'DEFAULT', ... (public API)."""
    return str(torch.backends.cpu.get_cpu_capability())


def onednn_linear_kernels_available(dtype: torch.dtype) -> bool:
    """oneDNN's packed linear kernels (`torch.ops.mkldnn._reorder_linear_weight` /
    `_linear_pointwise`) exist in this build and run for `dtype` on this CPU.

    fp32 runs on every x86 CPU; bf16 needs AVX512 (bw, vl, dq: ATen's 'AVX512' level) or bf16
    hardware; on an AVX2-only CPU oneDNN refuses bf16 weights with a RuntimeError."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return cpu_has_bf16_instructions() or cpu_capability().startswith("AVX512")
    return False


def onednn_pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Re-lay a Linear weight [out, in] once into oneDNN's blocked layout for `rows`-row inputs."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def onednn_linear(x2d: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x2d[N, in] @ packed_weight^T + bias with oneDNN's kernel (no activation fused)."""
    return torch.ops.mkldnn._linear_pointwise(x2d, packed_weight, bias, "none", [], "")


def is_accumulating(trainer) -> bool:
    """True between the micro-batches of one optimizer step (`fit_loop._should_accumulate`)."""
    return bool(trainer.fit_loop._should_accumulate())


def forward_signal_to_launched_processes(trainer, signum: int) -> None:
    """Send `signum` to the processes Lightning's launcher started (the other local DDP ranks when `python
    -m ...` launched them), as Lightning's own SIGTERM handler does (`launcher.kill`, private launcher
    classes). Under SLURM/torchrun every rank receives the signal itself and there is nothing to forward."""
    launcher = getattr(trainer.strategy, "launcher", None)
    kill = getattr(launcher, "kill", None)
    if kill is not None and getattr(launcher, "procs", None):
        kill(signal.Signals(signum))


def launched_by_spawn(strategy) -> bool:
    """The strategy's processes were started by Lightning's multiprocessing launcher (ddp_spawn,
    ddp_fork, ddp_notebook): children that exit right after `fit`."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
    return isinstance(getattr(strategy, "launcher", None), _MultiProcessingLauncher)


def foreach_lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float) -> None:
    """targets[i] += weight * (sources[i] - targets[i]) for all i, in one fused kernel (`torch._foreach_lerp_`)."""
    torch._foreach_lerp_(targets, sources, weight)


def ddp_kwargs(strategy) -> Optional[dict[str, Any]]:
    """The keyword arguments a DDPStrategy will pass to DistributedDataParallel (`_ddp_kwargs`, e.g.
    `find_unused_parameters`); None for a strategy that is not DDP."""
    from lightning.pytorch.strategies import DDPStrategy
    return dict(strategy._ddp_kwargs) if isinstance(strategy, DDPStrategy) else None


def attached_trainer(module):
    """The Trainer `module` (a LightningModule) is attached to, or None (`module.trainer` raises then)."""
    return module._trainer


def batches_processed_in_epoch(trainer) -> int:
    """Training batches fully processed (training_step and backward done) in the current epoch
    (`fit_loop.epoch_loop.batch_progress.current.processed`)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def setup_activation_checkpointing(module: torch.nn.Module, activation_checkpointing_kwargs: dict) -> None:
    """Apply an FSDP strategy's activation checkpointing (its `activation_checkpointing_kwargs`) to a module
    wrapped in FSDP outside Lightning, as the strategy does (`lightning.fabric.strategies.fsdp`, private)."""
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    _setup_activation_checkpointing(module, activation_checkpointing_kwargs)


def skip_checkpoint_saves_at_this_step(trainer) -> None:
    """Make every ModelCheckpoint of `trainer` treat the current global step as saved already, so that none
    writes at it (batch end, epoch end, validation end, on exception) (`ModelCheckpoint._last_global_step_saved`)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback._last_global_step_saved = trainer.global_step
