"""Codec training: a short fit lowers the mel distance, checkpoints load, logging works, 2-process DDP stays in sync.

Run as a script (`python tests/test_codec_train.py --ddp-worker OUT`) it is the DDP worker that
`test_ddp_replicas_stay_identical` launches (Lightning starts the second rank itself).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT  # noqa: E402
from lightning_musicgen.model_files.codec import load_codec

SR = 8000


pytestmark = pytest.mark.usefixtures("one_thread")


def harmonic_clips(n: int, seconds: float, seed: int) -> torch.Tensor:
    """[n, 1, T] clips of two harmonic notes with vibrato-free decaying envelopes (music-like)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    clips = torch.zeros(n, 1, t.numel())
    half = t.numel() // 2
    for i in range(n):
        for j in range(2):
            f0 = 110 * 2 ** (int(torch.randint(0, 30, (1,), generator=g)) / 12)
            seg = t[:half]
            tone = sum(torch.sin(2 * math.pi * f0 * k * seg + float(torch.rand(1, generator=g)) * 6) / k
                       for k in range(1, 5))
            clips[i, 0, j * half:(j + 1) * half] = 0.25 * torch.exp(-2 * seg) * tone
    return clips


def tiny_module(**overrides):
    from lightning_musicgen.codec import CodecConfig, CodecModule
    codec = CodecConfig(sample_rate=SR, n_filters=8, ratios=(4, 4, 2), dimension=32, n_q=4, card=64,
                        lstm_layers=1, kmeans_iters=5)
    kwargs = dict(codec=codec, discriminator_kwargs={"filters": 8, "n_ffts": [256, 128]}, lr=2e-3,
                  adversarial_warmup_steps=30, gradient_clip_val=10.0, log_audio_every_n_steps=0)
    kwargs.update(overrides)
    return CodecModule(**kwargs)


class DictBatches(torch.utils.data.Dataset):
    """Wraps clips into the AudioDataModule batch layout."""

    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return {"wav": self.clips[i], "mask": torch.ones(self.clips.shape[-1], dtype=torch.bool)}


def test_short_fit_lowers_mel_distance_and_checkpoint_loads(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    torch.manual_seed(0)
    train = DataLoader(DictBatches(harmonic_clips(48, 0.5, seed=1)), batch_size=8, shuffle=True)
    held_out = harmonic_clips(8, 0.5, seed=2)
    module = tiny_module(log_audio_every_n_steps=40, ema_decay=0.9)

    def mel_dist(model):
        model.eval()
        with torch.no_grad():
            y, _ = model(held_out)
            return module.mel_distance(y, held_out).item()

    # step 0: after k-means initialisation only (one train-mode forward, no optimizer step)
    with torch.no_grad():
        module.generator.train()(held_out[:8])
    module.generator_ema.module.load_state_dict(module.generator.state_dict())
    before = mel_dist(module.generator)
    module.generator.train()  # Lightning keeps the train/eval mode of submodules as it finds them

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="test_codec")
    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=10, limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(module, train)
    assert trainer.global_step == 60  # one global step per batch, also with the discriminator running
    after = mel_dist(module.generator)
    print(f"mel distance: step 0 {before:.3f} -> step 60 {after:.3f}")
    assert after < 0.75 * before, (before, after)

    metrics = trainer.callback_metrics
    for key in ("train/l1", "train/msspec", "train/adv", "train/feat", "train/d_loss", "train/commit",
                "codec/balancer_scale_msspec", "codec/si_snr", "codec/mel_distance", "codec/usage_q0",
                "codec/perplexity_q3", "codec/dead_codes", "codec/bitrate_kbps"):
        assert key in metrics, key
    assert metrics["codec/bitrate_kbps"].item() == 4 * 6 * SR / 32 / 1000
    media = list(Path(tmp_path).rglob("media/audio/**/*.wav")) + list(Path(tmp_path).rglob("media/images/**/*.png"))
    assert any(p.suffix == ".wav" for p in media) and any(p.suffix == ".png" for p in media)

    # the Lightning checkpoint loads as a CompressionModel: EMA weights by default, raw on request
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)  # the config once, the EMA once
    assert saved["hyper_parameters"]["codec"] == module.codec_config.to_dict() and "codec_config" not in saved
    gen_keys = set(module.generator.state_dict())
    assert {k[len("generator_ema.module."):] for k in saved["state_dict"] if k.startswith("generator_ema.module.")} \
        == gen_keys and sum("ema" in k for k in saved["state_dict"]) == len(gen_keys) + 1  # + generator_ema.step
    raw = load_codec(ckpt, use_ema=False).eval()
    ema = load_codec(ckpt).eval()
    with torch.no_grad():
        assert torch.equal(raw.decode(raw.encode(held_out)), module.generator.eval().decode(
            module.generator.encode(held_out)))
        assert torch.equal(ema.encode(held_out), module.generator_ema.module.eval().encode(held_out))
    assert (raw.sample_rate, raw.frame_rate, raw.n_q, raw.card) == (SR, SR / 32, 4, 64)
    exported = module.export(tmp_path / "codec")
    assert torch.equal(load_codec(exported).encode(held_out), ema.encode(held_out))


def test_bf16_training_step_with_multi_period_discriminator():
    import lightning as L
    torch.manual_seed(0)
    module = tiny_module(adversarial_warmup_steps=0, discriminator="mpd",
                         discriminator_kwargs={"periods": [2, 3], "hidden": [8, 16]})
    train = DataLoader(harmonic_clips(8, 0.25, seed=3), batch_size=4)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", precision="bf16-mixed", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, train)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(p.dtype == torch.float32 for p in module.parameters())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["train/d_loss"])
    assert metrics["train/adv"] > 0 and metrics["train/feat"] > 0


def test_ddp_replicas_stay_identical(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    init = torch.load(tmp_path / "init.pt")
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # training did happen: weights and codebooks moved
    assert not torch.equal(states[0]["generator.decoder.layers.0.conv.parametrizations.weight.original1"],
                           init["generator.decoder.layers.0.conv.parametrizations.weight.original1"])
    assert not torch.equal(states[0]["generator.quantizer.layers.0.embed"], init["generator.quantizer.layers.0.embed"])
    disc_key = "discriminator.discriminators.0.conv_post.parametrizations.weight.original1"
    assert not torch.equal(states[0][disc_key], init[disc_key])
    seen = [torch.load(tmp_path / f"batches{r}.pt") for r in (0, 1)]
    assert not torch.equal(seen[0], seen[1])  # the ranks trained on different data


def _ddp_worker(out: Path) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy

    class Record(Callback):
        def __init__(self):
            self.first = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.first.append(batch[:, 0, :50].clone())

        def on_train_end(self, trainer, pl_module):
            rank = trainer.global_rank
            torch.save(pl_module.state_dict(), out / f"rank{rank}.pt")
            torch.save(torch.stack(self.first), out / f"batches{rank}.pt")

    torch.set_num_threads(1)
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    module = tiny_module(adversarial_warmup_steps=1)
    module.generator.quantizer.q_dropout = True
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        torch.save({k: v.clone() for k, v in module.state_dict().items()}, out / "init.pt")
    train = DataLoader(harmonic_clips(16, 0.25, seed=4), batch_size=2, shuffle=True)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=2,
                        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True),
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[Record()])
    trainer.fit(module, train)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ddp-worker":
        _ddp_worker(Path(sys.argv[2]))
