"""Fréchet distance: our eigh-based float64 computation vs scipy.linalg.sqrtm of sigma1 @ sigma2
(the pytorch-fid / frechet-audio-distance recipe), side by side in one run: time and agreement.

    .venv/bin/python benchmarks/metrics_frechet.py [--dims 128 512 2048] [--repeats 3]

Covariances come from n = 2 * D random correlated embeddings (well conditioned) and from n = D / 4
(singular: fewer samples than dimensions, as with a small evaluation set).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg

from lightning_musicgen.metrics import frechet_distance


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def best_of(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'D':>6} {'samples':>8} {'ours s':>9} {'scipy s':>9} {'speed-up':>9} {'rel. diff':>10}")
    for d in args.dims:
        mix = rng.normal(size=(d, d)) / np.sqrt(d)
        for n in (2 * d, max(d // 4, 2)):
            x, y = rng.normal(size=(n, d)) @ mix, 0.1 + rng.normal(size=(n, d)) @ mix * 1.1
            stats = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
            ours_t, ours = best_of(lambda: frechet_distance(*stats), args.repeats)
            scipy_t, ref = best_of(lambda: scipy_frechet(*stats), args.repeats)
            print(f"{d:>6} {n:>8} {ours_t:>9.4f} {scipy_t:>9.4f} {scipy_t / ours_t:>8.1f}x {abs(ours - ref) / abs(ref):>10.2e}")


if __name__ == "__main__":
    main()
