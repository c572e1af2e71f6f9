"""GPU check: attention kernels and compilation: which SDPA backend runs each attention call in training and
in KV-cached decoding (profiled, and each call's arguments forced onto each backend), the xformers
backend against SDPA, and compiled DecoderLayers against eager.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from gpu_check_lm import measure_training  # noqa: E402
from gpu_check_setup import Check, Context, autocast, build_lm, free_memory, lm_batch, lm_loss_and_grads  # noqa: E402
from side_by_side import grad_cosine, grads_of, relative, sync  # noqa: E402


SDPA_OPS = {  # aten op the profiler sees -> backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU kernel)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


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
