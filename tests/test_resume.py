"""Exact resume: SIGKILL mid-epoch, restart with `--ckpt_path last`, and end with the weights,
EMA and optimizer state of an uninterrupted run; atomic checkpoint writes; RNG states; the W&B
run id that keeps a requeued job in the same run and checkpoint folder.

The toy model and data below are also what the subprocesses run (PYTHONPATH=tests)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from conftest import ROOT
from lightning_musicgen.training import AtomicCheckpointIO
from lightning_musicgen.training.logger import ResumableWandbLogger, stable_run_id
from lightning_musicgen.training.resume import RNGStateCheckpoint, collect_rng_states
from lightning_musicgen.optim import adamw_warmup_cosine



# ---------------------------------------------------------------------------------------------
# toy model and data (imported by the subprocesses as test_resume.ToyRegression / ToyData)
class ToyRegression(LightningModule):
    """An MLP with dropout and input noise (random draws every step), AdamW + warmup-cosine and an
    EMA of the weights kept as buffers: every piece of state that exact resume must restore."""

    def __init__(self, lr: float = 0.02, total_steps: int = 20, ema_decay: float = 0.9):
        super().__init__()
        self.lr, self.total_steps, self.ema_decay = lr, total_steps, ema_decay
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 1))
        for name, p in self.net.named_parameters():
            self.register_buffer("ema_" + name.replace(".", "_"), p.detach().clone())

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.05 * torch.randn_like(x)
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def optimizer_step(self, *args, **kwargs):
        # EMA right after the step, not in on_train_batch_end: Lightning runs the callbacks'
        # on_train_batch_end (ModelCheckpoint) before the module's, so a checkpoint would miss it
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                self.get_buffer("ema_" + name.replace(".", "_")).lerp_(p, 1 - self.ema_decay)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.net, lr=self.lr, warmup_steps=3, total_steps=self.total_steps)


class _ToyStream(IterableDataset):
    def __init__(self, dm: "ToyData"):
        self.dm = dm

    def __iter__(self):
        epoch, skip = self.dm.begin_epoch()
        rank = self.dm.trainer.global_rank if self.dm.trainer is not None else 0
        for i in range(skip, self.dm.epoch_steps):
            g = torch.Generator().manual_seed(self.dm.seed * 1_000_003 + epoch * 10_007 + i * 101 + rank)
            x = torch.randn(self.dm.batch_size, 8, generator=g)
            yield x, torch.sin(x.sum(-1, keepdim=True))


class ToyData(LightningDataModule):
    """Deterministic batches: batch i of epoch e depends only on (seed, e, i, rank). Its state is
    (epoch, batches trained in it); a restored loader skips the trained batches."""

    def __init__(self, batch_size: int = 4, epoch_steps: int = 10, seed: int = 0):
        super().__init__()
        self.batch_size, self.epoch_steps, self.seed = batch_size, epoch_steps, seed
        self._epoch, self._resume = -1, None

    def train_dataloader(self):
        return DataLoader(_ToyStream(self), batch_size=None)

    def begin_epoch(self) -> tuple[int, int]:
        if self._resume is not None:
            self._epoch, skip = self._resume
            self._resume = None
            return self._epoch, skip
        self._epoch += 1
        return self._epoch, 0

    def state_dict(self):
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.epoch_steps:
            return {"epoch": self._epoch + 1, "batches": 0}
        return {"epoch": self._epoch, "batches": done}

    def load_state_dict(self, state):
        self._resume = (state["epoch"], state["batches"])


class KillAtStep(Callback):
    """SIGKILLs its own process after optimizer step `step` (no clean-up, no checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SlowDown(Callback):
    """Sleeps after every training step, so a test can act while a job runs."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


# ---------------------------------------------------------------------------------------------
TOY_CONFIG = """
model:
  class_path: test_resume.ToyRegression
  init_args: {{total_steps: {steps}}}
data:
  class_path: test_resume.ToyData
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: {steps}
  log_every_n_steps: 1
  enable_progress_bar: false
  default_root_dir: {root}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: 3, save_top_k: -1}}
    - lightning_musicgen.training.PreemptionCheckpoint
