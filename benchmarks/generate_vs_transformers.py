"""Generation speed: ours (fp32 and bf16) against transformers' MusicgenForConditionalGeneration.generate.

Same converted weights (randomly initialised, MusicGen-small's decoder: 1024 x 24 layers, 16 heads,
4 x 2048 codes; EnCodec 32 kHz at its real size; a t5-base-shaped text encoder), CFG 3.0, top-k 250,
10 s of audio (500 frames, 503 delay-pattern steps), batch 1 and 4, 2 CPU threads, in one run.

Reported per configuration: end-to-end seconds (text encoding + LM + codec decode), LM ms/step
(end-to-end minus decode, over the number of steps), decode seconds, speed-ups against transformers,
and the memory-bandwidth floor: bytes the LM must read per step (weights in its dtype, excluding
the embedding tables and the cross-attention K/V projections that run once, plus the average
KV cache) divided by the measured read bandwidth of this machine.

    python benchmarks/generate_vs_transformers.py                    # the full run (~10 min)
    python benchmarks/generate_vs_transformers.py --duration 2 --batch 1 --layers 4   # a smoke run
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def measure_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a streaming read (fp32 sum over a buffer much larger than the caches); best of N."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def hf_configs(dim: int, layers: int, heads: int):
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    t5 = T5Config(vocab_size=30522, d_model=768, d_kv=64, num_heads=12, d_ff=3072, num_layers=12,
                  num_decoder_layers=1)  # t5-base's encoder shape (vocab of the tokenizer we ship)
    encodec = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                            codebook_size=2048, hidden_size=128, num_lstm_layers=2, target_bandwidths=[2.2],
                            use_causal_conv=False, use_conv_shortcut=False, normalize=False, chunk_length_s=None,
                            codebook_dim=128, residual_kernel_size=3, compress=2, num_residual_layers=1)
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=dim, num_hidden_layers=layers,
                                    num_attention_heads=heads, ffn_dim=4 * dim, num_codebooks=4,
                                    max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048,
                                    decoder_start_token_id=2048)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=encodec.to_dict(), decoder=decoder.to_dict())


def lm_bytes_per_step(lm, rows: int, steps: int) -> int:
    """Weights read by one decoding step (in the LM's dtype) + the average KV cache read."""
    skip = ("emb.", "cross_attn.kv.")  # lookups of a few rows; the cross K/V are computed once
    weights = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if not n.startswith(skip)
                  and ".cross_attn.kv." not in n)
    elem = next(lm.parameters()).element_size()
    layers = len(lm.transformer.layers)
    kv = 2 * layers * rows * (steps / 2) * lm.dim * elem
    return int(weights + kv)


class StepClock:
    """Timestamps of every decoding step; the median step time is robust to a busy machine."""

    def __init__(self):
        self.stamps = []

    def __call__(self, *args):  # our callback(done, total) and transformers' LogitsProcessor(ids, scores)
        self.stamps.append(time.perf_counter())
        return args[1] if len(args) == 2 and isinstance(args[1], torch.Tensor) else None

    def median_ms(self) -> float:
        deltas = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(deltas) * 1e3 if deltas else float("nan")


def run_transformers(hf, tok, texts, frames, seed=0) -> dict:
    from transformers import LogitsProcessorList
    timings, clock = {"decode": 0.0}, StepClock()
    decode = hf.audio_encoder.decode

    def timed_decode(*a, **k):
        t = time.perf_counter()
        out = decode(*a, **k)
        timings["decode"] += time.perf_counter() - t
        return out

    hf.audio_encoder.decode = timed_decode
    try:
        inputs = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
        torch.manual_seed(seed)
        t = time.perf_counter()
        with torch.inference_mode():
            wav = hf.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=frames + 3,
                              logits_processor=LogitsProcessorList([clock]))
        total = time.perf_counter() - t
    finally:
        hf.audio_encoder.decode = decode
    return {"total": total, "decode": timings["decode"], "samples": wav.shape[-1], "median_ms": clock.median_ms()}


