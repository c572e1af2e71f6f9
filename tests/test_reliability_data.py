"""Bad data never hangs, crashes or hides (issue cases 2 and 6, and the data part of case 4), and the
codec's GAN steps are guarded like the LM's (case 4): through the real CLI where the case is about it."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_reliability_training import CARD, error_lines, lm_fit, lm_override, write_tokens


def _codes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, (np.arange(60)[None, :] % CARD).repeat(4, 0).astype(np.int16))
    return buf.getvalue()


def _meta() -> bytes:
    return json.dumps({"description": "x", "frame_rate": 50.0, "n_q": 4, "card": CARD}).encode()


def _shard_folder(folder: Path, samples: list[dict], names=("shard-000000.tar",), index: bool = True) -> Path:
    from lightning_musicgen.data.shards import AtomicShardWriter, write_index
    folder.mkdir(parents=True)
    with AtomicShardWriter(folder / names[0]) as w:
        for i, files in enumerate(samples):
            w.write(f"s{i:03d}", files)
    if index:
        write_index(folder, [{"name": n, "samples": len(samples), "duration": 1.0} for n in names], [])
    return folder


# ---------------------------------------------------------------------------------------------
# case 2: no sample decodes -> one line within seconds, naming the shards and the reasons
@pytest.mark.parametrize("kind, workers, reason", [
    ("garbage members", 0, "unreadable codes"),
    ("no json members", 1, "no json member"),
    ("unreadable shards", 0, "unreadable shard"),
])
def test_no_decodable_sample_fails_fast_with_one_line(own_tmp, kind, workers, reason):
    train = own_tmp / "train"
    if kind == "garbage members":
        _shard_folder(train, [{"codes.npy": b"not numpy", "json": _meta()} for _ in range(6)])
    elif kind == "no json members":
        _shard_folder(train, [{"codes.npy": _codes()} for _ in range(6)])
    else:
        _shard_folder(train, [], names=("shard-000000.tar", "shard-000001.tar"))
        for name in ("shard-000000.tar", "shard-000001.tar"):
            (train / name).write_bytes(os.urandom(5000))
    cfg = lm_override(own_tmp, steps=20, workers=workers)
    out = lm_fit(own_tmp, cfg, timeout=600)  # (minutes only on a loaded machine: startup; the data part fails in seconds)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = error_lines(out.stderr)
    assert len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith("error: no usable training sample") and reason in errors[0], errors[0]
    assert str(train / "shard-000000.tar") in errors[0]
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------------
# case 6: skipped samples and missing shards are reported without extra configuration
def test_skipped_samples_and_missing_shards_are_reported(own_tmp):
    good = [{"codes.npy": _codes(), "json": _meta()} for _ in range(10)]
    bad = [{"codes.npy": b"garbage", "json": _meta()}, {"codes.npy": _codes()}]
    train = _shard_folder(own_tmp / "train", good[:5] + bad + good[5:], names=("shard-000000.tar", "shard-000001.tar"))
    cfg = lm_override(own_tmp, steps=6, ckpt_every=100,
                      logger=f"\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {{save_dir: {own_tmp}, name: csv, version: 0}}")
    out = lm_fit(own_tmp, cfg)
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    assert f"1 of 2 shard(s) named by {train} are missing ({train / 'shard-000001.tar'})" in err, err[-3000:]
    for reason in ("unreadable codes", "no json member", "missing shard"):
        assert err.count(f"skipped a training sample ({reason})") == 1, (reason, err[-3000:])
    assert "[lightning_musicgen] skipped " in err and "missing shard: " in err
    rows = list(csv.DictReader(open(own_tmp / "csv/version_0/metrics.csv")))
    logged = [float(r["train/skipped_samples"]) for r in rows if r.get("train/skipped_samples")]
    assert len(logged) == 6 and logged[-1] > 0


def test_a_shard_folder_without_index_is_used_with_a_warning(own_tmp):
    train = _shard_folder(own_tmp / "train", [{"codes.npy": _codes(), "json": _meta()} for _ in range(6)],
                          index=False)
    (train / "shard-000001.tar.tmp-4242").write_bytes(b"partial")   # what a killed `prepare` leaves
    out = lm_fit(own_tmp, lm_override(own_tmp, steps=2, ckpt_every=100))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{train} has no index.json (an interrupted `prepare`?): using its 1 *.tar shard(s)" in out.stderr
    assert "shard-000001.tar.tmp-4242" in out.stderr


# ---------------------------------------------------------------------------------------------
# case 4 (data): absurd peaks are dropped like NaNs, counted
def test_absurd_peaks_and_nans_are_skipped_and_counted(tmp_path):
    import soundfile as sf

    from lightning_musicgen.data.pipeline import AudioCrops, ValidStream
    from lightning_musicgen.data.shards import AtomicShardWriter

    def wav(x):
        buf = io.BytesIO()
        sf.write(buf, x.astype(np.float32), 8000, format="WAV", subtype="FLOAT")
        return buf.getvalue()
    tone = 0.5 * np.sin(np.arange(8000) / 5)
    members = {"a_good": tone, "b_huge": np.full(8000, 1e30), "c_nan": np.full(8000, np.nan), "d_loud": 5 * tone}
    with AtomicShardWriter(tmp_path / "s.tar") as w:
        for key, x in members.items():
            w.write(key, {"wav": wav(x), "json": json.dumps({"description": key}).encode()})
    batches = list(ValidStream([str(tmp_path / "s.tar")], AudioCrops(8000, 1, 0.5), 8))
    meta = batches[0]["meta"]
    assert [m["key"] for m in meta] == ["a_good", "d_loud"]       # 5x full scale is kept (max_peak 10)
    assert meta[-1]["skip_reasons"] == {"absurd peak": 1, "non-finite audio": 1}
    assert torch.isfinite(batches[0]["wav"]).all()
    strict = list(ValidStream([str(tmp_path / "s.tar")], AudioCrops(8000, 1, 0.5, max_peak=2.0), 8))
    assert [m["key"] for m in strict[0]["meta"]] == ["a_good"]


# ---------------------------------------------------------------------------------------------
# case 4 (codec): the GAN's discriminator and generator steps are guarded
def test_codec_gan_steps_with_nonfinite_losses_are_skipped_and_stop_the_run(tmp_path, monkeypatch):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    import lightning_musicgen.codec.module as codec_module
    from lightning_musicgen.training import AtomicCheckpointIO, NonFiniteGuard
    from test_codec_train import DictBatches, harmonic_clips, tiny_module

    torch.manual_seed(0)
    real_d_loss = codec_module.discriminator_loss
    poison = {"from": 3}

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            poison["active"] = trainer.global_step >= poison["from"]

    def d_loss(real, fake, *args, **kwargs):  # the discriminator diverges from step 3 on; the generator's stay finite
        loss = real_d_loss(real, fake, *args, **kwargs)
        return loss * float("nan") if poison.get("active") else loss
    monkeypatch.setattr(codec_module, "discriminator_loss", d_loss)

    module = tiny_module(adversarial_warmup_steps=0)
    guard = NonFiniteGuard(max_consecutive=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=50, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
                        callbacks=[guard, Poison(), ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1,
                                                                    save_top_k=-1)])
    loader = torch.utils.data.DataLoader(DictBatches(harmonic_clips(16, 0.25, seed=1)), batch_size=4)
    with pytest.raises(SystemExit, match="3 training steps in a row had a non-finite loss"):
        trainer.fit(module, loader)
    assert trainer.global_step == 6 and guard.skipped_steps == 3    # the discriminator steps of steps 3..5
    # nothing written during the streak; the step-3 checkpoint (weights whose loss was NaN) is set aside
    assert sorted(p.name for p in tmp_path.glob("epoch=*")) == [
        "epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt.diverged"]
    step3 = torch.load(next(tmp_path.glob("epoch=*-step=3.ckpt.diverged")), weights_only=True)["state_dict"]
    now = module.state_dict()
    disc = [k for k in step3 if k.startswith("discriminator.")]
    gen = [k for k in step3 if k.startswith("generator.") and step3[k].is_floating_point()]
    assert all(torch.equal(step3[k], now[k]) for k in disc)                  # skipped: unchanged
    assert any(not torch.equal(step3[k], now[k]) for k in gen)               # finite: trained
    assert all(torch.isfinite(v).all() for v in now.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------
# case 2: every signal that should end a process ends it, even when the data loader is stuck
def test_sigterm_ends_a_run_whose_data_loader_never_returns(own_tmp):
    import signal
    import time
    from test_reliability_training import DEMO_LM, TRAIN_DEFAULT, _wait_for
    cfg = lm_override(own_tmp, steps=20, callbacks="""    - class_path: lightning_musicgen.training.PreemptionCheckpoint
      init_args: {stall_timeout: 5}""")
    cfg.write_text(cfg.read_text().replace(f"train_shards: {own_tmp / 'train'}", "train_shards: 'pipe:sleep 900'"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(own_tmp / "fit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lightning_musicgen", "fit", "--config", str(TRAIN_DEFAULT),
                             "--config", str(DEMO_LM), "--config", str(cfg)], cwd=own_tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(own_tmp / "fit.log", "TPU available", proc)   # the trainer is set up; the loader then blocks
        time.sleep(10)
        assert proc.poll() is None, "blocked in the data loader"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        try:  # the run's process group: what is left of it (the `sleep` of the pipe)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = (own_tmp / "fit.log").read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "no training step finished within 5 s, exiting without a checkpoint" in text
