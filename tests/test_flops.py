"""lightning_musicgen.flops against torch's FlopCounterMode (one forward + backward of a tiny LM, both ways
of conditioning; of a tiny codec, three SEANet shapes), MusicGenModule.flops_per_batch after a real training
step, `train/mfu` from AudioThroughputMonitor = model FLOP/s over the given peak (per rank also with two ranks;
for a codec run too), and the peak table that replaces Lightning's for bf16 on the GPUs it names."""
from __future__ import annotations

import csv
import types

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lightning_musicgen.training import throughput
from lightning_musicgen.flops import codec_forward_flops, codec_train_flops, lm_train_flops, peak_flops
from lightning_musicgen.lm.conditioners import LMConditions
from lightning_musicgen.lm.model import MusicGenLM

DIM, B, FRAMES, COND = 32, 2, 12, 5


def counted_train_flops(lm: MusicGenLM, codes: torch.Tensor, conditions: LMConditions) -> int:
    # the math SDPA backend: its matmuls are visible to the counter (the fused CPU kernel is not counted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        lm.loss(codes, conditions)[0].backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("cross_len, prefix_len", [(COND, 0), (0, COND), (COND, 3)])
def test_lm_train_flops_equal_torch_flop_counter(cross_len, prefix_len):
    """Text by cross-attention (MusicGen), everything prepended (no cross-attention), and both (a melody
    prefix on a cross-attention LM)."""
    torch.manual_seed(0)
    lm = MusicGenLM(n_q=4, card=64, dim=DIM, num_heads=4, num_layers=2, ffn_dim=48, cross_attention=cross_len > 0)
    codes = torch.randint(0, 64, (B, 4, FRAMES))
    # in training the conditioner's projection is trained: the conditions need gradients
    cross = torch.randn(B, cross_len, DIM, requires_grad=True) if cross_len else None
    prefix = torch.randn(B, prefix_len, DIM, requires_grad=True) if prefix_len else None
    conditions = LMConditions(cross, None if cross is None else torch.ones(B, cross_len, dtype=torch.bool), prefix)
    expected = counted_train_flops(lm, codes, conditions)
    assert lm_train_flops(lm.config, B, lm.pattern.num_steps(FRAMES), cross_len, prefix_len) == \
        pytest.approx(expected, rel=0.02)


def test_module_flops_per_batch_counts_the_step_it_ran(tmp_path):
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(lm={"n_q": 4, "card": 32, "dim": DIM, "num_heads": 4, "num_layers": 2},
                            conditioner={"text": {"name": "minilm"}, "cfg_dropout": 0.0}, warmup_steps=1)
    batch = {"codes": torch.randint(0, 32, (3, 4, FRAMES)), "mask": torch.ones(3, FRAMES, dtype=torch.bool),
             "text": ["calm piano", "a choir singing over strings", "drums"], "meta": [{}] * 3}
    assert module.flops_per_batch(batch) is None  # no step yet
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, loader)
    module.conditioner.eval()  # no dropout: the same conditions as the training step
    text = module.conditions(batch)  # the LM's part only: cut the graph before the conditioner's projection
    conditions = LMConditions(cross=text.cross.detach().requires_grad_(), cross_mask=text.cross_mask)
    expected = counted_train_flops(module.lm, batch["codes"], conditions)
    assert module.flops_per_batch(batch) == pytest.approx(expected, rel=0.02)


