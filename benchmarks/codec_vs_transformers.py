"""Encode + decode speed (x realtime) of our CompressionModel against transformers' EncodecModel
with the same (converted) weights, in one run on one machine. Default: the 32 kHz MusicGen tokenizer
(random weights; speed does not depend on their values), mono, 10 s clips. Runs are interleaved;
it reports medians of wall time and of process CPU time (the fairer figure on a loaded machine).

    python benchmarks/codec_vs_transformers.py [--seconds 10] [--batch 1] [--repeats 5] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from test_codec import random_hf_encodec
    from lightning_musicgen.convert.encodec import encodec_from_transformers

    hf = random_hf_encodec().to(args.device)
    ours = encodec_from_transformers(hf.cpu()).to(args.device).eval()
    hf = hf.to(args.device)
    wav = torch.randn(args.batch, 1, int(32000 * args.seconds), device=args.device) * 0.2

    def run_hf():
        codes = hf.encode(wav).audio_codes
        return hf.decode(codes, [None]).audio_values

    def run_ours():
        return ours.decode(ours.encode(wav))

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    times = {"transformers": [], "ours": []}
    cpu = {"transformers": [], "ours": []}
    with torch.inference_mode():
        assert torch.allclose(run_hf(), run_ours(), atol=1e-4)  # same numbers (also the warm-up)
        for _ in range(args.repeats):  # interleaved, so machine load hits both alike
            for name, fn in (("transformers", run_hf), ("ours", run_ours)):
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    audio = args.seconds * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"EnCodec 32 kHz encode+decode, batch {args.batch} x {args.seconds:g} s, device {args.device}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}")
    for name in ("transformers", "ours"):
        print(f"  {name:<13} {med[name] * 1000:8.1f} ms   {audio / med[name]:6.1f}x realtime   "
              f"(CPU time {med_cpu[name] * 1000:8.1f} ms)")
    print(f"  speed ratio ours / transformers: {med['transformers'] / med['ours']:.2f}x wall, "
          f"{med_cpu['transformers'] / med_cpu['ours']:.2f}x CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