"""
RNG_CALLBACK = "    - lightning_musicgen.training.RNGStateCheckpoint\n"


def _fit(tmp: Path, run_id: str, steps: int, *extra: str, rng: bool = True) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "toy.yaml"
    # the callbacks of ddp.yaml with checkpoints every 3 steps; the ablation drops the RNG states
    cfg.write_text(TOY_CONFIG.format(steps=steps, root=tmp) + (RNG_CALLBACK if rng else ""))
    args = ["--config", ROOT / "configs/trainer/default.yaml", "--config", ROOT / "configs/trainer/ddp.yaml",
            "--config", cfg]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               WANDB_RUN_ID=run_id, WANDB_DIR=str(tmp), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lightning_musicgen", "fit", *map(str, args), "--trainer.logger.init_args.save_dir",
           str(tmp), *extra]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def _final_state(tmp: Path, run_id: str) -> dict:
    # newest last*.ckpt: a copied run folder gets last-v1.ckpt (ModelCheckpoint remembers the original path)
    last = max((tmp / "lightning_musicgen" / run_id / "checkpoints").glob("last*.ckpt"), key=os.path.getmtime)
    return torch.load(last, weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for idx in opt_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a[idx][name], opt_b[idx][name]), (idx, name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(own_tmp):
    tmp_path = own_tmp
    steps = 15   # epochs of 10 batches: the kill at step 8 is mid-epoch, the last checkpoint is step 6
    ref = _fit(tmp_path / "ref", "ref", steps)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _final_state(tmp_path / "ref", "ref")["global_step"] == steps

    killed = _fit(tmp_path / "run", "run", steps, "--trainer.callbacks+=test_resume.KillAtStep",
                  "--trainer.callbacks.step=8")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt_dir = tmp_path / "run" / "lightning_musicgen" / "run" / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not list(ckpt_dir.glob("*.tmp")), "atomic writes leave no temporary files behind"
    shutil.copytree(tmp_path / "run", tmp_path / "ablation", ignore=shutil.ignore_patterns("wandb", "toy.yaml"))

    resumed = _fit(tmp_path / "run", "run", steps, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train start: global_step=6" in resumed.stdout + resumed.stderr
    _assert_same_training_state(_final_state(tmp_path / "ref", "ref"), _final_state(tmp_path / "run", "run"))

    # the ablation that shows the RNG states matter: the same resume without RNGStateCheckpoint
    # (dropout and noise draws of steps 7.. differ from the uninterrupted run's)
    ablation = _fit(tmp_path / "ablation", "run", steps, "--ckpt_path", "last", rng=False)
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    a, b = _final_state(tmp_path / "ref", "ref"), _final_state(tmp_path / "ablation", "run")
    assert a["global_step"] == b["global_step"] == steps
    assert not torch.equal(a["state_dict"]["net.0.weight"], b["state_dict"]["net.0.weight"])


# ---------------------------------------------------------------------------------------------
def test_rng_state_roundtrip_restores_draws_at_next_batch():
    cb = RNGStateCheckpoint()
    torch.manual_seed(3)
    state = cb.state_dict()
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    torch.manual_seed(99)  # what a restarted process would have
    cb.load_state_dict(state)
    torch.rand(5)          # draws between restore and the first batch (iterator creation) do not count
    cb.on_train_batch_start(None, None, None, 0)
    got = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]
    assert set(collect_rng_states()) >= {"python", "numpy", "torch"}


def test_atomic_checkpoint_io_keeps_old_file_on_failed_write(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path)["step"] == 1

    real_save = torch.save

    def crash_half_way(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 partial bytes")  # the process "dies" after writing part of the file
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["step"] == 1                     # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    io.save_checkpoint({"step": 3}, path)
    assert torch.load(path)["step"] == 3


def test_atomic_checkpoint_io_writes_remote_paths_whole():
    import fsspec
    from lightning_musicgen.reliability import RunAborted
    io = AtomicCheckpointIO()
    path = "memory://ckpts/remote_last.ckpt"
    io.save_checkpoint({"step": 4, "state_dict": {"w": torch.ones(3)}}, path)
    assert io.load_checkpoint(path)["step"] == 4
    with pytest.raises(RunAborted, match="w is not finite"):
        io.save_checkpoint({"step": 5, "state_dict": {"w": torch.tensor([float("nan")])}}, path)
    assert io.load_checkpoint(path)["step"] == 4
    fsspec.filesystem("memory").rm("ckpts", recursive=True)


def test_atomic_checkpoint_io_survives_sigkill_during_write(own_tmp):
    tmp_path = own_tmp
    """A real SIGKILL while a large checkpoint is being written: the old file stays loadable."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    script = textwrap.dedent(f"""
        import os, signal, threading, torch
        from lightning_musicgen.training import AtomicCheckpointIO
        big = {{"step": 2, "w": [torch.ones(1 << 20) for _ in range(48)]}}   # 200 MB: writes dominate the loop
        threading.Timer(0.4, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        while True:
            AtomicCheckpointIO().save_checkpoint(big, {str(path)!r})
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert torch.load(path, weights_only=True)["step"] in (1, 2)   # never a truncated file


def test_run_id_is_stable_across_requeue():
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "my cluster"}
    assert stable_run_id(None, slurm) == stable_run_id(None, dict(slurm, SLURM_RESTART_COUNT="3")) == "my-cluster-4242"
    assert stable_run_id(None, {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "9"}) == "slurm-7_2"
    assert stable_run_id(None, dict(slurm, WANDB_RUN_ID="abc")) == "abc"
    assert stable_run_id("given", slurm) == "given"
    assert stable_run_id(None, {}) != stable_run_id(None, {})      # outside SLURM: a fresh run


