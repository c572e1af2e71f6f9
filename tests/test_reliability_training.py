"""Reliability of training runs (issue cases 1, 3, 4, 5), through the real CLI in subprocesses on tiny data:
long captions are truncated (fit, validation, generate), every trainer config writes checkpoints atomically,
non-finite steps are skipped and stop the run,
signals checkpoint and exit non-zero, a SIGKILLed demo LM resumes to the weights of an uninterrupted run.

`lm_fit` runs configs/trainer/default.yaml + configs/demo/musicgen.yaml + a small override (tiny LM on
synthetic token shards); the other reliability test modules import it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback

from conftest import ROOT, run_cli_batch

TRAIN_DEFAULT = ROOT / "configs/trainer/default.yaml"
DEMO_LM = ROOT / "configs/demo/musicgen.yaml"
CARD = 32


def write_tokens(folder: Path, n: int = 12, frames: int = 60, caption=lambda i: f"a scale, take {i % 3}",
                 seed: int = 0) -> Path:
    """One token shard of `n` samples (4 x `frames` codes below CARD, 50 Hz) with an index."""
    import io

    from lightning_musicgen.data.shards import AtomicShardWriter, write_index
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with AtomicShardWriter(folder / "shard-000000.tar") as w:
        for i in range(n):
            codes = (np.arange(frames)[None, :] + rng.integers(0, 3, (4, 1))) % CARD
            buf = io.BytesIO()
            np.save(buf, codes.astype(np.int16))
            meta = {"description": caption(i), "frame_rate": 50.0, "n_q": 4, "card": CARD}
            w.write(f"clip{i:04d}", {"codes.npy": buf.getvalue(), "json": json.dumps(meta).encode()})
    write_index(folder, [{"name": "shard-000000.tar", "samples": n, "duration": n * frames / 50}], [])
    return folder


def tiny_codec(path: Path) -> Path:
    """A random 4 x CARD codec checkpoint (decoding for `generate`; n_q/card for the LM)."""
    from lightning_musicgen.codec.model import CodecConfig, CompressionModel
    from lightning_musicgen.model_files.codec import save_codec
    torch.manual_seed(0)
    config = CodecConfig(sample_rate=8000, dimension=8, n_filters=2, ratios=(4, 4, 2, 2), lstm_layers=0,
                         n_q=4, card=CARD, kmeans_init=False)
    return save_codec(CompressionModel(config), path)


def lm_override(tmp: Path, steps: int, ckpt_every: int = 2, callbacks: str = "", model: str = "",
                data: str = "", trainer: str = "", logger: str = "false", val_shards=None, val_batches: int = 0,
                codec=None, workers: int = 0) -> Path:
    cfg = tmp / "override.yaml"
    cfg.write_text(f"""
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: {steps}
  limit_val_batches: {val_batches}
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {tmp}
  logger: {logger}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp / 'ckpt'}, save_last: true, every_n_train_steps: {ckpt_every}, save_top_k: -1}}
{callbacks}
{trainer}
model:
  init_args:
    lm: {{n_q: 4, card: {CARD}, dim: 32, num_heads: 2, num_layers: 1}}
    codec_checkpoint: {codec or 'null'}
    warmup_steps: 2
{model}
data:
  init_args:
    train_shards: {tmp / 'train'}
    val_shards: {val_shards or 'null'}
    segment_duration: 0.4
    batch_size: 2
    num_workers: {workers}
    shuffle_buffer: 4
    epoch_steps: 8
{data}
""")
    return cfg


def lm_fit(tmp: Path, cfg: Path, *extra: str, wait: bool = True, timeout: float = 600):
    """`fit` with default.yaml + the demo LM + `cfg` in a subprocess (PYTHONPATH also holds tests/)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", WANDB_DIR=str(tmp), WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "lightning_musicgen", "fit", "--config", str(TRAIN_DEFAULT), "--config",
           str(DEMO_LM), "--config", str(cfg), *map(str, extra)]
    if not wait:
        log = open(tmp / "fit.log", "w")
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


