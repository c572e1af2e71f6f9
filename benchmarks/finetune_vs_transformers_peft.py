"""Fine-tuning step of musicgen-small: ours (init_from a converted model, LoRA through peft or full)
against transformers' MusicgenForConditionalGeneration + peft, the approach of the popular
fine-tuning scripts. Peak memory and step time, side by side, measured in one run.

Model: musicgen-small's architecture (LM 1024 wide, 24 layers, 4 x 2048 codes; t5-base text encoder;
EnCodec 32 kHz), random weights built locally in transformers' layout, saved, and converted with
`convert --from-hf` (what a user does with the official weights). Both sides load their own format.
Step: one caption -> frozen text encoder -> LM teacher-forced on the delay pattern of `--seconds` of
codes (batch 1) -> per-codebook cross-entropy -> backward -> AdamW (fused, both sides). The codec
is not run (token batches).
  lora: r=16, alpha=32, dropout 0.05 on self-attention, cross-attention and FFN (transformers:
        q/k/v/out_proj, encoder_attn q/k/v/out_proj, fc1, fc2; ours: the fused qkv, out, q, kv, out,
        ffn.0, ffn.2 -- the same weights, fewer adapter matrices on our fused projections)
  full: every decoder weight and the text projection train; text and audio encoders frozen
Precision: fp32 and bf16 autocast (`bf16-mixed`).
Peak memory: each variant in its own process; parameters + AdamW state (created beforehand by a
zero-gradient update with lr 0) + the peak growth of live tensor allocations during a training step
(torch's CPU memory profiler). Step time: the median of `--steps` steps, the profiled one included
(the profiler only records allocations; its overhead is small against steps of seconds).

    python benchmarks/finetune_vs_transformers_peft.py --work /tmp/ft_bench [--seconds 10] \
        [--bf16-seconds 1] [--steps 2] [--variants ours_lora,hf_lora,ours_full,hf_full]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CARD, K = 2048, 4
TEXT = ["lo-fi hip hop beat with a warm piano and vinyl crackle"]
LORA = dict(r=16, alpha=32, dropout=0.05)


def build(work: Path) -> Path:
    """Random musicgen-small in transformers' layout + our converted file (once)."""
    from transformers import (AutoTokenizer, EncodecConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, T5Config)

    from lightning_musicgen.convert.musicgen import convert_musicgen
    from lightning_musicgen.lm.conditioners import packaged_minilm_path
    ours = work / "musicgen-small"
    if ours.exists():
        return ours
    torch.manual_seed(0)
    t5 = T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                        codebook_size=CARD, hidden_size=128, num_lstm_layers=2, target_bandwidths=[2.2],
                        codebook_dim=128, compress=2, norm_type="weight_norm", use_conv_shortcut=False,
                        normalize=False, pad_mode="reflect")
    dec = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                ffn_dim=4096, num_codebooks=K, pad_token_id=CARD, bos_token_id=CARD,
                                decoder_start_token_id=CARD, max_position_embeddings=2048)
    hf = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                                                         decoder=dec.to_dict()))
    hf.save_pretrained(work / "hf")
    AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True).save_pretrained(work / "hf")
    del hf
    return convert_musicgen(work / "hf", ours)


def hf_targets(model) -> list[str]:
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "encoder_attn.q_proj",
             "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj", "fc1", "fc2")
    return [n for n, _ in model.named_modules() if n.startswith("decoder.model.decoder.layers.") and n.endswith(names)]


