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

Modules (benchmarks/, importing each other as this script does): gpu_check_setup (sizes, plan, report,
budget, LM builders, Context), gpu_check_lm, gpu_check_kernels (SDPA, xformers, compile),
gpu_check_codec, gpu_check_fsdp, gpu_check_generation; side_by_side holds the timing, relative-difference,
gradient-cosine and machine helpers the benchmarks share.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from lightning_musicgen.flops import peak_bf16_tflops  # noqa: E402
from gpu_check_codec import check_codec  # noqa: E402
from gpu_check_fsdp import check_fsdp  # noqa: E402
from gpu_check_generation import check_generation_equal, check_generation_speed  # noqa: E402
from gpu_check_kernels import check_compile, check_sdpa, check_xformers  # noqa: E402
from gpu_check_lm import check_lm_size  # noqa: E402
from gpu_check_setup import Budget, Check, Context, Report, free_memory, make_plan  # noqa: E402
from side_by_side import machine_info, sync  # noqa: E402


# ---- the checks, in the order they run ----------------------------------------------------------
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
