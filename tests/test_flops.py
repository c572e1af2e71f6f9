"""lightning_musicgen.flops against torch's FlopCounterMode (one forward + backward of a tiny LM, both ways
of conditioning), MusicGenModule.flops_per_batch after a real training step, and `train/mfu` from
AudioThroughputMonitor = model FLOP/s over the given peak."""
from __future__ import annotations

import csv
import types

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lightning_musicgen.training import throughput
from lightning_musicgen.flops import lm_train_flops
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


def fit_with_clock(tmp_path, monkeypatch, **monitor) -> list[dict]:
    clock = iter(range(1, 1000))  # every perf_counter() of the monitor is 0.5 s after the previous one
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: 0.5 * next(clock)))
    batches = [{"wav": torch.randn(4, 1, 8)} for _ in range(8)]
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version=0)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[throughput.AudioThroughputMonitor(sample_rate=8, window_size=3, **monitor)])
    trainer.fit(FlopsModule(), torch.utils.data.DataLoader(batches, batch_size=None))
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
