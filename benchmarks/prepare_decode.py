"""The cost of `prepare`'s truncation check: decoding a whole file with `read_checked` (8192-frame blocks,
header and container checks) against one `read_audio` call, side by side in one run.

    python benchmarks/prepare_decode.py [--seconds 120] [--repeats 5]

Writes a stereo 44.1 kHz file of `--seconds` seconds as WAV, FLAC, OGG Vorbis and MP3 (where libsndfile
writes MP3) to a temp dir and reports, per format, the best-of-`--repeats` wall time of both readers and
their ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lightning_musicgen.audio.integrity import read_checked
from lightning_musicgen.audio.io import read_audio

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    sr = 44100
    t = np.arange(int(args.seconds * sr)) / sr
    rng = np.random.default_rng(0)
    x = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1)
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    print(f"{args.seconds:g} s stereo {sr} Hz, best of {args.repeats}")
    print("| format | read_audio (s) | read_checked (s) | ratio |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for ext, (fmt, subtype) in FORMATS.items():
            if fmt not in sf.available_formats():
                continue
            path = Path(tmp) / f"x.{ext}"
            with sf.SoundFile(path, "w", sr, 2, subtype, format=fmt) as f:
                for start in range(0, len(x), 1 << 15):  # libsndfile 1.2's Vorbis writer crashes on one big write
                    f.write(x[start:start + (1 << 15)])
            plain = best_of(lambda: read_audio(path), args.repeats)
            checked = best_of(lambda: read_checked(path), args.repeats)
            print(f"| {ext} | {plain:.3f} | {checked:.3f} | {checked / plain:.2f} |")


if __name__ == "__main__":
    main()
