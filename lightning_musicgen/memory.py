"""Training memory of a MusicGen LM before the run: parameters, gradients, optimizer state and
activations for a config, a precision, a micro-batch and a segment length.

Model (bytes, per device, no sharding):
    weights     every parameter (LM, adapters, conditioner with its text encoder, codec when audio
                batches are encoded on the fly); + a bf16 copy of the LM's matrices under *-mixed
                (autocast keeps them for the backward pass)
    grads       trainable parameters
    optimizer   AdamW: two states per trainable parameter; the step's temporaries (none when fused,
                one copy of the trainable parameters with foreach, the largest tensor otherwise)
    activations what autograd saves, walked tensor by tensor through a decoder layer of
                `lm.transformer` (pre-norm self-attention, cross-attention, FFN; a linear saves its
                input only when its weight trains; SDPA saves q, k, v, out; LoRA adds its rank-r
                intermediates and dropout masks); with gradient checkpointing only each layer's
                input plus one layer recomputed
    logits      the [B, K, S, card] logits, their float32 log-softmax and its gradients at the
                start of the backward pass
Peak = weights + optimizer + max(activations + logits + early grads, all grads + step temporaries):
activations are freed layer by layer as the gradients of those layers appear.

Not counted: the text encoder's and the codec's forward passes (no grad, before the LM runs),
the CUDA context and allocator fragmentation (leave 10-20 % headroom on GPUs), DDP gradient
buckets (one more copy of the trainable gradients under DDP).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional

from lightning_musicgen.errors import ConfigError, InputError

GiB = 2**30
# The SEANet encoder of EnCodec 32 kHz (64 filters) under no_grad in fp32: its full-rate first stage
# holds about 288 floats per input sample at its peak (measured with `measured_peak`: 1152 bytes per
# sample for 1-4 crops of 4 s, linear in batch and length).
CODEC_ENCODE_BYTES_PER_SAMPLE = 1152
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true")


@dataclass
class MemoryEstimate:
    """Bytes per component and the estimated peak (`peak`); `gib()` for reading."""
    weights: float
    grads: float
    optimizer: float
    optimizer_step: float
    activations: float
    logits: float
    early_grads: float
    codec_encode: float
    peak: float

    def gib(self) -> dict[str, float]:
        return {k: round(v / GiB, 3) for k, v in asdict(self).items()}


def _bytes(precision: str) -> tuple[int, int, int]:
    """(parameter bytes, residual-stream bytes, matmul-output bytes)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision.endswith("-true") and precision[:2] in ("bf", "16"):
        return 2, 2, 2
    if precision.endswith("-mixed"):
        return 4, 4, 2
    return 4, 4, 4


def as_dict(config) -> dict:
    """An LM config as a dict: a dict, a dataclass (typed config) or an object with `to_dict()`."""
    import dataclasses
    if isinstance(config, dict):
        return config
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def lm_shapes(lm_config: dict) -> dict:
    lm_config = as_dict(lm_config)
    D = int(lm_config.get("dim", 1024))
    return {"D": D, "H": int(lm_config.get("num_heads", 16)), "n": int(lm_config.get("num_layers", 24)),
            "F": int(lm_config.get("ffn_dim") or 4 * D), "K": int(lm_config.get("n_q", 4)),
            "C": int(lm_config.get("card", 2048)), "cross": bool(lm_config.get("cross_attention", True)),
            "bias": bool(lm_config.get("bias", False))}


def lm_linears(s: dict) -> dict[str, tuple[int, int]]:
    """Name (as in `lm.lora.TARGET_GROUPS`) -> (in, out) of each decoder layer's linear."""
    D, F = s["D"], s["F"]
    layers = {"self_attn.qkv": (D, 3 * D), "self_attn.out": (D, D), "ffn.0": (D, F), "ffn.2": (F, D)}
    if s["cross"]:
        layers |= {"cross_attn.q": (D, D), "cross_attn.kv": (D, 2 * D), "cross_attn.out": (D, D)}
    return layers


def lm_parameters(s: dict) -> tuple[int, int]:
    """(all LM parameters, the LM's matrix parameters that matmuls use)."""
    D, K, C, n = s["D"], s["K"], s["C"], s["n"]
    per_layer = sum(i * o + (o if s["bias"] else 0) for i, o in lm_linears(s).values())
    norms = (3 if s["cross"] else 2) * 2 * D
    matrices = n * sum(i * o for i, o in lm_linears(s).values()) + K * D * C
    return K * (C + 1) * D + n * (per_layer + norms) + 2 * D + K * D * C, matrices