class FlopsModule(L.LightningModule):
    """A model that says it costs 6e9 FLOPs per sample."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["wav"].mean(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def flops_per_batch(self, batch):
        return 6_000_000_000 * batch["wav"].shape[0]


def fit_with_clock(tmp_path, monkeypatch, module=None, batches=None, sample_rate=8, **monitor) -> list[dict]:
    clock = iter(range(1, 1000))  # every perf_counter() of the monitor is 0.5 s after the previous one
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: 0.5 * next(clock)))
    batches = batches or [{"wav": torch.randn(4, 1, 8)} for _ in range(8)]
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version=0)
    monitor = throughput.AudioThroughputMonitor(sample_rate=sample_rate, window_size=3, **monitor)
    trainer = L.Trainer(max_steps=len(batches), accelerator="cpu", logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[monitor])
    trainer.fit(module or FlopsModule(), torch.utils.data.DataLoader(batches, batch_size=None))
    return list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))


def test_mfu_is_model_flops_per_second_over_the_peak(tmp_path, monkeypatch):
    rows = [r for r in fit_with_clock(tmp_path, monkeypatch, available_flops=1e12) if r.get("train/mfu")]
    assert rows, "no train/mfu logged"
    # 4 x 6e9 FLOPs per batch, one batch per 0.5 s: 4.8e10 FLOP/s over a 1e12 FLOP/s peak
    assert all(float(r["train/mfu"]) == pytest.approx(4 * 6e9 / 0.5 / 1e12, rel=1e-6) for r in rows)  # logged as float32


def test_no_mfu_when_the_peak_is_unknown(tmp_path, monkeypatch):
    rows = fit_with_clock(tmp_path, monkeypatch)  # CPU: Lightning knows no peak
    assert any(r.get("train/samples_per_sec") for r in rows)
    assert not any(r.get("train/mfu") for r in rows)


@pytest.mark.parametrize("overrides", [
    dict(lstm_layers=2),  # MusicGen's shape, small
    dict(lstm_layers=1, true_skip=False, n_residual_layers=2, compress=4, channels=2),  # conv shortcuts, stereo
    dict(lstm_layers=0, ratios=(5, 3)),  # no LSTM, odd ratios (ceil lengths)
])
def test_codec_flops_equal_torch_flop_counter(overrides):
    """Forward: exact. Training step: the counter sees no input gradient for the first convolution (the
    waveform needs none) and no hidden-state gradient at the LSTM's first step, which the 3x convention
    counts: within 2 %."""
    from lightning_musicgen.codec.model import CodecConfig, CompressionModel
    torch.manual_seed(0)
    config = CodecConfig(**{**dict(dimension=16, n_filters=4, ratios=(4, 4, 2), n_q=3, card=64, kmeans_init=False),
                            **overrides})
    codec = CompressionModel(config).train()
    wav = torch.randn(2, config.channels, 1001)  # not a multiple of the hop: the padded lengths count
    # oneDNN's fused LSTM is invisible to the counter; torch's own kernel runs the same matmuls visibly
    with torch.backends.mkldnn.flags(enabled=False):
        with FlopCounterMode(display=False) as forward:
            codec(wav)
        with FlopCounterMode(display=False) as train:
            y, q = codec(wav)
            ((y - wav).abs().mean() + q.commit_loss).backward()
    assert codec_forward_flops(config, 2, 1001) == forward.get_total_flops()
    assert codec_train_flops(config, 2, 1001) == pytest.approx(train.get_total_flops(), rel=0.02)
    assert codec_train_flops(config.to_dict(), 2, 1001) == codec_train_flops(config, 2, 1001)


def test_codec_run_logs_mfu(tmp_path, monkeypatch):
    """A CodecModule fit logs `train/mfu` = its generator's model FLOPs per batch over the step time and peak."""
    from lightning_musicgen.codec import CodecConfig, CodecModule
    torch.manual_seed(0)
    codec = CodecConfig(sample_rate=8000, n_filters=4, ratios=(4, 4, 2), dimension=16, n_q=2, card=32,
                        lstm_layers=1, kmeans_iters=2)
    module = CodecModule(codec=codec, discriminator_kwargs={"filters": 4, "n_ffts": [256, 128]},
                         log_audio_every_n_steps=0)
    wavs = [{"wav": 0.1 * torch.randn(2, 1, 1600)} for _ in range(4)]
    rows = fit_with_clock(tmp_path, monkeypatch, module, wavs, sample_rate=8000, available_flops=1e12)
    mfu = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
    assert mfu, "no train/mfu logged for the codec run"
    expected = codec_train_flops(codec, 2, 1600) / 0.5 / 1e12  # one batch per 0.5 s of the fake clock
    assert module.flops_per_batch(wavs[0]) == codec_train_flops(codec, 2, 1600)
    assert all(m == pytest.approx(expected, rel=1e-6) for m in mfu)


def test_mfu_is_per_rank_with_two_ranks(monkeypatch):
    """Each rank counts its own batch's FLOPs; `train/mfu` is one rank's FLOP/s over one device's peak,
    whatever the world size (Lightning's meter scales the FLOPs it is given by the world size, then divides)."""
    clock = iter(range(1, 1000))
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: 0.5 * next(clock)))
    logged: dict[str, float] = {}
    module = types.SimpleNamespace(flops_per_batch=lambda batch: 6e9 * batch["wav"].shape[0],
                                   log=lambda name, value, **kw: logged.__setitem__(name, value))
    trainer = types.SimpleNamespace(precision="32-true", world_size=2, log_every_n_steps=1, global_step=0,
                                    strategy=types.SimpleNamespace(root_device=torch.device("cpu")))
    monitor = throughput.AudioThroughputMonitor(sample_rate=8, window_size=3, available_flops=1e12,
                                                log_grad_norm=False)
    monitor.setup(trainer, module, "fit")
    for step in range(5):
        trainer.global_step = step
        batch = {"wav": torch.randn(4, 1, 8)}
        monitor.on_train_batch_start(trainer, module, batch, step)
        monitor.on_train_batch_end(trainer, module, None, batch, step)
    assert logged["train/mfu"] == pytest.approx(4 * 6e9 / 0.5 / 1e12)
    assert logged["train/samples_per_sec"] == pytest.approx(2 * 4 / 0.5)  # all ranks together


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989.4), ("NVIDIA H100 NVL", 835.5),
                                          ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0)])
def test_peak_flops_uses_the_dense_bf16_table(monkeypatch, name, tflops):
    """Lightning's table knows no plain "NVIDIA H200" and gives the H100 NVL's sparse figure; this one is dense."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0), torch.bfloat16) == pytest.approx(tflops * 1e12)
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
