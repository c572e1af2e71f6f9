"""The demo codec config (configs/demo/codec.yaml) must learn within the demo's budget.

At MusicGen's 50 Hz hop this tiny codec collapsed: in 300 CPU steps on the demo data every codebook
ended on one code and its SI-SNR stayed near -40 dB, so the demo LM only had steady tones to learn.
Here 100 steps on music-like clips (harmonic notes with decaying envelopes, 32 kHz) must reach a
positive held-out SI-SNR with every codebook in real use (the 50 Hz config: -37 dB, perplexities 95 /
40 / 16 / 14)."""
import math

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import ROOT
from lightning_musicgen.codec import CodecModule
from lightning_musicgen.codec.losses import si_snr

SR = 32000


def notes(n: int, seconds: float, seed: int) -> torch.Tensor:
    """[n, 1, T]: four consecutive harmonic notes per clip, random pitches over three octaves."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    quarter = t.numel() // 4
    seg = t[:quarter]
    out = torch.zeros(n, 1, t.numel())
    for i in range(n):
        for j in range(4):
            f0 = 110 * 2 ** (int(torch.randint(0, 36, (1,), generator=g)) / 12)
            tone = sum(torch.sin(2 * math.pi * f0 * k * seg + float(torch.rand(1, generator=g)) * 6) / k
                       for k in range(1, 6))
            out[i, 0, j * quarter:(j + 1) * quarter] = 0.2 * torch.exp(-3 * seg) * tone
    return out


def test_demo_codec_config_learns_and_uses_its_codebooks():
    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "configs/demo/codec.yaml").read_text())["model"]["init_args"]
    module = CodecModule(**{**cfg, "log_audio_every_n_steps": 0})
    loader = DataLoader([{"wav": c} for c in notes(64, 0.5, seed=1)], batch_size=8, shuffle=True)
    L.Trainer(max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    model = module.eval_model().eval()
    held_out = notes(16, 0.5, seed=2)
    with torch.no_grad():
        codes = model.encode(held_out)
        recon = model.decode(codes)[..., :held_out.shape[-1]]
    perplexities = []
    for k in range(codes.shape[1]):
        p = torch.bincount(codes[:, k].flatten(), minlength=model.card).float()
        p = p[p > 0] / p.sum()
        perplexities.append(float(torch.exp(-(p * p.log()).sum())))
    snr = float(si_snr(recon, held_out))
    print(f"demo codec after 100 steps: SI-SNR {snr:.1f} dB, code perplexities {[round(x) for x in perplexities]}")
    assert snr > 0.0, snr
    assert min(perplexities) > 64, perplexities
