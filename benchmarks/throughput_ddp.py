"""Sanity figure for data parallelism: training samples/s of the demo LM with 1 and 2 CPU processes
(Lightning DDP, gloo), measured side by side in one run.

    .venv/bin/python benchmarks/throughput_ddp.py [--steps 40] [--batch-size 8] [--frames 300]

Each configuration runs in its own subprocess with one thread per process, on synthetic token
shards (4 codebooks x 64 codes, `--frames` frames = 6 s at 50 Hz), the demo LM architecture
(configs/demo/musicgen.yaml, MiniLM text conditioning). Reported: the AudioThroughputMonitor's
`train/samples_per_sec` and `lm/tokens_per_sec` (last window) and a wall-clock rate over the
steps after warm-up. On a 2-core machine the ideal ratio is 2.0; the gap is the gradient
all-reduce and the shared memory bandwidth.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch
    import yaml
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger

    from lightning_musicgen.training import AudioThroughputMonitor
    from lightning_musicgen.data import TokenDataModule
    from lightning_musicgen.lm.module import MusicGenModule

    torch.set_num_threads(1)
    seed_everything(0)
    demo = yaml.safe_load((ROOT / "configs/demo/musicgen.yaml").read_text())["model"]["init_args"]

    class WallClock(Callback):
        def __init__(self, warmup: int):
            self.warmup, self.t0, self.rate = warmup, None, None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == self.warmup:
                self.t0 = time.perf_counter()
            elif trainer.global_step == trainer.max_steps and self.t0 is not None:
                steps = trainer.max_steps - self.warmup
                self.rate = steps * args.batch_size * trainer.world_size / (time.perf_counter() - self.t0)

    module = MusicGenModule(lm={**demo["lm"], "n_q": 4, "card": 64}, conditioner=demo["conditioner"],
                            codec_checkpoint=None, lr=demo["lr"], warmup_steps=5)
    data = TokenDataModule(args.shards, None, segment_duration=args.frames / 50.0, batch_size=args.batch_size,
                           num_workers=0, epoch_steps=args.steps + 5, shuffle_buffer=16)
    clock = WallClock(warmup=min(10, args.steps // 2))
    trainer = Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                      max_steps=args.steps, precision="32-true", logger=CSVLogger(args.out, name="csv"),
                      callbacks=[AudioThroughputMonitor(window_size=10), clock], log_every_n_steps=5,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    if trainer.is_global_zero:
        rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
        last = [r for r in rows if r.get("train/samples_per_sec")][-1]
        Path(args.out, "result.json").write_text(json.dumps({
            "devices": args.devices, "samples_per_sec": float(last["train/samples_per_sec"]),
            "tokens_per_sec": float(last["lm/tokens_per_sec"]), "wall_samples_per_sec": clock.rate}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--shards", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from test_lm_module import write_token_shards   # the structured synthetic tokens of the LM tests

    tmp = Path(tempfile.mkdtemp(prefix="lmg-bench-"))
    write_token_shards(tmp / "train", 64, args.frames, 64, seed=0)
    results = []
    for devices in (1, 2):
        out = tmp / f"d{devices}"
        out.mkdir()
        cmd = [sys.executable, __file__, "--worker", "--devices", str(devices), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--frames", str(args.frames), "--shards", str(tmp / "train"),
               "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{devices} process(es) failed:\n{res.stderr[-3000:]}")
        results.append(json.loads((out / "result.json").read_text()))
    print(f"demo LM, batch {args.batch_size}/process x {args.frames} frames x 4 codebooks, {args.steps} steps, "
          f"1 thread/process")
    print(f"{'processes':>9} {'samples/s':>10} {'tokens/s':>10} {'wall samples/s':>15}")
    for r in results:
        print(f"{r['devices']:>9} {r['samples_per_sec']:>10.2f} {r['tokens_per_sec']:>10.0f} "
              f"{r['wall_samples_per_sec']:>15.2f}")
    print(f"speed-up 2 vs 1 process: {results[1]['samples_per_sec'] / results[0]['samples_per_sec']:.2f}x "
          f"(monitor), {results[1]['wall_samples_per_sec'] / results[0]['wall_samples_per_sec']:.2f}x (wall clock)")


if __name__ == "__main__":
    main()
