"""`CpuDecodeKernels`: faster CPU kernels for the LM's cached decoding steps (inference only).

A `TorchFunctionMode` active only inside `MusicGen`'s decoding loop. It reroutes two functions and
leaves everything else (and anything run with autograd on) to the regular kernels; outputs equal
the regular ones up to float rounding:
- `F.linear` on a weight it packed: oneDNN's kernel on the packed copy (`compat.onednn_linear`);
- `F.scaled_dot_product_attention` of ONE query position on CPU: two matmuls and a float32 softmax.

The modules it is built from are only read: the packed weights are new tensors held by the mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightning_musicgen import compat


class CpuDecodeKernels(TorchFunctionMode):
    """Faster kernels for the LM's decoding steps on CPU (inference only; numerics equal up to
    float rounding).

    - Linear layers: decoding multiplies a few rows (2 x batch with CFG) by every weight matrix
      once per step, so a step is bound by how fast the weights stream through memory. `F.linear`
      re-lays the weight out for its kernel on every call; packing each weight once into oneDNN's
      blocked layout (the kernels inductor uses after freezing) removes that: 1.4-2.5x faster
      per matmul here (fp32 and bf16, 2 and 8 rows). Costs one packed copy of the LM's weights
      while generating.
    - Attention of a single new query against the KV cache: `scaled_dot_product_attention`'s CPU
      flash kernel is tiled for long queries and costs milliseconds per call for one query over
      a few hundred cached keys; two small matmuls and a float32 softmax do it 5-10x faster."""

    def __init__(self, module: torch.nn.Module, rows: int, pack_linears: bool = True):
        super().__init__()
        self.packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if pack_linears and self.can_pack(next(module.parameters()).dtype):
            for m in module.modules():
                if isinstance(m, torch.nn.Linear) and m.weight.device.type == "cpu":
                    self.packed[id(m.weight)] = (m.weight, compat.onednn_pack_linear_weight(m.weight.detach(), rows))

    @staticmethod
    def can_pack(dtype: torch.dtype) -> bool:
        """oneDNN's packed kernels exist and run for `dtype` on this CPU (bf16 needs AVX512 or bf16
        hardware; elsewhere the plain kernels are used)."""
        return compat.onednn_linear_kernels_available(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled():
            return func(*args, **kwargs)
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            entry = self.packed.get(id(weight))
            if entry is not None and entry[0] is weight and x.dtype == weight.dtype:
                y = compat.onednn_linear(x.reshape(-1, x.shape[-1]).contiguous(), entry[1], bias)
                return y.view(*x.shape[:-1], weight.shape[0])
        elif func is F.scaled_dot_product_attention:
            out = single_query_attention(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def single_query_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                           **other) -> torch.Tensor | None:
    """softmax(q k^T * scale + mask) v for ONE query position (None: not that case, use sdpa)."""
    if query.shape[-2] != 1 or is_causal or dropout_p or other or query.device.type != "cpu":
        return None
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.float()
    return torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)
