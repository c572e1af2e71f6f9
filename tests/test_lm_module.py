"""MusicGenModule: token and wav batches, checkpoints -> load_musicgen, a 2-process DDP step, and the
demo LM (configs/demo/musicgen.yaml) learning below the unigram baseline of its tokens."""
import io
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from conftest import ROOT
from lightning_musicgen.training.throughput import AudioThroughputMonitor
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.lm.module import MusicGenModule
from lightning_musicgen.model_files.codec import save_codec

TINY_LM = {"n_q": 4, "card": 32, "dim": 32, "num_heads": 4, "num_layers": 2}
MINILM = {"text": {"name": "minilm", "word_dropout": 0.3}, "cfg_dropout": 0.3}


def token_batches(n, B=4, T=20, card=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, T // 2:] = False
        out.append({"codes": torch.randint(0, card, (B, 4, T), generator=g), "mask": mask,
                    "text": ["calm piano", "fast drums", "", "a choir"][:B], "meta": [{}] * B})
    return loader(out)


def loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def trainer(tmp_path, **kw):
    return Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, **{"max_steps": 3, "enable_checkpointing": False, **kw})


def test_token_batches_train_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = MusicGenModule(lm=TINY_LM, conditioner=MINILM, lr=1e-3, warmup_steps=1, ema_decay=0.9)
    before = {k: v.clone() for k, v in module.lm.state_dict().items()}
    t = trainer(tmp_path, max_steps=3, limit_val_batches=1, val_check_interval=3, log_every_n_steps=1,
                callbacks=[AudioThroughputMonitor(frame_rate=50.0, window_size=2)])
    t.fit(module, train_dataloaders=token_batches(3), val_dataloaders=token_batches(1, seed=9))
    assert any(not torch.equal(before[k], v) for k, v in module.lm.state_dict().items())
    metrics = t.callback_metrics
    for key in ("train/loss", "train/ce_q3", "lm/ppl_q0", "lm/tokens_per_sec", "val/loss", "val/ce_q0", "val/ppl_q2"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    opt = t.optimizers[0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["weight_decay"] == 0.1
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in trained for p in module.conditioner.text.encoder.parameters())  # frozen T5/BERT
    assert all(id(p) not in trained for p in module.ema.parameters())
    # the Lightning checkpoint loads for inference, EMA weights by default
    path = tmp_path / "lm.ckpt"
    t.save_checkpoint(path)
    lm, cond, codec, cfg = load_musicgen(path)
    assert codec is None and cfg["lm"].card == 32 and cfg["weights"] == "ema"
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), module.ema.module.state_dict().values()))
    raw, _, _, _ = load_musicgen(path, use_ema=False)
    module.eval()
    batch = next(iter(token_batches(1, seed=5)))
    with torch.no_grad():
        c1, c2 = module.conditioner(batch["text"]), cond(batch["text"])
        torch.testing.assert_close(c1.cross, c2.cross)
        torch.testing.assert_close(raw(batch["codes"][..., :5], c2), module.lm(batch["codes"][..., :5], c1))


def test_wav_batches_are_encoded_by_the_frozen_codec(tmp_path):
    from lightning_musicgen.codec import CompressionModel
    from lightning_musicgen.codec.model import CodecConfig
    torch.manual_seed(0)
    codec = CompressionModel(CodecConfig(sample_rate=8000, dimension=8, n_filters=4, ratios=(4, 4), lstm_layers=0,
                                         n_q=2, card=16, kmeans_init=False))
    ckpt = save_codec(codec, tmp_path / "codec.pt")
    lm_cfg = {"dim": 32, "num_heads": 4, "num_layers": 1, "n_q": None, "card": None}
    module = MusicGenModule(lm=lm_cfg, conditioner=MINILM, codec_checkpoint=str(ckpt), warmup_steps=1)
    assert (module.lm.n_q, module.lm.card) == (2, 16)  # read from the codec
    mask = torch.ones(2, 1600, dtype=torch.bool)
    mask[1, 800:] = False
    batch = {"wav": torch.randn(2, 1, 1600), "mask": mask, "text": ["a", "b"], "meta": [{}, {}]}
    codes, frames = module.tokens(batch)
    assert torch.equal(codes, codec.eval().encode(batch["wav"]))
    assert frames.shape == (2, 100) and frames[0].all() and frames[1].sum() == 50
    assert module.tokens_per_batch(batch) is None  # no step yet
    t = trainer(tmp_path, max_steps=2, log_every_n_steps=1, callbacks=[AudioThroughputMonitor(8000, window_size=2)])
    t.fit(module, train_dataloaders=loader([batch, batch]))
    assert module.tokens_per_batch(batch) == 2 * 2 * 100  # B x K x F of the codes encoded in the step
    assert float(t.callback_metrics["lm/tokens_per_sec"]) > 0
    assert "codec" not in "".join(module.state_dict())  # frozen codec stays out of checkpoints
    lm, cond, codec2, cfg = load_musicgen(_save(t, tmp_path))
    assert codec2 is not None and cfg["codec_reference"]["absolute"] == str(ckpt.resolve())


def _save(t, tmp_path):
    path = tmp_path / "wav.ckpt"
    t.save_checkpoint(path)
    return path


