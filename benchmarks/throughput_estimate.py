"""On-paper figures for docs/scaling.md: training FLOPs, expected tokens/s and MFU of MusicGen-small
on one H100, and per-GPU memory of small/medium/large under DDP and FSDP.

    .venv/bin/python benchmarks/throughput_estimate.py [--mfu 0.4] [--gpus 8] [--micro-batch 4]

Parameter counts come from our own MusicGenLM built on the meta device from configs/musicgen/*.yaml
(nothing is allocated); everything else is arithmetic, printed with its inputs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
H100_SXM_BF16 = 989.4e12      # dense bf16 peak (what Lightning's get_available_flops uses for H100 SXM)
FRAME_RATE = 50               # EnCodec 32 kHz: 50 frames/s, 4 codes per frame
SECONDS = 30                  # MusicGen trains on 30 s crops: T = 1500 frames
TEXT_TOKENS = 32              # typical t5 caption length (cross-attention keys)
ENCODEC_GFLOP_PER_AUDIO_S = 6.2   # our CompressionModel.encode (encodec_32khz.yaml), FlopCounterMode, 1 s input
ACT_BYTES_PER_TOKEN_LAYER = 40    # bf16 activations saved per position per layer, in units of `dim` (see doc)


def lm_shapes(size: str) -> dict:
    from lightning_musicgen.lm.model import MusicGenLM
    cfg = yaml.safe_load((ROOT / f"configs/musicgen/{size}.yaml").read_text())["model"]["init_args"]["lm"]
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with torch.device("meta"):
        lm = MusicGenLM(**cfg)
    layer = lm.transformer.layers[0]
    return {"size": size, "dim": cfg["dim"], "layers": cfg["num_layers"], "card": cfg.get("card", 2048),
            "n_q": cfg.get("n_q", 4), "params": sum(p.numel() for p in lm.parameters()),
            "embedding": sum(p.numel() for p in lm.emb.parameters()),
            "layer": sum(p.numel() for p in layer.parameters())}


def train_flops_per_frame(s: dict, frames: int) -> tuple[float, float, float]:
    """(6 x matmul params, attention, total) FLOPs per sequence step (frame) for forward + backward.
    Matmul params: all but the embedding tables (lookups). Attention: 12 L T d per position for the
    self-attention scores and values counted over the full T (PaLM's convention; a causal kernel does
    half), plus 12 L Lc d for cross-attention over Lc text tokens."""
    matmul = s["params"] - s["embedding"]
    dense = 6 * matmul
    attention = 12 * s["layers"] * s["dim"] * (frames + TEXT_TOKENS)
    return dense, attention, dense + attention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mfu", type=float, default=0.40, help="assumed model FLOPs utilisation")
    p.add_argument("--gpus", type=int, default=8, help="GPUs sharing the FSDP shards")
    p.add_argument("--micro-batch", type=int, default=4, help="30-s samples per GPU per step")
    args = p.parse_args()
    frames = FRAME_RATE * SECONDS
    sizes = [lm_shapes(s) for s in ("small", "medium", "large")]

    s = sizes[0]
    dense, attn, total = train_flops_per_frame(s, frames)
    frames_per_s = args.mfu * H100_SXM_BF16 / total
    print(f"## MusicGen-small on one H100 SXM (bf16 {H100_SXM_BF16 / 1e12:.0f} TFLOP/s), T = {frames} frames")
    print(f"params {s['params'] / 1e6:.1f} M (embeddings {s['embedding'] / 1e6:.1f} M, {s['layers']} layers x "
          f"{s['layer'] / 1e6:.2f} M)")
    print(f"train FLOPs/frame: 6 x {(s['params'] - s['embedding']) / 1e6:.1f} M = {dense / 1e9:.3f} G "
          f"+ attention 12 x {s['layers']} x {s['dim']} x ({frames} + {TEXT_TOKENS}) = {attn / 1e9:.3f} G "
          f"=> {total / 1e9:.3f} GFLOP")
    print(f"at MFU {args.mfu:.0%}: {frames_per_s:,.0f} frames/s = {frames_per_s * s['n_q']:,.0f} codes/s "
          f"= {frames_per_s / FRAME_RATE:,.0f} s of audio/s = {frames_per_s / frames:.1f} 30-s samples/s")
    enc = ENCODEC_GFLOP_PER_AUDIO_S * 1e9 / FRAME_RATE
    print(f"on-the-fly EnCodec encoding adds {enc / 1e9:.3f} GFLOP/frame (forward only) = "
          f"{enc / total:.1%} of the LM's FLOPs (none with pre-tokenized shards)")
    for mfu in (0.3, 0.5):
        print(f"  MFU {mfu:.0%}: {mfu * H100_SXM_BF16 / total:,.0f} frames/s")

    print(f"\n## Memory per GPU, bf16-mixed AdamW, micro-batch {args.micro_batch} x {SECONDS} s, "
          f"FSDP over {args.gpus} GPUs (GB = 1e9 bytes)")
    print("states: fp32 weights 4 + fp32 grads 4 + Adam m, v 8 = 16 bytes/param; DDP adds a bf16 autocast "
          "copy of the weights (2 bytes/param) during the step")
    print(f"activations: {ACT_BYTES_PER_TOKEN_LAYER} x dim bytes per position per layer (bf16, flash attention, "
          "no dropout); with checkpointing 2 x dim per layer + one layer recomputed")
    header = (f"{'size':<7}{'params':>8}{'DDP states':>11}{'act/sample':>11}{'act ckpt/sample':>16}"
              f"{'DDP total':>10}{'DDP+ckpt':>10}{'FSDP states':>12}{'FSDP+ckpt total':>16}")
    print(header)
    for s in sizes:
        P, d, L = s["params"], s["dim"], s["layers"]
        states = 16 * P
        autocast_copy = 2 * P
        act = ACT_BYTES_PER_TOKEN_LAYER * frames * d * L
        act_ckpt = 2 * frames * d * L + ACT_BYTES_PER_TOKEN_LAYER * frames * d
        logits = frames * s["n_q"] * s["card"] * (2 + 4 + 4)     # bf16 logits, fp32 for CE and its grad
        ddp = states + autocast_copy + args.micro_batch * (act + logits)
        ddp_ckpt = states + autocast_copy + args.micro_batch * (act_ckpt + logits)
        fsdp_states = states / args.gpus
        gathered = 2 * 2 * s["layer"] * 2 + 2 * (P - L * s["layer"])   # 2 units of bf16 params + grads, root
        fsdp = fsdp_states + gathered + args.micro_batch * (act_ckpt + logits)
        print(f"{s['size']:<7}{P / 1e9:>7.2f}B{states / 1e9:>10.1f} {act / 1e9:>10.2f} {act_ckpt / 1e9:>15.2f} "
              f"{ddp / 1e9:>9.1f} {ddp_ckpt / 1e9:>9.1f} {fsdp_states / 1e9:>11.1f} {fsdp / 1e9:>15.1f}")


if __name__ == "__main__":
    main()