def estimate(lm_config: dict, *, micro_batch: int, frames: int, precision: str = "32-true",
             lora: dict | None = None, gradient_checkpointing: bool | None = None,
             conditioner_params: int = 0, projection_params: int = 0, codec_params: int = 0,
             cross_tokens: int = 64, prefix_tokens: int = 0, pattern_extra_steps: int | None = None,
             optimizer: str = "fused", device: str = "cuda", audio_samples: int = 0) -> MemoryEstimate:
    """Training-step peak of `MusicGenLM(**lm_config)` on `micro_batch` crops of `frames` codec frames.

    lora: LoRA settings (`lm.lora.LoRASettings` fields) or None for full fine-tuning / training.
    conditioner_params: all conditioner parameters (text encoder + projections; frozen unless
    counted in projection_params); projection_params: those that train (full training, or LoRA
    with train_condition_projection). cross_tokens: text tokens for cross-attention;
    prefix_tokens: tokens prepended to the sequence (melody: chroma + text). optimizer: "fused"
    (CUDA AdamW), "foreach" or "single" (CPU default). device: "cuda" or "cpu" (dropout masks differ).
    audio_samples: waveform samples per crop when the codec encodes audio batches on the fly (0: token
    batches); the encoder's activations then peak before the LM runs."""
    from lightning_musicgen.lm.lora import LoRASettings, TARGET_GROUPS
    lm_config = as_dict(lm_config)
    s = lm_shapes(lm_config)
    D, H, n, F, K, C = s["D"], s["H"], s["n"], s["F"], s["K"], s["C"]
    pb, se, ce = _bytes(precision)
    mixed = str(precision).endswith("-mixed")
    noise = 1 if device == "cuda" else se
    ckpt = lm_config.get("gradient_checkpointing", False) if gradient_checkpointing is None else gradient_checkpointing
    settings = LoRASettings.from_any(lora) if lora is not None else None
    if pattern_extra_steps is None:
        delays = (lm_config.get("pattern_kwargs") or {}).get("delays") or list(range(K))
        pattern_extra_steps = max(delays) if lm_config.get("pattern", "delay") == "delay" else 0
    S = frames + pattern_extra_steps
    B, L = micro_batch, prefix_tokens + frames + pattern_extra_steps
    N, NS = B * L, B * S
    linears = lm_linears(s)
    if settings is None:
        trains = {name: True for name in linears}
        heads_train = True
    else:
        targeted = {suffix for t in settings.targets for suffix in TARGET_GROUPS[t]}
        trains = {name: False for name in linears}
        heads_train = False
        lora_on = {name: name in targeted for name in linears}
        heads_lora = "heads." in targeted
    lm_all, lm_matrices = lm_parameters(s)
    r = settings.r if settings else 0
    lora_params = 0
    if settings:
        lora_params = n * sum(r * (i + o) for name, (i, o) in linears.items() if lora_on[name])
        lora_params += K * r * (D + C) if heads_lora else 0
    trainable = (lm_all + projection_params) if settings is None else (lora_params + projection_params)

    # ---- activations of one decoder layer, bytes per token -------------------------------------
    def saves_input(name):  # a frozen linear needs only its weight for the input's gradient
        return trains[name] or (settings is not None and lora_on[name])

    def lora_extra(name):
        """LoRA's rank-r intermediate (saved by lora_B) and, with dropout, the mask; the dropped-out
        input replaces the saved input, except after attention where the input is saved anyway."""
        if settings is None or not lora_on[name]:
            return 0.0
        i = linears[name][0]
        extra = r * ce
        if settings.dropout > 0:  # the dropout's mask (CUDA: bool; CPU: a float noise tensor) and output
            extra += i * (noise + ce) if name.endswith("attn.out") else i * noise
        return extra

    layer = D * se + (D * ce if saves_input("self_attn.qkv") else 0) + 3 * D * ce + D * ce + 4 * H
    layer += lora_extra("self_attn.qkv") + lora_extra("self_attn.out")
    if s["cross"]:
        layer += D * se + (D * ce if saves_input("cross_attn.q") else 0) + D * ce + D * ce + 4 * H
        layer += lora_extra("cross_attn.q") + lora_extra("cross_attn.out")
    layer += D * se + (D * ce if saves_input("ffn.0") else 0) + F * ce + (F * ce if saves_input("ffn.2") else 0)
    layer += lora_extra("ffn.0") + lora_extra("ffn.2")
    cross_kv = (B * cross_tokens * 2 * D * ce * n) if s["cross"] else 0
    outside = N * K * 8 + NS * D * (se + ce) + cross_kv  # embedding indices; final norm input/output; cross K/V
    saved = (n * N * D * se if ckpt else n * N * layer) + outside
    # while one layer runs backward: its FFN hidden-state gradients (and, checkpointed, its recomputed activations)
    layer_backward = N * 2 * F * ce + (N * layer if ckpt else 0)
    activations = saved + layer_backward

    # ---- logits and the loss: forward end (logits + log-softmax), backward start (log-softmax, its
    # gradient, the logits' gradient); under *-mixed the bf16 logits and their float32 copy -------------
    logit_elems = NS * K * C
    logits_forward = logit_elems * ((ce + 4 + 4) if mixed else 8)
    logits = logit_elems * (12 + (2 if mixed else 0))

    # ---- parameters, gradients, optimizer ------------------------------------------------------------
    weights = (lm_all + lora_params + conditioner_params + codec_params) * pb
    if mixed:  # bf16 copies of the matrices live until their layer's backward (checkpointed: one layer's)
        layer_matrices = sum(i * o for i, o in linears.values())
        weights += 2 * (lm_matrices - (n - 1) * layer_matrices if ckpt else lm_matrices)
    grads = trainable * pb
    early_grads = (K * D * C + 2 * D) * pb if settings is None else (K * r * (D + C) * pb if settings and heads_lora else 0)
    optimizer_state = trainable * 2 * pb
    largest = max([K * (C + 1) * D // K, D * C, max(i * o for i, o in linears.values())]) if settings is None \
        else max(r * max(i, o) for i, o in linears.values())
    step_temp = {"fused": 0, "foreach": trainable * pb, "single": 2 * largest * pb}[optimizer]
    codec_encode = micro_batch * audio_samples * CODEC_ENCODE_BYTES_PER_SAMPLE
    phases = (codec_encode, saved + logits_forward, saved + logits, saved + layer_backward + early_grads,
              grads + step_temp)
    peak = weights + optimizer_state + max(phases)
    return MemoryEstimate(weights, grads, optimizer_state, step_temp, activations, logits, early_grads, codec_encode,
                          peak)


def estimate_for_module(module, micro_batch: int, segment_seconds: float, precision: str,
                        frame_rate: float | None = None, cross_tokens: int = 64, audio: bool = True) -> MemoryEstimate:
    """`estimate` for a live MusicGenModule (its LM config, LoRA settings, conditioner and codec);
    `audio`: batches are waveforms the codec encodes on the fly (False: token shards)."""
    frame_rate = frame_rate or module.codec.frame_rate
    frames = int(round(segment_seconds * frame_rate))
    cond = module.conditioner
    cond_params = sum(p.numel() for p in cond.parameters())
    projection = sum(p.numel() for p in cond.parameters() if p.requires_grad)
    prefix = 0
    if cond.melody is not None and cond.melody.fuse == "prepend":
        prefix += cond.melody.chroma_length
    if cond.fuse == "prepend" and cond.text is not None:
        prefix += cross_tokens
    codec_params = sum(p.numel() for p in module.codec.parameters()) if module.codec_checkpoint else 0
    samples = int(segment_seconds * module.codec.sample_rate) if (module.codec_checkpoint and audio) else 0
    device = module.device
    return estimate(module.lm.config, micro_batch=micro_batch, frames=frames, precision=precision,
                    lora=module.lora.to_dict() if module.lora is not None else None,
                    conditioner_params=cond_params, projection_params=projection, codec_params=codec_params,
                    cross_tokens=cross_tokens, prefix_tokens=prefix,
                    optimizer="fused" if device.type == "cuda" else "single", device=device.type,
                    audio_samples=samples)


def measured_peak(fn) -> tuple[float, float]:
    """Run `fn()` under torch's CPU memory profiler; return (peak growth, final growth) in bytes of
    live tensor allocations over what was allocated before the call (exact, not RSS)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e[0])
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return float(peak), float(current)


# ---- the official models (README table: `python -m lightning_musicgen memory`) ------------------
OFFICIAL = {
    "musicgen-small": dict(n_q=4, card=2048, dim=1024, num_heads=16, num_layers=24, cross_attention=True),
    "musicgen-medium": dict(n_q=4, card=2048, dim=1536, num_heads=24, num_layers=48, cross_attention=True),
    "musicgen-melody": dict(n_q=4, card=2048, dim=1536, num_heads=24, num_layers=48, cross_attention=False),
}
T5_BASE_ENCODER_PARAMS = 109_628_544    # transformers T5EncoderModel("t5-base")
ENCODEC_32KHZ_PARAMS = 56_884_674        # transformers EncodecModel, 32 kHz MusicGen tokenizer config (encoder, RVQ, decoder)
MELODY_CHROMA_FRAMES = 235


def official_estimate(name: str, method: str, seconds: float, micro_batch: int, precision: str = "bf16-mixed",
                      gradient_checkpointing: bool = True, lora_rank: int = 16, text_tokens: int = 64,
                      frame_rate: float = 50.0) -> MemoryEstimate:
    """`estimate` for an official model fine-tuned on 32 kHz audio batches (codec encodes on the fly):
    method "lora" (r=lora_rank on self-attention, cross-attention and FFN) or "full"."""
    cfg = dict(OFFICIAL[name], gradient_checkpointing=gradient_checkpointing)
    melody = not cfg["cross_attention"]
    projection = 768 * cfg["dim"] + cfg["dim"] + (12 * cfg["dim"] + cfg["dim"] if melody else 0)
    targets = ["self_attn", "ffn"] + ([] if melody else ["cross_attn"])
    return estimate(cfg, micro_batch=micro_batch, frames=int(round(seconds * frame_rate)), precision=precision,
                    lora=dict(r=lora_rank, alpha=2 * lora_rank, dropout=0.05, targets=targets) if method == "lora" else None,
                    conditioner_params=T5_BASE_ENCODER_PARAMS + projection,
                    projection_params=projection if method == "full" else 0, codec_params=ENCODEC_32KHZ_PARAMS,
                    cross_tokens=text_tokens, prefix_tokens=(MELODY_CHROMA_FRAMES + text_tokens) if melody else 0,
                    audio_samples=int(seconds * 32000))


def largest_micro_batch(name: str, method: str, seconds: float, budget_gib: float, usable: float = 0.9,
                        **kw) -> int:
    """The largest micro-batch whose estimate is within `usable` x the budget (0: not even 1)."""
    best = 0
    for b in range(1, 257):
        if official_estimate(name, method, seconds, b, **kw).peak > usable * budget_gib * GiB:
            break
        best = b
    return best


def table(budgets=(16, 24, 40, 80)) -> str:
    lines = ["| model | method | crop | peak at micro-batch 1 | " + " | ".join(f"{b} GB" for b in budgets) + " |",
             "|---|---|---|---|" + "---|" * len(budgets)]
    for name in OFFICIAL:
        for method in ("lora", "full"):
            for seconds in (10.0, 30.0):
                one = official_estimate(name, method, seconds, 1).peak / GiB
                cells = []
                for budget in budgets:
                    b = largest_micro_batch(name, method, seconds, budget)
                    cells.append(f"{b}" if b else "no")
                label = "LoRA r=16" if method == "lora" else "full"
                lines.append(f"| {name} | {label} | {seconds:.0f} s | {one:.1f} GiB | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_command(*, model: Optional[Literal["musicgen-small", "musicgen-medium", "musicgen-melody"]] = None,
                   method: Literal["lora", "full"] = "lora", seconds: float = 30.0, micro_batch: int = 1,
                   precision: str = "bf16-mixed", budget_gb: Optional[float] = None) -> None:
    """Estimate the training memory of fine-tuning an official MusicGen, before the run.

    Without --model: the table of the largest micro-batch that fits 16, 24, 40 and 80 GB for every
    official model, LoRA and full fine-tuning, 10 s and 30 s crops (bf16-mixed, gradient checkpointing).

    Args:
        model: one official model: its estimate for the options below, component by component (GiB).
        method: lora (r=16 on attention and FFN) or full (every LM weight and the text projection).
        seconds: crop length in seconds.
        micro_batch: sequences per device and optimizer step.
        precision: Lightning precision of the run (bf16-mixed, 32-true, ...).
        budget_gb: with --model: also print the largest micro-batch that fits this many GB.
    """
    if model is None:
        print(table())
        return
    if seconds <= 0 or micro_batch < 1:
        raise InputError(f"--seconds {seconds} / --micro-batch {micro_batch}: need seconds > 0 and micro-batch >= 1")
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    parts = official_estimate(model, method, seconds, micro_batch, precision=precision).gib()
    print(f"{model}, {method}, {seconds:g} s crops, micro-batch {micro_batch}, {precision}:")
    for name, value in parts.items():
        print(f"  {name:<12} {value:7.2f} GiB")
    if budget_gb is not None:
        best = largest_micro_batch(model, method, seconds, budget_gb, precision=precision)
        print(f"largest micro-batch within 90 % of {budget_gb:g} GB: {best or 'none (not even 1)'}")
