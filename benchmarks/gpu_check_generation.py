"""GPU check: greedy CFG generation gives the same tokens on the device and on CPU, and KV-cached generation
speed (ms per step) at batch 1 and 8.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from gpu_check_setup import (Check, Context, TEXTS, build_lm, free_memory, minilm_conditioner, peak_gib,  # noqa: E402
                             spread_heads)
from side_by_side import sync  # noqa: E402


def musicgen(ctx: Context, lm, conditioner, device, dtype, **kwargs):
    from lightning_musicgen.generation import MusicGen
    lm, conditioner = copy.deepcopy(lm).to(device, dtype).eval(), copy.deepcopy(conditioner).to(device).eval()
    return MusicGen(lm, conditioner, None, frame_rate=ctx.plan.frame_rate, **kwargs)  # uses them as they are


def check_generation_equal(ctx: Context) -> list[Check]:
    size, device = ctx.plan.sizes["small"], ctx.device
    lm = build_lm(size, torch.device("cpu"), layers=min(size.layers, ctx.plan.equal_layers)).eval()
    spread_heads(lm)
    conditioner = minilm_conditioner(size.dim)
    if device.type == "cuda":
        a_name, b_name = "CUDA", "CPU"
        a = musicgen(ctx, lm, conditioner, device, torch.float32)
        b = musicgen(ctx, lm, conditioner, "cpu", torch.float32)
    else:
        a_name, b_name = "CPU (CpuDecodeKernels)", "CPU (plain torch kernels)"
        a = musicgen(ctx, lm, conditioner, "cpu", torch.float32)
        b = musicgen(ctx, lm, conditioner, "cpu", torch.float32, cpu_kernels=False)
    texts = TEXTS[:2]
    kw = dict(duration=ctx.plan.gen_equal_seconds, cfg_coef=3.0, top_k=1, seed=0)
    codes_a = a.generate_tokens(texts, **kw).cpu()
    codes_b = b.generate_tokens(texts, **kw).cpu()
    differ = int((codes_a != codes_b).sum())
    first = None
    if differ:
        first = int((codes_a != codes_b).any(dim=0).any(dim=0).nonzero()[0])
    outcome = "all equal" if not differ else f"{differ} differ (first at frame {first})"
    figure = (f"{a_name} vs {b_name}, greedy, CFG 3, fp32, {codes_a.shape[0]} x {codes_a.shape[1]} x "
              f"{codes_a.shape[2]} tokens: {outcome}")
    del a, b
    free_memory(device)
    return [Check("generation_greedy_equal", "PASS" if differ == 0 and codes_a.numel() > 0 else "FAIL", figure,
                  dict(tokens=codes_a.numel(), differ=differ, first_difference_frame=first, sides=[a_name, b_name]))]


def check_generation_speed(ctx: Context) -> list[Check]:
    from lightning_musicgen.precision import inference_dtype
    size, device = ctx.plan.sizes["small"], ctx.device
    lm = build_lm(size, device).eval()
    conditioner = minilm_conditioner(size.dim)
    dtype = inference_dtype("auto", device)
    model = musicgen(ctx, lm, conditioner, device, dtype)
    del lm
    figures, ok = {}, True
    for batch in ctx.plan.gen_batches:
        free_memory(device)
        stamps = []
        codes = model.generate_tokens([TEXTS[i % len(TEXTS)] for i in range(batch)], ctx.plan.gen_seconds,
                                      cfg_coef=3.0, top_k=250, seed=0,
                                      callback=lambda done, total: (sync(device), stamps.append(time.perf_counter())))
        deltas = [b - a for a, b in zip(stamps, stamps[1:])]
        ms = statistics.median(deltas) * 1e3
        frames = model.num_frames(ctx.plan.gen_seconds)
        in_range = 0 <= int(codes.min()) <= int(codes.max()) < size.card
        valid = tuple(codes.shape) == (batch, size.n_q, frames) and in_range
        ok = ok and valid
        peak = peak_gib(device)
        figures[batch] = dict(ms_per_step=ms, steps=len(stamps), valid_codes=valid, peak_gib=peak)
        ctx.report.measure(f"generation/batch{batch}/ms_per_step", ms, "ms",
                           f"{size.label} size, {dtype}, CFG 3, top-k 250, {len(stamps)} steps (median)"
                           + ("" if peak is None else f", peak memory {peak:.2f} GiB"))
    del model
    free_memory(device)
    figure = ", ".join(f"batch {b}: {f['ms_per_step']:.1f} ms/step" for b, f in figures.items())
    return [Check("generation_speed", "PASS" if ok else "FAIL",
                  f"KV-cached, CFG 3, {dtype}, {size.label} size: {figure}; codes valid: {ok}",
                  {str(b): f for b, f in figures.items()})]
