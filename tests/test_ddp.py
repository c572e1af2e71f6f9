"""CPU DDP (2 processes, gloo) fits of the demo configs through the CLI with configs/trainer/ddp.yaml,
and exact resume of the demo LM after a SIGKILL mid-epoch.

The demo LM (configs/demo/musicgen.yaml) runs on small synthetic token shards (the codec is not
needed for token batches); `demo_lm_override` is also used by the SLURM test."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from lightning.pytorch import Callback

from conftest import ROOT

DEMO_CODEC = ROOT / "configs/demo/codec.yaml"
DEMO_LM = ROOT / "configs/demo/musicgen.yaml"
TRAIN = [ROOT / "configs/trainer/default.yaml", ROOT / "configs/trainer/ddp.yaml"]


@pytest.fixture
def own_tmp():
    """A private temporary folder (pytest's shared basetemp may be rotated by other pytest runs)."""
    path = Path(tempfile.mkdtemp(prefix="lmg-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class DumpWeights(Callback):
    """Every rank saves its model weights at the end of training (DDP replicas must be equal)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                   os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


def write_audio_shards(folder: Path, n: int = 6) -> None:
    """`n` 3-second 32 kHz tones with captions, through `prepare` (flac WebDataset shards)."""
    import json

    import numpy as np
    import soundfile as sf
    from lightning_musicgen.data.prepare import prepare
    audio = folder / "audio"
    audio.mkdir(parents=True)
    t = np.arange(32000 * 3) / 32000
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 80 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
        sf.write(audio / f"clip{i}.wav", x.astype(np.float32), 32000)
        (audio / f"clip{i}.json").write_text(json.dumps({"description": f"tone {i}"}))
    prepare(audio, folder / "shards", sample_rate=32000, channels=1, shard_size=3, workers=1, progress=False)


def demo_lm_override(tmp: Path, steps: int, ckpt_every: int, devices: int, extra_callbacks: str = "") -> Path:
    """A config composed after configs/demo/musicgen.yaml: synthetic token shards (4 x 64 codes),
    no codec checkpoint, checkpoints under `tmp`, the callbacks of ddp.yaml, no validation."""
    from test_lm_module import write_token_shards
    if not (tmp / "train").exists():
        write_token_shards(tmp / "train", 48, 100, 64, seed=0)
    cfg = tmp / "demo_override.yaml"
    cfg.write_text(f"""
trainer:
  accelerator: cpu
  devices: {devices}
  max_steps: {steps}
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  default_root_dir: {tmp}
  logger:
    - class_path: lightning_musicgen.training.ResumableWandbLogger
      init_args: {{project: lightning_musicgen, save_dir: {tmp}, offline: true}}
    - class_path: lightning.pytorch.loggers.CSVLogger    # readable copy of what W&B receives
      init_args: {{save_dir: {tmp}, name: csv, version: 0}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: {ckpt_every}, save_top_k: -1}}
    - lightning_musicgen.training.RNGStateCheckpoint
    - lightning_musicgen.training.PreemptionCheckpoint
    - class_path: lightning_musicgen.training.AudioThroughputMonitor
      init_args: {{window_size: 2}}
    - lightning_musicgen.training.LogConfig
{extra_callbacks}
model:
  init_args:
    lm: {{n_q: 4, card: 64, dim: 64, num_layers: 2}}
    codec_checkpoint: null
    warmup_steps: 2
data:
  class_path: lightning_musicgen.data.TokenDataModule
  init_args:
    train_shards: {tmp / 'train'}
    val_shards: null
    segment_duration: 1.0
    batch_size: 4
    num_workers: 0
    shuffle_buffer: 16
    epoch_steps: 10
""")
    return cfg


def fit(tmp: Path, run_id: str, configs: list[Path], *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [a for c in configs for a in ("--config", str(c))]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               WANDB_RUN_ID=run_id, WANDB_DIR=str(tmp), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "lightning_musicgen", "fit", *args, *extra], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_checkpoint(tmp: Path, run_id: str) -> dict:
    folder = tmp / "lightning_musicgen" / run_id / "checkpoints"
    return torch.load(max(folder.glob("last*.ckpt"), key=os.path.getmtime), weights_only=True)


def test_demo_lm_ddp_two_processes(own_tmp):
    cfg = demo_lm_override(own_tmp, steps=4, ckpt_every=2, devices=2)
    out = fit(own_tmp, "ddp", [*TRAIN, DEMO_LM, cfg])
    assert out.returncode == 0, out.stderr[-4000:]
    assert "MEMBER: 2/2" in out.stderr and "distributed_backend=gloo" in out.stderr
    ckpt = last_checkpoint(own_tmp, "ddp")
    assert ckpt["global_step"] == 4
    rng = next(v for k, v in ckpt["callbacks"].items() if "RNGStateCheckpoint" in k)
    assert len(rng["per_rank"]) == 2                                   # both ranks' generators are saved
    data_state = next(v for k, v in ckpt.items() if k.endswith("TokenDataModule"))
    assert data_state["batches_in_epoch"] == 4 and data_state["epoch"] == 0
    # the dashboard: metric names and groups, throughput consistent with the batch shape, the config
    rows = list(csv.DictReader(open(own_tmp / "csv" / "version_0" / "metrics.csv")))
    names = set(rows[0])
    assert {"train/samples_per_sec", "train/audio_sec_per_sec", "lm/tokens_per_sec", "train/grad_norm",
            "train/memory_gb", "train/loss"} <= names, sorted(names)
    last = [r for r in rows if r["train/samples_per_sec"]][-1]
    samples, tokens = float(last["train/samples_per_sec"]), float(last["lm/tokens_per_sec"])
    assert tokens == pytest.approx(samples * 4 * 50, rel=1e-6)        # 4 codebooks x 50 frames per sample
    assert float(last["train/audio_sec_per_sec"]) == pytest.approx(samples * 1.0, rel=1e-6)   # 1-s crops
    assert all(float(r["train/grad_norm"]) > 0 for r in rows if r["train/grad_norm"])
    hparams = yaml.safe_load(open(own_tmp / "csv" / "version_0" / "hparams.yaml"))
    assert hparams["config"]["model"]["class_path"] == "lightning_musicgen.lm.MusicGenModule"
    assert hparams["config"]["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"


def test_demo_lm_sigkill_then_resume_equals_uninterrupted(own_tmp):
    """Fixed seeds and the data module's deterministic order: killed at step 5 (mid-epoch, last
    checkpoint at step 4), resumed with --ckpt_path last, the weights at step 7 equal the
    uninterrupted run's."""
    steps = 8
    ref_dir, run_dir = own_tmp / "ref", own_tmp / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = fit(ref_dir, "ref", [*TRAIN, DEMO_LM, demo_lm_override(ref_dir, steps, 4, devices=1)])
    assert ref.returncode == 0, ref.stderr[-4000:]
    killer = "    - class_path: test_resume.KillAtStep\n      init_args: {step: 6}\n"
    killed = fit(run_dir, "run", [*TRAIN, DEMO_LM, demo_lm_override(run_dir, steps, 4, 1, killer)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert last_checkpoint(run_dir, "run")["global_step"] == 4
    resumed = fit(run_dir, "run", [*TRAIN, DEMO_LM, demo_lm_override(run_dir, steps, 4, devices=1)],
                  "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "train start: global_step=4" in resumed.stderr
    a, b = last_checkpoint(ref_dir, "ref"), last_checkpoint(run_dir, "run")
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for idx, state in a["optimizer_states"][0]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer_states"][0]["state"][idx]["exp_avg"]), idx


def test_demo_codec_ddp_two_processes(own_tmp):
    """The GAN codec (manual optimisation, 2 optimizers: global_step counts both) with ddp_codec.yaml."""
    write_audio_shards(own_tmp)
    cfg = own_tmp / "codec_override.yaml"
    cfg.write_text(f"""
trainer:
  accelerator: cpu
  devices: 2
  max_steps: 4
  limit_val_batches: 0
  enable_progress_bar: false
  default_root_dir: {own_tmp}
  logger:
    class_path: lightning_musicgen.training.ResumableWandbLogger
    init_args: {{project: lightning_musicgen, save_dir: {own_tmp}, offline: true}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: 2}}
    - lightning_musicgen.training.RNGStateCheckpoint
    - lightning_musicgen.training.AudioThroughputMonitor
    - class_path: test_ddp.DumpWeights
      init_args: {{folder: {own_tmp}}}
model:
  init_args:
    adversarial_warmup_steps: 1
data:
  init_args:
    train_shards: {own_tmp / 'shards'}
    val_shards: null
    batch_size: 2
    num_workers: 0
    epoch_steps: 10
""")
    out = fit(own_tmp, "codec", [*TRAIN, ROOT / "configs/trainer/ddp_codec.yaml", DEMO_CODEC, cfg])
    assert out.returncode == 0, out.stderr[-4000:]
    assert "MEMBER: 2/2" in out.stderr
    assert last_checkpoint(own_tmp, "codec")["global_step"] == 4
    r0, r1 = torch.load(own_tmp / "rank0.pt"), torch.load(own_tmp / "rank1.pt")
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key      # gradients all-reduced: the replicas stay equal
    assert any("discriminator" in k for k in r0) and any("quantizer" in k or "rvq" in k.lower() for k in r0)


def test_compile_layers_in_place_keeps_checkpoints_and_outputs():
    """configs/trainer/compile.yaml's callback: every DecoderLayer compiled in place (dynamo traced;
    the `aot_eager` backend keeps the test fast), parameter names unchanged, same loss and gradients."""
    from lightning.pytorch import LightningModule

    from lightning_musicgen.training import CompileLayers
    from lightning_musicgen.lm.model import MusicGenLM

    class Holder(LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = MusicGenLM(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, cross_attention=False)

    torch.manual_seed(0)
    eager, compiled = Holder(), Holder()
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    cb = CompileLayers(backend="aot_eager")
    cb.setup(None, compiled, "fit")
    assert cb.compiled == 2 and list(compiled.state_dict()) == keys
    assert all(layer._compiled_call_impl is not None for layer in compiled.lm.transformer.layers)
    codes = torch.randint(0, 32, (2, 4, 10))
    loss_e, loss_c = eager.lm.loss(codes)[0], compiled.lm.loss(codes)[0]
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e)
    for (name, pe), (_, pc) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, msg=name)
    with pytest.raises(ValueError, match="no module of"):
        CompileLayers(layer_classes=["lightning_musicgen.lm.DecoderLayer"]).setup(
            None, LightningModule(), "fit")