def test_sbatch_script_and_logger_derive_the_same_run_id(tmp_path):
    """The sbatch script's WANDB_RUN_ID comes from the same function as the logger's id."""
    from lightning_musicgen.slurm.submit import JobSpec, render_sbatch
    (tmp_path / "job.yaml").write_text("trainer: {}\n")
    script = render_sbatch(JobSpec(configs=["job.yaml"], workdir=str(tmp_path)))
    line = next(ln for ln in script.splitlines() if "WANDB_RUN_ID=" in ln)
    slurm = {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "9", "SLURM_CLUSTER_NAME": "a b"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(slurm, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(["bash", "-c", f'{line}; echo "$WANDB_RUN_ID"'], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == stable_run_id(None, slurm) == "a-b-7_2"


def test_wandb_logger_knows_its_folder_before_the_run_starts(tmp_path, monkeypatch):
    """`--ckpt_path last` is resolved before W&B starts: the version must already be the stable id."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    logger = ResumableWandbLogger(project="p", save_dir=str(tmp_path), offline=True)
    assert logger.version == "slurm-77" and logger._wandb_init["resume"] == "allow"


def test_preemption_signal_checkpoints_at_the_next_check_and_stops(tmp_path, monkeypatch):
    """SIGUSR1 at step 3: a single process notices it at the next step boundary (several ranks every
    check_every_n_steps), writes last.ckpt there and exits with 128 + SIGUSR1; outside SLURM nothing is
    requeued."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_musicgen.training.resume import PreemptionCheckpoint

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)

    class SignalAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.getsignal(signal.SIGUSR1)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=50, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=100, save_last=True),
                                 PreemptionCheckpoint(check_every_n_steps=5), SignalAt()])
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(ToyRegression(total_steps=50), datamodule=ToyData())
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert trainer.global_step == 4
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4
    assert signal.getsignal(signal.SIGUSR1) == previous          # the handler is put back
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        PreemptionCheckpoint(signal_name="SIGFOO")
