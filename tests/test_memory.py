"""The training-memory estimate (`lightning_musicgen.memory`) against the peak torch's CPU memory
profiler measures over one optimizer step (exact allocation counts, not RSS: deterministic)."""
import pytest
import torch

from lightning_musicgen.lm.conditioners import LMConditions
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.memory import estimate, measured_peak

pytestmark = pytest.mark.usefixtures("one_thread")


def test_profiler_measure_counts_allocations():
    def work():
        a = torch.empty(1_000_000)
        b = torch.empty(500_000)
        del a
        c = torch.empty(200_000)  # noqa: F841 (kept until return)
        del b
    peak, final = measured_peak(work)
    assert peak == 6_000_000 and final == 0


def measure_step(config: dict, batch: int, frames: int, lora: dict | None, cross_tokens: int = 16) -> float:
    """Parameters + optimizer state + the peak growth of a second training step (the first one
    creates AdamW's state)."""
    from lightning_musicgen.lm.lora import LoRASettings, add_lora
    torch.manual_seed(0)
    lm = MusicGenLM(**config)
    if lora is not None:
        add_lora(lm, LoRASettings.from_any(lora))
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4, foreach=False)
    codes = torch.randint(0, config["card"], (batch, config["n_q"], frames))
    cond = LMConditions(torch.randn(batch, cross_tokens, config["dim"]), torch.ones(batch, cross_tokens, dtype=torch.bool))

    def step():
        loss, _ = lm.loss(codes, cond)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    resident = sum(p.numel() * p.element_size() for p in lm.parameters())
    resident += sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                    if torch.is_tensor(t) and t.dim() > 0)
    peak, _ = measured_peak(step)
    return resident + peak


CONFIGS = {
    "lora_dropout": (dict(n_q=4, card=256, dim=128, num_heads=4, num_layers=3), 2, 300,
                     dict(r=8, alpha=16, dropout=0.1, targets=["self_attn", "cross_attn", "ffn"])),
    "full": (dict(n_q=4, card=512, dim=96, num_heads=4, num_layers=3), 3, 200, None),
    "full_checkpointed": (dict(n_q=4, card=256, dim=128, num_heads=4, num_layers=4, gradient_checkpointing=True),
                          2, 400, None),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_estimate_within_15_percent_of_measured_peak(name):
    config, batch, frames, lora = CONFIGS[name]
    measured = measure_step(config, batch, frames, lora)
    est = estimate(config, micro_batch=batch, frames=frames, precision="32-true", lora=lora, cross_tokens=16,
                   optimizer="single", device="cpu")
    assert abs(est.peak - measured) <= 0.15 * measured, (name, est.gib(), measured / 2**30)
    # the parts that must scale: activations grow with the batch, weights do not
    bigger = estimate(config, micro_batch=2 * batch, frames=frames, precision="32-true", lora=lora,
                      cross_tokens=16, optimizer="single", device="cpu")
    assert bigger.activations > 1.8 * est.activations and bigger.weights == est.weights


def test_estimate_knows_the_official_sizes():
    """musicgen-small: 420 M LM parameters (transformers counts the decoder with its heads)."""
    from lightning_musicgen.memory import lm_parameters, lm_shapes
    small = dict(n_q=4, card=2048, dim=1024, num_heads=16, num_layers=24)
    total, _ = lm_parameters(lm_shapes(small))
    assert total == sum(p.numel() for p in MusicGenLM(**{**small, "num_layers": 1}).parameters()) + 23 * (
        sum(p.numel() for p in MusicGenLM(**{**small, "num_layers": 1}).transformer.layers[0].parameters()))
    full = estimate(small, micro_batch=1, frames=500, precision="bf16-mixed")
    lora = estimate(small, micro_batch=1, frames=500, precision="bf16-mixed", lora=dict(r=16))
    assert lora.optimizer < 0.05 * full.optimizer and lora.peak < full.peak


def test_micro_batch_for_budget():
    from lightning_musicgen.lm.finetune import micro_batch_for_budget
    cost = lambda b: 10 + 3 * b  # noqa: E731
    assert micro_batch_for_budget(cost, 35, None, 1) == 8
    assert micro_batch_for_budget(cost, 35, 12, 1) == 6  # the largest divisor of 12 that fits
    assert micro_batch_for_budget(cost, 35, 16, 2) == 8
    with pytest.raises(ValueError, match="even micro-batch 1"):
        micro_batch_for_budget(cost, 12, None, 1)


def test_memory_verb_prints_the_table_and_one_estimate(capsys):
    from lightning_musicgen.__main__ import main
    from lightning_musicgen.memory import official_estimate, table
    assert main(["memory"]) == 0
    assert capsys.readouterr().out.strip() == table().strip()
    assert main(["memory", "--model", "musicgen-small", "--method", "full", "--seconds", "10",
                 "--micro-batch", "2", "--budget-gb", "24"]) == 0
    out = capsys.readouterr().out
    expected = official_estimate("musicgen-small", "full", 10.0, 2)
    assert f"peak         {expected.gib()['peak']:7.2f} GiB" in out, out
    assert "largest micro-batch within 90 % of 24 GB:" in out