# ---------------------------------------------------------------------------------------------
# case 1: captions longer than the text encoder's maximum
def test_long_captions_are_truncated_in_fit_validation_and_generate(own_tmp):
    long_caption = lambda i: " ".join(f"word{j}" for j in range(10_000))  # noqa: E731  (MiniLM takes 512 tokens)
    write_tokens(own_tmp / "train", caption=long_caption)
    write_tokens(own_tmp / "valid", n=4, caption=long_caption, seed=1)
    codec = tiny_codec(own_tmp / "codec.pt")
    cfg = lm_override(own_tmp, steps=3, ckpt_every=3, trainer="  val_check_interval: 3", val_batches=1,
                      val_shards=own_tmp / "valid", codec=codec)
    fit = lm_fit(own_tmp, cfg)
    assert fit.returncode == 0, fit.stderr[-3000:]
    warning = "was truncated"
    assert fit.stderr.count(warning) == 1, fit.stderr[-3000:]   # training and validation: one warning
    assert "longer than 512 tokens" in fit.stderr

    gen = subprocess.run([sys.executable, "-m", "lightning_musicgen", "generate", "--ckpt", own_tmp / "ckpt/last.ckpt",
                          "--text", long_caption(0), "--duration", "0.1", "--seed", "0", "--out", own_tmp / "gen"],
                         cwd=own_tmp, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stderr.count(warning) == 1, gen.stderr[-3000:]
    assert list((own_tmp / "gen").glob("*.wav"))


def test_text_conditioner_truncates_to_the_encoder_limit():
    from lightning_musicgen.lm.conditioners import TextConditioner
    text = TextConditioner("minilm", dim=16).eval()
    assert text.max_tokens == 512
    with pytest.warns(UserWarning, match="truncated") as caught:
        emb, mask = text(["short", " ".join(["la"] * 3000)])
        text(["another " * 2000])                       # silent the second time
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert emb.shape[1] == 512 and mask[1].all() and mask[0].sum() < 10
    exactly = " ".join(["la"] * 510)                     # 510 words + [CLS] + [SEP] = 512: not cut, no warning
    fresh = TextConditioner("minilm", dim=16).eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh([exactly])[1].sum() == 512


# ---------------------------------------------------------------------------------------------
# case 3: every trainer config, as composed in the docs, writes checkpoints through AtomicCheckpointIO
TRAINER_CONFIGS = sorted(p.name for p in (ROOT / "configs/trainer").glob("*.yaml"))
CHAINS = [["default.yaml", name] for name in TRAINER_CONFIGS] + [["ddp.yaml"], ["fsdp.yaml"]]  # `submit` examples


def test_every_trainer_config_writes_checkpoints_atomically():
    """A config that sets `trainer.plugins` replaces default.yaml's list: each must keep AtomicCheckpointIO."""
    assert {"default.yaml", "ddp.yaml", "fsdp.yaml"} <= set(TRAINER_CONFIGS)
    argvs = [["fit", "--print_config", *[a for name in chain for a in ("--config", f"configs/trainer/{name}")],
              "--config", "configs/demo/musicgen.yaml"] for chain in CHAINS]
    for chain, res in zip(CHAINS, run_cli_batch(argvs)):
        assert res.returncode == 0, (chain, res.stderr[-2000:])
        plugins = yaml.safe_load(res.stdout)["trainer"]["plugins"] or []
        assert [p["class_path"] for p in plugins] == ["lightning_musicgen.training.AtomicCheckpointIO"], (chain, plugins)


# ---------------------------------------------------------------------------------------------
# case 4: non-finite loss or gradients
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(own_tmp):
    """Steps 4, 5, 6 are NaN (max_consecutive 3): no checkpoint is written from step 5 on, the step-4 ones
    (written before its loss was seen) are set aside, last.ckpt links to the step-3 weights."""
    write_tokens(own_tmp / "train")
    guard = """    - class_path: lightning_musicgen.training.NonFiniteGuard
      init_args: {max_consecutive: 3}
    - class_path: test_reliability_training.PoisonLoss
      init_args: {from_step: 4}"""
    cfg = lm_override(own_tmp, steps=50, ckpt_every=1, callbacks=guard,
                      logger=f"\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {{save_dir: {own_tmp}, name: csv, version: 0}}")
    out = lm_fit(own_tmp, cfg)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and out.stderr.rstrip().splitlines()[-1] == lines[0], out.stderr[-3000:]
    folder = own_tmp / "ckpt"
    assert lines[0] == (
        "error: 3 training steps in a row had a non-finite loss or gradient (steps 4..6, optimizer steps skipped): "
        "the run diverged from step 4: 3 optimizer step(s) of the 3 training steps 4..6 had a non-finite loss or "
        f"gradient and were skipped; the last good weights are {folder / 'epoch=0-step=3.ckpt'} (step 3), which "
        f"{folder / 'last.ckpt'} now link(s) to; 2 checkpoint(s) of this run from step 4 on renamed *.diverged in "
        f"{folder} (epoch=0-step=4.ckpt.diverged, last.ckpt.diverged). Lower the learning rate or check the data, "
        "then resume from it")
    ckpts = {p.name: torch.load(p, weights_only=True) for p in folder.iterdir()}
    assert sorted(ckpts) == [f"epoch=0-step={i}.ckpt" for i in range(1, 4)] + [
        "epoch=0-step=4.ckpt.diverged", "last.ckpt", "last.ckpt.diverged"]   # none written during the streak
    assert (folder / "last.ckpt").stat().st_ino == (folder / "epoch=0-step=3.ckpt").stat().st_ino
    assert ckpts["last.ckpt"]["global_step"] == 3 and ckpts["last.ckpt.diverged"]["global_step"] == 4
    for name, ck in ckpts.items():
        assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point()), name
    assert not torch.equal(ckpts["epoch=0-step=2.ckpt"]["state_dict"]["lm.heads.0.weight"],
                           ckpts["epoch=0-step=3.ckpt"]["state_dict"]["lm.heads.0.weight"])   # finite steps train
    assert ckpts["last.ckpt.diverged"]["callbacks"]["NonFiniteGuard"]["skipped_steps"] == 0
    import csv
    rows = list(csv.DictReader(open(own_tmp / "csv/version_0/metrics.csv")))
    logged = [float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps")]
    assert logged[:4] == [0.0, 0.0, 0.0, 0.0] and logged[-1] == 2.0  # the stopping step is not flushed


def test_a_real_learning_rate_explosion_never_reaches_a_checkpoint(own_tmp):
    """lr 1e4 (AdamW steps of ~1e4 per weight): the run stops non-zero; no checkpoint is non-finite."""
    write_tokens(own_tmp / "train")
    cfg = lm_override(own_tmp, steps=200, ckpt_every=1, model="    lr: 1.0e+4\n    warmup_steps: 1",
                      callbacks="""    - class_path: lightning_musicgen.training.NonFiniteGuard
      init_args: {max_consecutive: 2}""")
    out = lm_fit(own_tmp, cfg)
    assert out.returncode != 0, out.stderr[-3000:]
    assert len(error_lines(out.stderr)) == 1, out.stderr[-3000:]
    for path in (own_tmp / "ckpt").glob("*.ckpt"):
        sd = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), path