def test_mismatched_conditioner_is_a_clear_error():
    with pytest.raises(ValueError, match="fuse"):
        MusicGenModule(lm={**TINY_LM, "cross_attention": False}, conditioner=MINILM)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning_musicgen.lm.module import MusicGenModule
    seed_everything(0)
    out = sys.argv[1]
    module = MusicGenModule(lm={"n_q": 4, "card": 32, "dim": 32, "num_heads": 4, "num_layers": 2},
                            conditioner={"text": {"name": "minilm"}, "cfg_dropout": 0.3}, warmup_steps=1, lr=1e-2)
    init = torch.cat([p.detach().flatten().clone() for p in module.lm.parameters()])
    class Data(torch.utils.data.Dataset):
        def __len__(self): return 8
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"codes": torch.randint(0, 32, (4, 12), generator=g), "mask": torch.ones(12, dtype=torch.bool),
                    "text": f"piece number {i}"}
    loader = torch.utils.data.DataLoader(Data(), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    final = torch.cat([p.detach().flatten() for p in module.lm.parameters()])
    torch.save({"rank": trainer.global_rank, "init": init, "final": final,
                "world": trainer.world_size}, f"{out}/rank{trainer.global_rank}.pt")
""")


def test_ddp_two_process_step_on_cpu(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world"] == 2 and r1["rank"] == 1
    assert torch.equal(r0["init"], r1["init"])  # same start
    assert not torch.equal(r0["init"], r0["final"])  # it trained
    assert torch.equal(r0["final"], r1["final"])  # gradients were all-reduced: replicas stay identical


# ---- demo: learns below the unigram baseline ------------------------------------------------------------
def structured_tokens(rng, frames, card):
    """A token clip with musical-ish structure: codebook 0 walks up by 1 or 2 (a "scale"), the finer
    codebooks are functions of it plus rare noise. Marginally near-uniform; predictable in context."""
    c0 = np.cumsum(rng.choice([1, 2], size=frames, p=[0.85, 0.15])) + rng.integers(card)
    codes = [c0 % card]
    for k in range(1, 4):
        noise = rng.random(frames) < 0.1
        codes.append(np.where(noise, rng.integers(0, card, frames), (c0 * (k + 1) + k) % card))
    return np.stack(codes).astype(np.int16)


def write_token_shards(folder, n, frames, card, seed):
    from lightning_musicgen.data.shards import AtomicShardWriter
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    clips = []
    with AtomicShardWriter(folder / "shard-000000.tar") as w:
        for i in range(n):
            codes = structured_tokens(rng, frames, card)
            clips.append(codes)
            buf = io.BytesIO()
            np.save(buf, codes)
            meta = {"description": f"an ascending scale, take {i % 5}", "frame_rate": 50.0, "n_q": 4,
                    "card": card, "duration": frames / 50.0}
            w.write(f"clip{i:04d}", {"codes.npy": buf.getvalue(), "json": json.dumps(meta).encode()})
    return np.stack(clips)


STEPS = 30


def test_demo_lm_beats_the_unigram_baseline(tmp_path):
    from lightning_musicgen.data import TokenDataModule
    cfg = yaml.safe_load((ROOT / "configs/demo/musicgen.yaml").read_text())["model"]["init_args"]
    card = 64
    lm_cfg = {**cfg["lm"], "n_q": 4, "card": card}
    write_token_shards(tmp_path / "train", 64, 50, card, seed=0)
    val = write_token_shards(tmp_path / "valid", 8, 50, card, seed=1)
    unigram = np.mean([-(p[p > 0] * np.log(p[p > 0])).sum() for p in
                       (np.bincount(val[:, k].ravel(), minlength=card) / val[:, k].size for k in range(4))])
    torch.manual_seed(0)
    module = MusicGenModule(lm=lm_cfg, conditioner=cfg["conditioner"], codec_checkpoint=None, lr=cfg["lr"],
                            betas=cfg["betas"], weight_decay=cfg["weight_decay"], warmup_steps=cfg["warmup_steps"],
                            min_lr_ratio=cfg["min_lr_ratio"])
    data = TokenDataModule(str(tmp_path / "train"), str(tmp_path / "valid"), segment_duration=1.0, batch_size=8,
                           num_workers=0, epoch_steps=STEPS, shuffle_buffer=32)
    t = trainer(tmp_path, max_steps=STEPS, limit_val_batches=None, val_check_interval=STEPS, precision="bf16-mixed")
    t.fit(module, datamodule=data)
    val_ce = float(t.callback_metrics["val/loss"])
    print(f"demo LM: val CE {val_ce:.3f} nats, unigram {unigram:.3f} nats")
    assert val_ce < 0.75 * unigram, (val_ce, unigram)


def test_melody_module_takes_chroma_from_the_training_crop(tmp_path):
    torch.manual_seed(0)
    module = MusicGenModule(lm={**TINY_LM, "cross_attention": False},
                            conditioner={"text": {"name": "minilm"}, "fuse": "prepend", "cfg_dropout": 0.0,
                                         "melody": {"sample_rate": 8000, "chroma_length": 6,
                                                    "n_fft": 1024, "hop_length": 256}}).eval()
    t = torch.arange(4000) / 8000
    tones = torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 330 * t)])[:, None]  # A4, E4
    batch = {"wav": tones, "codes": torch.randint(0, 32, (2, 4, 10)), "mask": torch.ones(2, 10, dtype=torch.bool),
             "text": ["same text", "same text"]}
    with torch.no_grad():
        cond = module.conditions(batch)
    chroma = module.conditioner.melody.chroma(tones)
    assert chroma[0].argmax(-1).mode().values == 9 and chroma[1].argmax(-1).mode().values == 4  # A and E bins
    assert cond.prefix.shape[1] == 6 + module.conditioner.text.tokenize(["same text"])["input_ids"].shape[1]
    assert not torch.equal(cond.prefix[0, :6], cond.prefix[1, :6]) and torch.equal(cond.prefix[0, 6:], cond.prefix[1, 6:])
    module.train()
    loss = module.lm.loss(batch["codes"], module.conditions(batch), batch["mask"])[0]
    loss.backward()
    assert module.conditioner.melody.proj.weight.grad.abs().sum() > 0  # the chroma projection trains
