"""Model FLOPs of MusicGenLM and of a codec, and GPUs' peak FLOP/s, for MFU (`train/mfu`, benchmarks/gpu_check.py).

Convention (PaLM's): 2 FLOPs per multiply-add of every matmul and convolution; a training step (forward +
backward) counts 3x the forward, except where noted. Bias additions, activations and norms are not counted.

LM (`lm_*`): per sequence position the QKV and output projections, the FFN, the attention scores and values
(4 * dim * sequence length per layer: causal attention counted in full), with cross-attention its Q and output
projections and scores/values over the condition; per pattern step the K output heads; once per sequence the
cross-attention K/V projections of the condition. Conditions prepended to the sequence (`fuse: prepend`) are
sequence positions. The frozen codec and text encoder and the conditioner's projection are not counted.
`config`: an `LMConfig` or its dict.

Codec (`codec_*`, EnCodec-style SEANet encoder/decoder + RVQ, `config`: a `CodecConfig` or its dict): every
convolution at the length it runs at (a strided conv of T samples gives ceil(T / stride) frames, a transposed
conv is counted over its input frames, the decoder runs on F * hop samples), the LSTM's gate matmuls
(16 * dim^2 per frame and layer: 4 gates over the input and the hidden state), and the quantizer's distances
(2 * dimension * card per frame and codebook, all `n_q` codebooks). The quantizer has no backward (codes are
chosen without gradient), so a training step counts 3x the encoder and decoder plus the quantizer once. Not
counted: the discriminator, the STFTs of the losses, the codebooks' k-means initialisation (first batch only)
and EMA updates; codec MFU therefore measures the generator's share of the step.

Peaks: dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' datasheets, by device name (fp16 runs at
the same rate on these GPUs).
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import torch

# Matched against torch.cuda.get_device_name() in this order (the first match wins).
PEAK_BF16_TFLOPS: list[tuple[str, str, float]] = [
    (r"GH200", "GH200", 989.4),
    (r"H200 NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    (r"H100 NVL", "H100 NVL", 835.5),
    (r"H[18]00.*PCIe", "H100 PCIe", 756.5),
    (r"H100|H800", "H100 SXM", 989.4),
    (r"B200", "B200", 2250.0),
    (r"A100|A800", "A100", 312.0),
    (r"L40S", "L40S", 362.05),
    (r"L40\b", "L40", 181.05),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
    (r"\bA40\b", "A40", 149.7),
    (r"RTX 6000 Ada", "RTX 6000 Ada", 364.2),
    (r"RTX A6000", "RTX A6000", 154.8),
    (r"RTX 4090", "GeForce RTX 4090", 165.2),
    (r"RTX 3090", "GeForce RTX 3090", 71.0),
    (r"MI300X", "Instinct MI300X", 1307.4),
]


def peak_bf16_tflops(device_name: str) -> tuple[str, float] | None:
    """GPU name -> (table label, dense bf16 TFLOP/s), or None for a GPU not in the table."""
    for pattern, label, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return label, tflops
    return None


def peak_flops(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """The device's peak FLOP/s for training in `dtype`: this module's dense table for bf16/fp16 on a GPU it
    names, else Lightning's `get_available_flops` (its own table; None on CPU and for unknown GPUs)."""
    from lightning.fabric.utilities.throughput import get_available_flops
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        found = peak_bf16_tflops(torch.cuda.get_device_name(device))
        if found is not None:
            return found[1] * 1e12
    return get_available_flops(device, dtype)