def test_a_diverged_run_that_reaches_max_steps_fails_and_keeps_no_diverged_last_ckpt(own_tmp):
    """lr 1000 without warmup, 20 steps, max_consecutive (20) never reached: the loss explodes at step 1
    (finite, over 10x its running average), is non-finite from step 3 on; the run ends 1 with one line, and
    every checkpoint written from weights of step >= 1 is renamed *.diverged: no last.ckpt remains."""
    write_tokens(own_tmp / "train")
    cfg = lm_override(own_tmp, steps=20, ckpt_every=1,
                      logger=f"\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {{save_dir: {own_tmp}, name: csv, version: 0}}")
    out = lm_fit(own_tmp, cfg, "--model.init_args.lr=1000", "--model.init_args.warmup_steps=0",
                 "--trainer.max_steps=20")
    assert out.returncode == 1, out.stderr[-3000:]
    last_line = out.stderr.rstrip().splitlines()[-1]
    assert error_lines(out.stderr) == [last_line] and "Traceback" not in out.stderr, out.stderr[-3000:]
    import csv
    rows = [r for r in csv.DictReader(open(own_tmp / "csv/version_0/metrics.csv")) if r.get("train/loss")]
    loss = {int(r["step"]): float(r["train/loss"]) for r in rows}
    assert np.isfinite(loss[0]) and np.isfinite(loss[1]) and loss[1] > 10 * loss[0]   # what the rule detects
    assert not np.isfinite(loss[19])
    assert last_line.startswith("error: training ended (global step 20) while diverging: the run diverged from "
                                f"step 1: the loss rose to {loss[1]:.4g} at step 1 (over 10x its running average "
                                f"{loss[0]:.4g})"), last_line
    assert f"no checkpoint holds weights from before step 1" in last_line
    folder = own_tmp / "ckpt"
    assert not list(folder.glob("*.ckpt"))           # neither last.ckpt nor any other from a diverged state
    aside = sorted(p.name for p in folder.iterdir())
    assert "last.ckpt.diverged" in aside and all(name.endswith(".ckpt.diverged") for name in aside)
    steps = {name: torch.load(folder / name, weights_only=True)["global_step"] for name in aside}
    assert min(steps.values()) >= 1 and max(steps.values()) <= 3, steps   # nothing written once steps were skipped


