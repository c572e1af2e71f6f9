"""Streaming pipeline throughput: 30 s crops at 32 kHz from FLAC shards, with 1 and 2 DataLoader workers.

    python benchmarks/data_pipeline.py                      # uses data/demo/train if present
    python benchmarks/data_pipeline.py --shards DIR --batches 40 --workers 1 2

Reports crops/s and the realtime factor (seconds of audio delivered per wall-clock second) per setting,
side by side in one run. Without shards it first writes 20 minutes of synthetic FLAC shards to a temp dir.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from lightning_musicgen.data import AudioDataModule

ROOT = Path(__file__).resolve().parents[1]


def synthetic_shards(directory: Path, minutes: float = 20.0) -> Path:
    from lightning_musicgen.data.prepare import prepare
    src = directory / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(int(minutes)):
        t = np.arange(60 * 32000) / 32000
        x = 0.2 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(src / f"track{i:03d}.flac", x, 32000)
    prepare(src, directory / "shards", shard_size=4, workers=2, progress=False)
    return directory / "shards"


def measure(shards, workers: int, batches: int, batch_size: int, segment: float) -> dict:
    dm = AudioDataModule(shards, sample_rate=32000, channels=1, segment_duration=segment, batch_size=batch_size,
                         num_workers=workers, epoch_steps=batches + 4, shuffle_buffer=32, seed=0)
    it = iter(dm.train_dataloader())
    for _ in range(4):  # warm-up: worker start, shuffle buffer fill
        next(it)
    start = time.perf_counter()
    crops = 0
    for batch in it:
        crops += batch["wav"].shape[0]
    wall = time.perf_counter() - start
    return {"workers": workers, "crops": crops, "seconds": round(wall, 2), "crops_per_s": round(crops / wall, 2),
            "realtime": round(crops * segment / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=None, help="shard dir/pattern (default data/demo/train or synthetic)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment", type=float, default=30.0)
    args = p.parse_args()
    tmp = None
    shards = args.shards
    if shards is None:
        shards = ROOT / "data/demo/train"
        if not (shards / "index.json").exists():
            tmp = tempfile.TemporaryDirectory()
            shards = synthetic_shards(Path(tmp.name))
    results = [measure(shards, w, args.batches, args.batch_size, args.segment) for w in args.workers]
    print(f"shards: {shards}; {args.segment:g} s crops at 32 kHz, batch {args.batch_size}, {args.batches} batches")
    print(f"{'workers':>7} {'crops/s':>9} {'x realtime':>11}")
    for r in results:
        print(f"{r['workers']:>7} {r['crops_per_s']:>9.1f} {r['realtime']:>11.1f}")
    if len(results) > 1:
        print(f"speed-up {results[-1]['workers']} vs {results[0]['workers']} workers: "
              f"{results[-1]['crops_per_s'] / results[0]['crops_per_s']:.2f}x")
    print(json.dumps(results))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
