"""Exact resume and signals: every rank's RNG states travel with the checkpoint (`RNGStateCheckpoint`);
SIGTERM/SIGUSR1 write a checkpoint at the next step boundary and end the run non-zero (`PreemptionCheckpoint`).

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
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_musicgen.compat import forward_signal_to_launched_processes, is_accumulating
from lightning_musicgen.distributed import is_distributed, slurm_job_id
from lightning_musicgen.errors import ConfigError
from lightning_musicgen.reliability import SignalExit

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
        if is_distributed():
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


class PreemptionCheckpoint(Callback):
    """Checkpoint at an optimizer-step boundary and exit non-zero on SIGUSR1 (SLURM's warning, then requeue)
    and on SIGTERM (a scheduler or a user ending the job).

    `submit` asks SLURM for `--signal=USR1@90`: 90 s before the time limit (or before a preemption, with the
    cluster's GraceTime) every task receives SIGUSR1. The handler only records a signal; at the end of the
    current training step all ranks agree on it (one all-reduce of a bool), write `last.ckpt` through the
    trainer's first ModelCheckpoint (so `--ckpt_path last` finds it), rank 0 runs `scontrol requeue` for the
    requeue signal under SLURM, and the run ends with exit status 128 + signal number (`SignalExit`).
    It replaces the handlers of Lightning's SLURMEnvironment(auto_requeue=True), which writes an
    `hpc_ckpt_N.ckpt` from inside the signal handler, possibly mid-step, and of Lightning's SIGTERM
    connector, which stops without a checkpoint and exits 0 (a SIGTERM that Lightning catches before training
    starts still ends the run with status 143).

    Single-process runs check after every step; with several ranks every `check_every_n_steps` optimizer
    steps (an all-reduce and a host sync): that many steps plus a checkpoint write must fit in the warning
    time. A signal always ends the process: a second one exits at once, and if no training or validation batch
    finishes within `stall_timeout` seconds of the first (a stuck data loader or collective) the process
    exits without a checkpoint (the previous one is intact: writes are atomic). While a NonFiniteGuard holds
    checkpoints back (a stretch of non-finite steps) the signal ends the run without writing one.

    It also prints the global step training starts from, so logs show where a job resumed.
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True, check_every_n_steps: int = 5,
                 stop_signals: list[str] | None = None, stall_timeout: float = 120.0):
        names = [signal_name] + list(["SIGTERM"] if stop_signals is None else stop_signals)
        try:
            signums = [signal.Signals[name] for name in names]
        except KeyError as exc:
            raise ConfigError(f"PreemptionCheckpoint: unknown signal {exc.args[0]!r}") from None
        if check_every_n_steps < 1:
            raise ConfigError(f"PreemptionCheckpoint: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.signum, self.signums = signums[0], list(dict.fromkeys(signums))
        self.requeue, self.check_every_n_steps, self.stall_timeout = requeue, check_every_n_steps, stall_timeout
        self._received: signal.Signals | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._last_progress = self._signal_time = time.monotonic()
        self._saving = False
        self._trainer: Trainer | None = None

    # -- the handler: records, forwards, and never lets a signal go unanswered -----------------------
    def _handler(self, signum, frame) -> None:
        signum = signal.Signals(signum)
        if self._received is not None:
            # a copy within a second is the same request (a process-group kill also reaches the ranks that
            # rank 0 forwards it to); asked again later: stop now
            if time.monotonic() - self._signal_time > 1.0:
                os.write(2, f"[lightning_musicgen] second signal {signum.name}: exiting without a checkpoint\n".encode())
                os._exit(128 + int(signum))
            return
        self._received, self._signal_time = signum, time.monotonic()
        self._last_progress = time.monotonic()
        if self._trainer is not None:
            forward_signal_to_launched_processes(self._trainer, signum)
        threading.Thread(target=self._watchdog, args=(signum,), daemon=True).start()

    def _watchdog(self, signum: signal.Signals) -> None:
        while True:
            time.sleep(min(1.0, self.stall_timeout / 4))
            if self._received is None:  # handled (or the run ended): nothing to watch
                return
            if self._saving:
                continue
            if time.monotonic() - self._last_progress > self.stall_timeout:
                os.write(2, (f"[lightning_musicgen] {signum.name}: no training step finished within "
                             f"{self.stall_timeout:g} s, exiting without a checkpoint\n").encode())
                os._exit(128 + int(signum))

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                previous = signal.signal(signum, self._handler)
                self._previous_handlers.setdefault(signum, previous)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._received, self._trainer = None, trainer

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # installed after Lightning's own handlers (so its teardown puts back the ones from before the run):
        # a stuck validation loader in the sanity check is answered too
        self._trainer = trainer
        self._install()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"[lightning_musicgen] train start: global_step={trainer.global_step} "
                       f"ckpt_path={trainer.ckpt_path} restart={os.environ.get('SLURM_RESTART_COUNT', 0)}")
        self._trainer = trainer
        if getattr(trainer, "received_sigterm", False) and self._received is None:  # caught by Lightning only
            self._received = signal.SIGTERM
        self._install()  # replaces Lightning's SIGTERM handler, which would stop without a checkpoint

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        self._progress()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._progress()
        every = 1 if trainer.world_size == 1 else self.check_every_n_steps
        if is_accumulating(trainer) or trainer.global_step % every:
            return  # only between optimizer steps, every n of them
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        signum = self._received or self.signum
        path = self.last_checkpoint_path(trainer)
        guard = next((cb for cb in trainer.callbacks if getattr(cb, "holding_checkpoints", False)), None)
        if guard is not None:  # NonFiniteGuard: the weights since guard.stretch.start produced non-finite losses
            rank_zero_info(f"[lightning_musicgen] signal {signum.name}: no checkpoint written, the steps since "
                           f"{guard.stretch.start} are non-finite or exploding (the checkpoints from before are kept)")
        else:
            self._saving = True
            try:
                trainer.save_checkpoint(path)
            finally:
                self._saving = False
            rank_zero_info(f"[lightning_musicgen] signal {signum.name}: saved {path} at global_step={trainer.global_step}")
        trainer.strategy.barrier("preemption_checkpoint")
        job = slurm_job_id()
        if signum == self.signum and self.requeue and job and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                rank_zero_info(f"[lightning_musicgen] requeued SLURM job {job}")
            else:
                rank_zero_warn(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        trainer.should_stop = True
        rank_zero_info(f"[lightning_musicgen] exiting with status {128 + int(signum)} after {signum.name}")
        raise SignalExit(signum)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning's own SIGTERM stop (outside training steps) is a SystemExit with status 0: make it 143
        if isinstance(exception, SIGTERMException) and not exception.code:
            exception.code = 128 + int(signal.SIGTERM)
        self._restore_handlers()  # Lightning calls no teardown hook after an exception

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        self._received = None
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous_handlers.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers, self._trainer = {}, None

    @staticmethod
    def last_checkpoint_path(trainer: Trainer) -> str:
        ckpt = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is None or ckpt.dirpath is None:
            rank_zero_warn("PreemptionCheckpoint: no ModelCheckpoint callback; saving to default_root_dir, "
                           "which `--ckpt_path last` does not search")
            return os.path.join(trainer.default_root_dir, "last.ckpt")
        return os.path.join(ckpt.dirpath, ckpt.CHECKPOINT_NAME_LAST + ckpt.FILE_EXTENSION)
