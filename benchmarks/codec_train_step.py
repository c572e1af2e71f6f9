"""Training step time and peak memory of the EnCodec 32 kHz CodecModule (configs/codec/encodec_32khz.yaml)
at batch 8 x 1 s: one full step = generator forward, discriminator step, balanced generator step.

    python benchmarks/codec_train_step.py [--batch 8] [--seconds 1] [--steps 3] [--device cpu|cuda]
                                          [--precision 32-true|bf16-mixed] [--threads N]

Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the growth of the process's peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from lightning_musicgen.codec import CodecModule

    init = yaml.safe_load((ROOT / "configs/codec/encodec_32khz.yaml").read_text())["model"]["init_args"]
    init["log_audio_every_n_steps"] = 0
    torch.manual_seed(0)
    module = CodecModule(**init)
    n = int(module.codec_config.sample_rate * args.seconds)
    data = torch.randn(args.batch * (args.steps + 1), 1, n) * 0.2

    class Timer(Callback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def _sync(self):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def on_train_batch_start(self, *a):
            self._sync()
            if len(self.times) == 1 and args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a):
            self._sync()
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = L.Trainer(max_steps=args.steps + 1, accelerator="gpu" if args.device.startswith("cuda") else "cpu",
                        devices=1, precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, DataLoader(data, batch_size=args.batch))
    step = statistics.median(timer.times[1:])
    if args.device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA max allocated)"
    else:
        peak = f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20:.2f} GiB (CPU peak RSS growth)"
    params = sum(p.numel() for p in module.generator.parameters()) / 1e6
    dparams = sum(p.numel() for p in module.discriminator.parameters()) / 1e6
    print(f"EnCodec 32 kHz training step: batch {args.batch} x {args.seconds:g} s, {args.device}, {args.precision}, "
          f"threads {torch.get_num_threads()}; generator {params:.1f} M params, discriminator {dparams:.2f} M")
    print(f"  step time (median of {len(timer.times) - 1}): {step:.2f} s   "
          f"({args.batch * args.seconds / step:.2f} s of audio per s)")
    print(f"  peak memory: {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
