"""Checkpoint files under kills, full disks and corruption (issue case 3), through the real CLI with
configs/trainer/default.yaml only (its AtomicCheckpointIO plugin), the checkpoint folder on a tmpfs
(another filesystem than the temporary folder) mounted by the test (root only).

The toy model and data are test_resume's (tiny checkpoints, fast steps)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                                reason="mounts a tmpfs for the checkpoint folder (needs root on Linux)")


@pytest.fixture
def tmpfs(own_tmp):
    mounted = []

    def mount(size: str) -> Path:
        path = own_tmp / f"tmpfs{len(mounted)}"
        path.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        mounted.append(path)
        return path
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


TOY = """
seed_everything: 7
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
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpt}, save_last: true, every_n_train_steps: 2, save_top_k: -1}}
{extra}
"""


def toy_fit(tmp: Path, ckpt: Path, steps: int, *args: str, extra: str = "") -> subprocess.CompletedProcess:
    cfg = tmp / "toy.yaml"
    cfg.write_text(TOY.format(steps=steps, root=tmp, ckpt=ckpt, extra=extra))
    tmpdir = tmp / "tmpdir"      # the process's temporary folder (on the root filesystem, not the tmpfs)
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", TMPDIR=str(tmpdir))
    cmd = [sys.executable, "-m", "lightning_musicgen", "fit", "--config", str(ROOT / "configs/trainer/default.yaml"),
           "--config", str(cfg), *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


class KillDuringSave(Callback):
    """Imported by the subprocess: the `nth` torch.save writes half of its bytes, then the process
    SIGKILLs itself (a node failure in the middle of a checkpoint write)."""

    def __init__(self, nth: int):
        self.nth, self.calls = nth, 0

    def setup(self, trainer, pl_module, stage):
        real = torch.save

        def save(obj, f, *args, **kwargs):
            self.calls += 1
            if self.calls < self.nth or isinstance(f, (str, os.PathLike)):
                return real(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]  # (W&B's import leaves empty folders there)


def _checkpoint_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_kill_during_a_save_keeps_the_previous_checkpoint_and_resume_works(own_tmp, tmpfs):
    ckpt = tmpfs("64m")
    extra = "    - class_path: test_reliability_checkpoints.KillDuringSave\n      init_args: {nth: 3}"
    killed = toy_fit(own_tmp, ckpt, 10, extra=extra)   # saves: step=2, last(2), step=4 <- killed
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _checkpoint_names(ckpt) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 2
    leftovers = [p.name for p in ckpt.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".epoch=0-step=4.ckpt.")   # the interrupted write
    assert not _files(own_tmp / "tmpdir"), "nothing is staged in the temporary folder"

    resumed = toy_fit(own_tmp, ckpt, 6, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")], "the dead writer's temp file is removed"
    assert not _files(own_tmp / "tmpdir")


def test_full_disk_fails_with_one_line_and_leaves_no_checkpoint_file(own_tmp, tmpfs):
    ckpt = tmpfs("1m")
    free = os.statvfs(ckpt).f_bavail * os.statvfs(ckpt).f_frsize
    (ckpt / "filler").write_bytes(b"\0" * (free - 8192))       # 8 KiB left: a toy checkpoint needs more
    out = toy_fit(own_tmp, ckpt, 6)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "no space left on device" in errors[0], \
        out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["filler"]          # no file under a checkpoint name
    assert not _files(own_tmp / "tmpdir")


def test_resume_from_an_unreadable_checkpoint_names_it_and_the_newest_readable_one(own_tmp, tmpfs):
    ckpt = tmpfs("64m")
    first = toy_fit(own_tmp, ckpt, 4)
    assert first.returncode == 0, first.stderr[-3000:]
    good = ckpt / "epoch=0-step=4.ckpt"
    assert torch.load(good, weights_only=True)["global_step"] == 4
    (ckpt / "last.ckpt").write_bytes(good.read_bytes()[:1000])   # truncated, and the newest file
    out = toy_fit(own_tmp, ckpt, 6, "--ckpt_path", "last")
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert f"cannot read checkpoint {ckpt / 'last.ckpt'}" in errors[0]
    assert f"newest readable checkpoint there is {good}" in errors[0]
    resumed = toy_fit(own_tmp, ckpt, 6, "--ckpt_path", str(good))   # what the message says to do
    assert resumed.returncode == 0, resumed.stderr[-3000:]
