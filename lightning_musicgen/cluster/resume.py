"""Exact resume: every rank's RNG states travel with the checkpoint.

Lightning checkpoints hold model, optimizer, LR scheduler, loop progress, callback states
(EMA, ...) and `datamodule.state_dict()`, but no random-number-generator states. Without them a
resumed run draws different dropout masks / CFG dropout / noise than the uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

log = logging.getLogger("lightning.pytorch.callbacks.preemption")  # shown by Lightning's INFO handler


@rank_zero_only
def rank_zero_info(message: str) -> None:
    log.info(message)


def collect_rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and every CUDA device) generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only, so `torch.load(weights_only=True)` accepts the checkpoint
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCheckpoint(Callback):
    """Saves the RNG states of every rank in each checkpoint and restores them on resume.

    The states are captured when the checkpoint is written (end of an optimizer step) and put
    back just before the first training batch after the restore, so the random draws of every
    later `training_step` (dropout, CFG/word dropout) equal those of an uninterrupted run. Data
    loading must not draw from the global generators in the main process (use seeded
    per-sample generators or worker processes): the loader's iterator is rebuilt on resume.
    A checkpoint from a run with another world size restores ranks modulo the saved count.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        local = collect_rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)  # state_dict() runs on every rank at save time
            return {"per_rank": gathered}
        return {"per_rank": [local]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict["per_rank"]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._pending = per_rank[rank % len(per_rank)]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def slurm_job_id(environ: dict | None = None) -> str | None:
    """`SLURM_JOB_ID`, or `ARRAYJOB_TASK` for an array task (what `scontrol requeue` takes)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class PreemptionCheckpoint(Callback):
    """Checkpoint-and-requeue at an optimizer-step boundary when SLURM warns of the end of a job.

    `submit` asks SLURM for `--signal=USR1@90`: 90 s before the time limit (or before a
    preemption, with the cluster's GraceTime) every task receives SIGUSR1. This callback only
    records the signal; at the end of the current training step all ranks agree on it (one
    all-reduce of a bool), write `last.ckpt` through the trainer's first ModelCheckpoint (so
    `--ckpt_path last` of the requeued job finds it), then rank 0 runs `scontrol requeue` and
    the trainer stops. It replaces the handler of Lightning's SLURMEnvironment(auto_requeue=True),
    which writes an `hpc_ckpt_N.ckpt` from inside the signal handler, possibly in the middle of
    a step. Outside SLURM (`requeue=False` or no job id) it checkpoints and stops.

    The ranks compare notes every `check_every_n_steps` optimizer steps (an all-reduce and a host
    sync, so not every step); that many steps plus a checkpoint write must fit in the warning time.

    It also prints the global step training starts from, so logs show where a job resumed.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, check_every_n_steps: int = 5):
        try:
            self.signum = signal.Signals[signal_name]
        except KeyError:
            raise ValueError(f"PreemptionCheckpoint: unknown signal {signal_name!r}") from None
        if check_every_n_steps < 1:
            raise ValueError(f"PreemptionCheckpoint: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.requeue, self.check_every_n_steps = requeue, check_every_n_steps
        self._received = False
        self._previous_handler: Any = None

    def _handler(self, signum, frame) -> None:
        self._received = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"[lightning_musicgen] train start: global_step={trainer.global_step} "
                       f"ckpt_path={trainer.ckpt_path} restart={os.environ.get('SLURM_RESTART_COUNT', 0)}")
        self._received = False
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._handler)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate() or trainer.global_step % self.check_every_n_steps:
            return  # only between optimizer steps, every n of them
        if not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        path = self.last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"[lightning_musicgen] signal {self.signum.name}: saved {path} at global_step={trainer.global_step}")
        trainer.strategy.barrier("preemption_checkpoint")
        job = slurm_job_id()
        if self.requeue and job and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                rank_zero_info(f"[lightning_musicgen] requeued SLURM job {job}")
            else:
                rank_zero_warn(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        trainer.should_stop = True
        self._received = False

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    @staticmethod
    def last_checkpoint_path(trainer: Trainer) -> str:
        ckpt = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is None or ckpt.dirpath is None:
            rank_zero_warn("PreemptionCheckpoint: no ModelCheckpoint callback; saving to default_root_dir, "
                           "which `--ckpt_path last` does not search")
            return os.path.join(trainer.default_root_dir, "last.ckpt")
        return os.path.join(ckpt.dirpath, ckpt.CHECKPOINT_NAME_LAST + ckpt.FILE_EXTENSION)