def test_set_aside_diverged_renames_only_this_runs_diverged_checkpoints(tmp_path):
    from lightning_musicgen.training.checkpoint_io import checkpoint_step, set_aside_diverged

    def save(name, step, mtime=None):
        torch.save({"global_step": step, "state_dict": {"w": torch.full((2,), float(step))}}, tmp_path / name)
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    old = time.time() - 3600
    save("epoch=0-step=9.ckpt", 9, mtime=old)   # an earlier run's, although "diverged" by step: not touched
    save("epoch=0-step=2.ckpt", 2)
    save("epoch=0-step=4.ckpt", 4)
    save("epoch=0-step=5.ckpt", 5)
    save("last.ckpt", 5)
    os.symlink("epoch=0-step=5.ckpt", tmp_path / "best.ckpt")
    (tmp_path / "epoch=0-step=5.ckpt.diverged").write_text("an earlier run's: kept")
    result = set_aside_diverged(tmp_path, first_bad_step=4, written_since=old + 60)
    assert sorted(result.moved) == ["best.ckpt (a link)", "epoch=0-step=4.ckpt.diverged",
                                    "epoch=0-step=5.ckpt.diverged-1", "last.ckpt.diverged"]
    assert (tmp_path / "epoch=0-step=5.ckpt.diverged").read_text() == "an earlier run's: kept"
    assert checkpoint_step(tmp_path / "epoch=0-step=9.ckpt") == 9
    # the newest checkpoint from before step 4 is step 2; last.ckpt is a hard link to it
    assert result.good == str(tmp_path / "epoch=0-step=2.ckpt") and result.good_step == 2
    assert (tmp_path / "last.ckpt").stat().st_ino == (tmp_path / "epoch=0-step=2.ckpt").stat().st_ino
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=2.ckpt", "epoch=0-step=9.ckpt",
                                                               "last.ckpt"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_nonfinite_gradient_under_a_finite_loss_is_skipped_before_clipping(tmp_path):
    """The gradient path alone: a backward hook turns the gradients of steps 2 and 3 into NaN while the
    loss stays finite; gradient clipping (as in default.yaml) must not hide them."""
    import lightning as L

    from lightning_musicgen.training import NonFiniteGuard
    from test_resume import ToyData, ToyRegression

    class PoisonGrads(Callback):
        def __init__(self):
            self.weights, self.losses_finite = {}, []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.weights[trainer.global_step] = pl_module.net[0].weight.detach().clone()
            bad = trainer.global_step in (2, 3)
            for p in pl_module.parameters():
                for handle in getattr(p, "_test_hooks", []):
                    handle.remove()
                p._test_hooks = [p.register_hook(lambda g: g * float("nan"))] if bad else []

        def on_before_backward(self, trainer, pl_module, loss):
            self.losses_finite.append(bool(torch.isfinite(loss)))

    torch.manual_seed(0)
    guard, poison = NonFiniteGuard(max_consecutive=3), PoisonGrads()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, gradient_clip_val=1.0,
                        default_root_dir=tmp_path, callbacks=[guard, poison])
    module = ToyRegression(total_steps=6, lr=0.05)
    module.net[2].p = 0.0  # no dropout: the only change of a step is the optimizer's
    trainer.fit(module, datamodule=ToyData())
    assert all(poison.losses_finite) and guard.skipped_steps == 2 and guard.consecutive == 0
    w = poison.weights
    assert not torch.equal(w[1], w[2]) and not torch.equal(w[4], w[5])   # finite steps train
    assert torch.equal(w[2], w[3]) and torch.equal(w[3], w[4])           # skipped steps change nothing
    assert torch.isfinite(module.net[0].weight).all()