def run_ours(model, texts, duration, seed=0) -> dict:
    clock = StepClock()
    t = time.perf_counter()
    codes = model.generate_tokens(texts, duration, cfg_coef=3.0, top_k=250, seed=seed, callback=clock)
    t_tokens = time.perf_counter() - t
    wav = model.decode(codes)
    total = time.perf_counter() - t
    return {"total": total, "decode": total - t_tokens, "samples": wav.shape[-1], "median_ms": clock.median_ms()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (the median is kept)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from lightning_musicgen.convert.musicgen import convert_musicgen
    from lightning_musicgen.generation import MusicGen
    from lightning_musicgen.lm.conditioners import packaged_minilm_path

    bandwidth = measure_read_bandwidth()
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s, torch threads: {torch.get_num_threads()}")
    texts_all = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums",
                 "lofi hip hop beat with a mellow piano", "an orchestral film score with strings and brass"]
    results = []

    def record(impl, dtype, batch, runs, lm, frames, steps):
        total = statistics.median(r["total"] for r in runs)
        decode = statistics.median(r["decode"] for r in runs)
        median = statistics.median(r["median_ms"] for r in runs)
        floor_ms = lm_bytes_per_step(lm, 2 * batch, steps) / bandwidth * 1e3
        row = {"impl": impl, "dtype": dtype, "batch": batch, "steps": steps, "total_s": total, "decode_s": decode,
               "ms_per_step": (total - decode) / steps * 1e3, "median_ms_per_step": median,
               "floor_ms_per_step": floor_ms, "audio_s": runs[0]["samples"] / 32000}
        results.append(row)
        print(f"{impl:>12} {dtype} batch {batch}: {total:7.2f} s end to end, {row['ms_per_step']:6.1f} ms/step "
              f"(median {median:6.1f}, floor {floor_ms:5.1f}), decode {decode:5.2f} s", flush=True)

    # one implementation alive at a time keeps the peak memory near one model's
    torch.manual_seed(0)
    hf = MusicgenForConditionalGeneration(hf_configs(args.dim, args.layers, args.heads)).eval()
    tok = AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True)
    tmp = tempfile.TemporaryDirectory()
    hf.save_pretrained(Path(tmp.name) / "hf")
    tok.save_pretrained(Path(tmp.name) / "hf")
    ckpt = convert_musicgen(Path(tmp.name) / "hf", Path(tmp.name) / "musicgen.pt")
    shutil.rmtree(Path(tmp.name) / "hf")
    frame_rate = 32000 / 640
    frames = int(round(args.duration * frame_rate))
    steps = frames + 3  # delay pattern, 4 codebooks
    if not args.skip_transformers:
        hf_lm = MusicGen.from_checkpoint(ckpt, device="cpu", dtype="float32").lm  # for the floor (same weights)
        for batch in args.batch:
            texts = (texts_all * batch)[:batch]
            run_transformers(hf, tok, texts, 5)  # warm-up
            record("transformers", "fp32", batch, [run_transformers(hf, tok, texts, frames)
                                                   for _ in range(args.repeats)], hf_lm, frames, steps)
        del hf_lm
    del hf
    gc.collect()
    for dtype in ("float32", "bfloat16"):
        model = MusicGen.from_checkpoint(ckpt, device="cpu", dtype=dtype)
        for batch in args.batch:
            texts = (texts_all * batch)[:batch]
            run_ours(model, texts, 0.1)  # warm-up
            record("ours", {"float32": "fp32", "bfloat16": "bf16"}[dtype], batch,
                   [run_ours(model, texts, args.duration) for _ in range(args.repeats)], model.lm, frames, steps)
        del model
        gc.collect()
    tmp.cleanup()
    print()
    print("| impl | dtype | batch | end-to-end s | LM ms/step (mean) | median ms/step | floor ms/step | "
          "median / floor | decode s | speed-up end-to-end | speed-up per step (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ref = next((x for x in results if x["impl"] == "transformers" and x["batch"] == r["batch"]), None)
        e2e = f"{ref['total_s'] / r['total_s']:.2f}x" if ref else "-"
        per = f"{ref['median_ms_per_step'] / r['median_ms_per_step']:.2f}x" if ref else "-"
        print(f"| {r['impl']} | {r['dtype']} | {r['batch']} | {r['total_s']:.1f} | {r['ms_per_step']:.1f} | "
              f"{r['median_ms_per_step']:.1f} | {r['floor_ms_per_step']:.1f} | "
              f"{r['median_ms_per_step'] / r['floor_ms_per_step']:.2f} | {r['decode_s']:.2f} | {e2e} | {per} |")
    if args.json:
        args.json.write_text(json.dumps({"bandwidth_GBps": bandwidth / 1e9, "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
