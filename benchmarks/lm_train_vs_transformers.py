"""Training throughput (tokens/s) and peak memory: our MusicGenLM vs transformers' MusicgenForCausalLM.

Same configuration (width, heads, layers, FFN, 4 codebooks x 2048, cross-attention to a projected
text of 16 tokens, delay pattern), same batch, one full training step each (forward, per-codebook
cross-entropy, backward, fused AdamW step). Variants, measured in one run:
  transformers fp32 | ours fp32 | ours bf16 autocast (our default `bf16-mixed`) | transformers bf16 autocast
Throughput: rounds interleave the variants in one process (best step time of the rounds: the least
disturbed by other processes on a shared machine).
Peak memory: each variant in its own subprocess, peak RSS growth over the model's resident size.
A token is one code: batch x frames x codebooks.

    python benchmarks/lm_train_vs_transformers.py [--dim 1024 --heads 16 --layers 4 --batch 4 --frames 250]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("hf_fp32", "ours_fp32", "ours_bf16", "hf_bf16")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build(variant: str, a):
    torch.manual_seed(0)
    K, card, cond_len = 4, 2048, 16
    if variant.startswith("hf"):
        from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
        cfg = MusicgenDecoderConfig(vocab_size=card, hidden_size=a.dim, num_hidden_layers=a.layers,
                                    num_attention_heads=a.heads, ffn_dim=4 * a.dim, num_codebooks=K,
                                    pad_token_id=card, bos_token_id=card, max_position_embeddings=4096,
                                    attn_implementation="sdpa", dropout=0.0)
        model = MusicgenForCausalLM(cfg).train()
    else:
        from lightning_musicgen.lm.model import MusicGenLM
        model = MusicGenLM(n_q=K, card=card, dim=a.dim, num_heads=a.heads, num_layers=a.layers).train()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, card, (a.batch, K, a.frames), generator=g)
    cond = torch.randn(a.batch, cond_len, a.dim, generator=g)
    mask = torch.ones(a.batch, cond_len, dtype=torch.bool)
    # fused AdamW for every variant: transformers' Trainer default (adamw_torch_fused) and our module's choice
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    bf16 = variant.endswith("bf16")

    if variant.startswith("hf"):
        from lightning_musicgen.lm.patterns import get_pattern
        pattern = get_pattern("delay", K)

        def loss_fn():
            seq = pattern.build(codes, card)  # the same delayed input as ours
            inp = torch.cat([torch.full((a.batch, K, 1), card), seq[..., :-1]], dim=-1)
            logits = model(input_ids=inp.flatten(0, 1), encoder_hidden_states=cond,
                           encoder_attention_mask=mask.long()).logits.view(a.batch, K, -1, card)
            target = seq.masked_fill(seq == card, -100)
            return sum(F.cross_entropy(logits[:, k].float().flatten(0, 1), target[:, k].flatten(), ignore_index=-100)
                       for k in range(K)) / K
    else:
        from lightning_musicgen.lm.conditioners import LMConditions
        conditions = LMConditions(cond, mask)

        def loss_fn():
            return model.loss(codes, conditions)[0]

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def memory_child(variant: str, a) -> None:
    model, step = build(variant, a)
    base = rss_mb()
    for _ in range(2):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "peak_growth_mb": peak - base, "params": sum(p.numel() for p in model.parameters())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=250, help="codec frames per sample (50 Hz: 250 = 5 s)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child, a)
    args = [f"--dim={a.dim}", f"--heads={a.heads}", f"--layers={a.layers}", f"--batch={a.batch}", f"--frames={a.frames}"]
    memory = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *args, f"--memory-child={v}"], capture_output=True, text=True)
        memory[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mb"] if out.returncode == 0 else float("nan")
    steps = {v: build(v, a)[1] for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        steps[v]()  # warm-up
    for _ in range(a.rounds):
        for v in VARIANTS:
            t0 = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t0)
    tokens = a.batch * a.frames * 4
    tps = {v: tokens / min(times[v]) for v in VARIANTS}  # best round: least disturbed by other load
    print(f"config: dim {a.dim}, heads {a.heads}, layers {a.layers}, batch {a.batch} x {a.frames} frames x 4 codebooks, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'variant':<10} {'tokens/s':>10} {'vs hf_fp32':>11} {'peak MB':>9}")
    for v in VARIANTS:
        print(f"{v:<10} {tps[v]:>10.0f} {tps[v] / tps['hf_fp32']:>10.2f}x {memory[v]:>9.0f}")


if __name__ == "__main__":
    main()