class PoisonLoss(Callback):
    """Imported by the subprocess through the config: from optimizer step `from_step` on, the LM's loss
    is multiplied by NaN (a real non-finite loss flowing through backward)."""

    def __init__(self, from_step: int):
        self.from_step = from_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.from_step and not hasattr(pl_module.lm, "_poisoned"):
            real = pl_module.lm.loss

            def poisoned(*args, **kwargs):
                loss, per_codebook = real(*args, **kwargs)
                return loss * float("nan"), per_codebook
            pl_module.lm.loss, pl_module.lm._poisoned = poisoned, True


# ---------------------------------------------------------------------------------------------
# case 5: signals and exact resume
def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {text!r}: {path.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timeout waiting for {text!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_exits_non_zero(own_tmp, signum, monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    write_tokens(own_tmp / "train")
    slow = """    - class_path: test_resume.SlowDown
      init_args: {seconds: 0.3}"""
    cfg = lm_override(own_tmp, steps=10_000, ckpt_every=10_000, callbacks=slow)
    proc = lm_fit(own_tmp, cfg, wait=False)
    _wait_for(own_tmp / "fit.log", "train start: global_step=0", proc)
    time.sleep(1.5)
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    log = (own_tmp / "fit.log").read_text()
    assert code == 128 + signum, log[-3000:]
    assert f"signal {signum.name}: saved" in log, log[-3000:]
    ckpt = torch.load(own_tmp / "ckpt/last.ckpt", weights_only=True)
    assert 0 < ckpt["global_step"] < 100
    # the run resumes from it
    cfg = lm_override(own_tmp, steps=ckpt["global_step"] + 2, ckpt_every=10_000)
    resumed = lm_fit(own_tmp, cfg, "--ckpt_path", own_tmp / "ckpt/last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"train start: global_step={ckpt['global_step']}" in resumed.stderr


def test_sigkill_and_resume_of_the_demo_lm_equals_an_uninterrupted_run(own_tmp):
    """default.yaml + configs/demo/musicgen.yaml (its callback list replaces default.yaml's: the RNG
    states come from the callbacks every fit of the module gets). CFG and word dropout draw from the
    global generators, so without RNG states the resumed weights differ."""
    from test_resume import KillAtStep  # noqa: F401  (imported by the subprocess)
    write_tokens(own_tmp / "train", n=16)
    steps = 8   # a multiple of the checkpoint interval: last.ckpt holds the final weights
    for run in ("ref", "run"):
        write_tokens(own_tmp / run / "train", n=16)
    ref = lm_fit(own_tmp / "ref", lm_override(own_tmp / "ref", steps=steps, ckpt_every=2))
    assert ref.returncode == 0, ref.stderr[-3000:]
    kill = """    - class_path: test_resume.KillAtStep
      init_args: {step: 5}"""
    killed = lm_fit(own_tmp / "run", lm_override(own_tmp / "run", steps=steps, ckpt_every=2, callbacks=kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(own_tmp / "run/ckpt/last.ckpt", weights_only=True)["global_step"] == 4
    resumed = lm_fit(own_tmp / "run", lm_override(own_tmp / "run", steps=steps, ckpt_every=2), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train start: global_step=4" in resumed.stderr
    a = torch.load(own_tmp / "ref/ckpt/last.ckpt", weights_only=True)
    b = torch.load(own_tmp / "run/ckpt/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
