"""GPU check: LM training at small and medium size: bf16 vs fp32 loss and gradients on one batch, tokens/s,
MFU and peak memory (eager, and small compiled), and the same step through transformers'
MusicgenForCausalLM for a side-by-side ratio.
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from lightning_musicgen.flops import lm_train_flops  # noqa: E402
from gpu_check_setup import (Check, Context, LMSize, TARGET_MFU_SMALL, TARGET_VS_TRANSFORMERS, autocast, build_lm,
                             free_memory, is_oom, lm_batch, lm_loss_and_grads, peak_gib)  # noqa: E402
from side_by_side import grad_cosine, relative, time_steps  # noqa: E402


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