def setup_variant(variant: str, work: Path, frames: int):
    """-> (loss_fn, trainable params, all modules) for one variant."""
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, CARD, (1, K, frames), generator=g)
    method = variant.split("_")[1]
    if variant.startswith("ours"):
        from lightning_musicgen.lm.module import MusicGenModule
        module = MusicGenModule(init_from=str(work / "musicgen-small"), lora=LORA if method == "lora" else None,
                                conditioner={"cfg_dropout": 0.0, "text": {"word_dropout": 0.0}})
        module.train()

        def loss_fn():
            return module.lm.loss(codes, module.conditioner(TEXT))[0]
        return loss_fn, [p for p in module.parameters() if p.requires_grad], module
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from lightning_musicgen.lm.patterns import get_pattern
    model = MusicgenForConditionalGeneration.from_pretrained(work / "hf")  # sdpa where supported (the decoder)
    tokens = AutoTokenizer.from_pretrained(work / "hf")(TEXT, return_tensors="pt")
    model.text_encoder.requires_grad_(False)
    model.audio_encoder.requires_grad_(False)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=hf_targets(model)))
    model.train()
    model.get_submodule("text_encoder" if method == "full" else "base_model.model.text_encoder").eval()
    pattern = get_pattern("delay", K)
    seq = pattern.build(codes, CARD)
    inputs = torch.cat([torch.full((1, K, 1), CARD), seq[..., :-1]], dim=-1).flatten(0, 1)

    def loss_fn():
        logits = model(**tokens, decoder_input_ids=inputs).logits.view(1, K, -1, CARD)
        valid = seq != CARD
        ce = F.cross_entropy(logits.float().flatten(0, 2), seq.masked_fill(~valid, -100).flatten(),
                             ignore_index=-100, reduction="none").view_as(seq)
        return (ce.sum(dim=(0, 2)) / valid.sum(dim=(0, 2))).mean()
    return loss_fn, [p for p in model.parameters() if p.requires_grad], model


def run_variant(variant: str, precision: str, work: Path, seconds: float, steps: int) -> dict:
    from lightning_musicgen.memory import measured_peak
    torch.manual_seed(0)
    frames = int(round(seconds * 50))
    loss_fn, params, model = setup_variant(variant, work, frames)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    for p in params:  # AdamW's state as in a steady run, without a training step: a zero-gradient update
        p.grad = torch.zeros_like(p)
    lr = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    opt.param_groups[0]["lr"] = lr
    opt.zero_grad(set_to_none=True)
    resident = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    resident += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
    start = time.perf_counter()
    peak, _ = measured_peak(step)  # the first step, profiled and timed
    times = [time.perf_counter() - start]
    for _ in range(steps - 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"variant": variant, "precision": precision, "seconds": seconds, "trainable": sum(p.numel() for p in params),
            "peak_gib": (resident + peak) / 2**30, "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the built models")
    parser.add_argument("--seconds", type=float, default=10.0, help="crop length in fp32")
    parser.add_argument("--bf16-seconds", type=float, default=10.0, help="crop length in bf16 (slow on AVX2 CPUs)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="ours_lora,hf_lora,ours_full,hf_full")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    if a.one == "build":
        build(a.work)
        return
    if a.one:  # child process: one variant
        variant, precision = a.one.split(":")
        seconds = a.seconds if precision == "fp32" else a.bf16_seconds
        print(json.dumps(run_variant(variant, precision, a.work, seconds, a.steps)), flush=True)
        return
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "musicgen-small").exists():  # in a child: the parent stays small
        subprocess.run([sys.executable, __file__, "--work", str(a.work), "--one", "build"], check=True)
    results = []
    for precision in a.precisions.split(","):
        for variant in a.variants.split(","):
            cmd = [sys.executable, __file__, "--work", str(a.work), "--seconds", str(a.seconds), "--bf16-seconds",
                   str(a.bf16_seconds), "--steps", str(a.steps), "--threads", str(a.threads),
                   "--one", f"{variant}:{precision}"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{variant}:{precision} failed")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print("\n| precision | crop | method | trainable ours / theirs | peak GiB ours / theirs | step s ours / theirs |")
    print("|---|---|---|---|---|---|")
    by = {(r["variant"], r["precision"]): r for r in results}
    for precision in a.precisions.split(","):
        for method in ("lora", "full"):
            o, h = by.get((f"ours_{method}", precision)), by.get((f"hf_{method}", precision))
            if o and h:
                print(f"| {precision} | {o['seconds']:g} s | {method} | {o['trainable'] / 1e6:.1f} M / {h['trainable'] / 1e6:.1f} M "
                      f"| {o['peak_gib']:.2f} / {h['peak_gib']:.2f} ({o['peak_gib'] / h['peak_gib']:.2f}x) "
                      f"| {o['step_s']:.1f} / {h['step_s']:.1f} ({h['step_s'] / o['step_s']:.2f}x faster) |")


if __name__ == "__main__":
    main()
