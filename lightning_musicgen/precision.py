"""One decision for bf16 vs fp32, from the hardware: training, generation and benchmarks ask here.

bf16 is used only where it is fast:
- CUDA: a GPU with native bf16 (Ampere or newer);
- CPU: AVX512-BF16 or AMX instructions (about 5x faster than fp32 on such CPUs). On AVX2-only
  CPUs, bf16 matrix products are about 70x slower than fp32, so fp32 is chosen there.

    precision, why = training_precision("auto", "cpu")   # ("32-true", "this CPU has no bf16 ...")
    dtype = inference_dtype("auto", "cuda")                # torch.bfloat16 on an A100
"""
from __future__ import annotations

import torch

from lightning_musicgen import compat

from lightning_musicgen.errors import ConfigError


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """bf16 runs fast on `device` (CUDA with native bf16, or a CPU with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and _cuda_native_bf16()
    if device.type == "cpu":
        return compat.cpu_has_bf16_instructions()
    return False


def _cuda_native_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older signature
        return bool(torch.cuda.is_bf16_supported())


def bf16_reason(device: torch.device | str = "cpu") -> str:
    """Why bf16 is or is not chosen on `device`, in a few words for a log line."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        name = torch.cuda.get_device_name(device)
        return f"{name} has native bf16" if _cuda_native_bf16() else f"{name} has no native bf16"
    if device.type == "cpu":
        if compat.cpu_has_bf16_instructions():
            return "this CPU has AVX512-BF16/AMX instructions"
        return "this CPU has no AVX512-BF16/AMX instructions (bf16 would be much slower than fp32)"
    return f"{device.type} devices run fp32"


def training_precision(requested: str | None = "auto", device_type: str | None = None) -> tuple[str, str]:
    """The Lightning `precision` to train with, and a one-line reason.

    `requested` "auto" (or None/"") picks `bf16-mixed` where bf16 is fast on `device_type` (default:
    cuda when available, else cpu) and `32-true` elsewhere. An explicit bf16 request is kept, except
    on a GPU that cannot run bf16 at all, where it falls back to `32-true`. Other values pass through."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    requested = str(requested or "auto")
    if requested == "auto":
        if bf16_is_fast(device_type):
            return "bf16-mixed", f"precision auto -> bf16-mixed: {bf16_reason(device_type)}"
        return "32-true", f"precision auto -> 32-true: {bf16_reason(device_type)}"
    if requested.startswith("bf16") and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return "32-true", f"precision {requested} -> 32-true: {bf16_reason('cuda')}"
    if requested.startswith("bf16") and device_type == "cpu" and not bf16_is_fast("cpu"):
        return requested, f"precision {requested} kept as asked, but {bf16_reason('cpu')}"
    return requested, f"precision {requested} as asked"


_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}


def inference_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """The compute dtype for generation: `None`/"auto" -> bf16 where it is fast, else fp32."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[dtype]
