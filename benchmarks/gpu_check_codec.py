"""GPU check: a few CodecModule GAN steps through Lightning at 32-true and bf16-mixed: finite losses, both
networks updated, step time and MFU (generator FLOPs).
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from lightning_musicgen.flops import codec_train_flops  # noqa: E402
from gpu_check_setup import Check, Context, free_memory, peak_gib  # noqa: E402
from side_by_side import relative, sync  # noqa: E402


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
