"""The one precision decision (lightning_musicgen/precision.py), with the hardware checks faked,
and the CPU decoding kernels' fallback where oneDNN's bf16 kernels cannot run."""
import pytest
import torch

from lightning_musicgen import compat, precision


@pytest.fixture
def fake_hw(monkeypatch):
    def set_hw(cuda: bool = False, cuda_bf16: bool = False, cpu_bf16: bool = False, capability: str = "AVX2"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
        monkeypatch.setattr(compat, "cpu_has_bf16_instructions", lambda: cpu_bf16)
        monkeypatch.setattr(compat, "cpu_capability", lambda: capability)
    return set_hw


@pytest.mark.parametrize("hw,device,expected", [
    (dict(cuda=True, cuda_bf16=True), None, "bf16-mixed"),       # A100/H100
    (dict(cuda=True, cuda_bf16=False), None, "32-true"),         # V100/T4
    (dict(cpu_bf16=True), None, "bf16-mixed"),                   # Sapphire Rapids (AMX), Zen 4 (AVX512-BF16)
    (dict(cpu_bf16=False), None, "32-true"),                     # AVX2-only CPUs
    (dict(cuda=True, cuda_bf16=True, cpu_bf16=False), "cpu", "32-true"),   # accelerator: cpu on a GPU box
])
def test_auto_precision_follows_the_hardware(fake_hw, hw, device, expected):
    fake_hw(**hw)
    chosen, reason = precision.training_precision("auto", device)
    assert chosen == expected
    assert reason.startswith(f"precision auto -> {expected}: ") and "\n" not in reason
    dtype = precision.inference_dtype("auto", device or ("cuda" if hw.get("cuda") else "cpu"))
    assert dtype == (torch.bfloat16 if expected == "bf16-mixed" else torch.float32)


def test_explicit_precision(fake_hw):
    fake_hw(cuda=True, cuda_bf16=False)
    assert precision.training_precision("bf16-mixed")[0] == "32-true"   # cannot run: falls back
    fake_hw(cpu_bf16=False)
    chosen, reason = precision.training_precision("bf16-mixed")
    assert chosen == "bf16-mixed" and "slower" in reason                 # kept, with the reason
    assert precision.training_precision("16-mixed")[0] == "16-mixed"
    assert precision.training_precision(None)[0] == "32-true"
    assert precision.inference_dtype("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="float8"):
        precision.inference_dtype("float8", "cpu")


def test_trainer_defaults_to_auto_and_logs_why(fake_hw, caplog):
    from lightning_musicgen.cli import Trainer
    fake_hw(cpu_bf16=False)
    with caplog.at_level("INFO"):
        trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert str(trainer.precision) == "32-true"
    assert any("precision auto -> 32-true" in r.getMessage() for r in caplog.records)
    fake_hw(cpu_bf16=True)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert str(trainer.precision) == "bf16-mixed"


@pytest.mark.parametrize("cpu_bf16,capability,bf16_packs", [(False, "AVX2", False), (False, "AVX512", True),
                                                            (True, "AVX2", True)])
def test_decode_kernels_pack_bf16_only_where_onednn_runs_it(fake_hw, cpu_bf16, capability, bf16_packs):
    from lightning_musicgen.generation import CpuDecodeKernels
    fake_hw(cpu_bf16=cpu_bf16, capability=capability)
    assert CpuDecodeKernels.can_pack(torch.float32) == torch.backends.mkldnn.is_available()
    assert CpuDecodeKernels.can_pack(torch.bfloat16) == (bf16_packs and torch.backends.mkldnn.is_available())
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
    calls = []
    if not bf16_packs:   # the packing op must never be reached where oneDNN would refuse it
        def refuse(weight, rows):
            calls.append(weight.dtype)
            raise RuntimeError("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")
        import lightning_musicgen.compat as c
        orig = c.onednn_pack_linear_weight
        c.onednn_pack_linear_weight = refuse
        try:
            kernels = CpuDecodeKernels(layer, rows=2)
        finally:
            c.onednn_pack_linear_weight = orig
        assert not kernels.packed and not calls
        x = torch.randn(2, 16, dtype=torch.bfloat16)
        with torch.no_grad(), kernels:
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
