"""Model FLOPs of MusicGenLM, for MFU (`train/mfu`, benchmarks/gpu_check.py).

Convention (PaLM's): 2 FLOPs per multiply-add of every matmul of the LM: per sequence position the
QKV and output projections, the FFN, the attention scores and values (4 * dim * sequence length per
layer: causal attention counted in full), with cross-attention its Q and output projections and
scores/values over the condition; per pattern step the K output heads; once per sequence the cross-attention
K/V projections of the condition. Conditions prepended to the sequence (`fuse: prepend`) are sequence
positions. A training step (forward + backward) counts 3x the forward. The frozen codec and text encoder and
the conditioner's projection are not counted. `config`: an `LMConfig` or its dict.
"""
from __future__ import annotations

from typing import Any


def lm_forward_flops(config: Any, batch: int, steps: int, cond_len: int = 0, prefix_len: int = 0) -> int:
    """FLOPs of one forward of MusicGenLM over `batch` sequences of `steps` pattern steps, with `cond_len`
    cross-attended condition tokens (ignored by an LM without cross-attention) and `prefix_len` prepended
    condition positions."""
    config = config.to_dict() if hasattr(config, "to_dict") else config
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