def _as_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def lm_forward_flops(config: Any, batch: int, steps: int, cond_len: int = 0, prefix_len: int = 0) -> int:
    """FLOPs of one forward of MusicGenLM over `batch` sequences of `steps` pattern steps, with `cond_len`
    cross-attended condition tokens (ignored by an LM without cross-attention) and `prefix_len` prepended
    condition positions."""
    config = _as_dict(config)
    d, layers = config["dim"], config["num_layers"]
    ffn = config.get("ffn_dim") or 4 * d
    cross = bool(config.get("cross_attention", True))
    positions = steps + prefix_len
    per_layer = 2 * 4 * d * d + 2 * 2 * d * ffn + 4 * d * positions  # QKV + out, FFN, self-attention
    if cross:
        per_layer += 2 * 2 * d * d + 4 * d * cond_len  # cross Q + out, cross-attention
    heads = 2 * config["n_q"] * d * config["card"]  # the K output heads, per pattern step
    per_sequence = layers * 2 * 2 * d * d * cond_len if cross else 0  # cross K/V of the condition, once
    return batch * (positions * layers * per_layer + steps * heads + per_sequence)


def lm_train_flops(config: Any, batch: int, steps: int, cond_len: int = 0, prefix_len: int = 0) -> int:
    """FLOPs of one training step (forward + backward = 3x the forward)."""
    return 3 * lm_forward_flops(config, batch, steps, cond_len, prefix_len)


def _residual_flops(c: dict, dim: int, length: int) -> int:
    """The SEANet residual blocks at `dim` channels over `length` steps (per sample)."""
    hidden = dim // c["compress"]
    block = 2 * dim * hidden * c["residual_kernel_size"] + 2 * hidden * dim  # conv(k) down, conv(1) back up
    if not c["true_skip"]:
        block += 2 * dim * dim  # a 1x1 conv on the shortcut
    return c["n_residual_layers"] * block * length


def _seanet_flops(c: dict, samples: int) -> tuple[int, int, int]:
    """(encoder FLOPs, decoder FLOPs, frames) per sample for `samples` input samples, LSTMs included."""
    nf, ratios, k = c["n_filters"], list(c["ratios"]), c["kernel_size"]
    top = nf * 2 ** len(ratios)  # channels at the latent rate
    lstm = c["lstm_layers"] * 16 * top * top  # per frame: 4 gates x (input + hidden) x top
    length, dim = samples, nf
    encoder = 2 * c["channels"] * nf * k * length
    for ratio in reversed(ratios):
        encoder += _residual_flops(c, dim, length)
        length = math.ceil(length / ratio)
        encoder += 2 * dim * 2 * dim * 2 * ratio * length  # strided conv, kernel 2 * ratio
        dim *= 2
    frames = length
    encoder += lstm * frames + 2 * top * c["dimension"] * c["last_kernel_size"] * frames
    decoder = 2 * c["dimension"] * top * k * frames + lstm * frames
    length, dim = frames, top
    for ratio in ratios:
        decoder += 2 * dim * (dim // 2) * 2 * ratio * length  # transposed conv, over its input frames
        length *= ratio
        dim //= 2
        decoder += _residual_flops(c, dim, length)
    decoder += 2 * nf * c["channels"] * c["last_kernel_size"] * length
    return encoder, decoder, frames


def codec_flops_parts(config: Any, batch: int, samples: int) -> dict[str, int]:
    """Forward FLOPs of a codec over `batch` waveforms of `samples` samples: {"encoder", "decoder",
    "quantizer"} (the quantizer's nearest-code distances for all `n_q` codebooks)."""
    c = _as_dict(config)
    encoder, decoder, frames = _seanet_flops(c, samples)
    quantizer = c["n_q"] * 2 * c["dimension"] * c["card"] * frames
    return {"encoder": batch * encoder, "decoder": batch * decoder, "quantizer": batch * quantizer}


def codec_forward_flops(config: Any, batch: int, samples: int) -> int:
    """FLOPs of one codec forward (encode, quantize, decode) over `batch` waveforms of `samples` samples."""
    return sum(codec_flops_parts(config, batch, samples).values())


def codec_train_flops(config: Any, batch: int, samples: int) -> int:
    """FLOPs of one codec training step: 3x the encoder and decoder (forward + backward), the quantizer once."""
    parts = codec_flops_parts(config, batch, samples)
    return 3 * (parts["encoder"] + parts["decoder"]) + parts["quantizer"]
