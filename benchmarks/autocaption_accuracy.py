"""Accuracy and cost of `prepare --auto-caption` on rendered demo pieces, whose real key and tempo are known.

Renders the first N pieces of the demo dataset for a seed (kept in --out, so a re-run reuses them), analyses
them with `AutoCaptioner` and prints: key correct (same key, or its relative major/minor; also exact), tempo
within 4 % of the notated beat or of its double/half, per collection and overall, and the analysis time.

    python benchmarks/autocaption_accuracy.py --pieces 60 --seed 2 --seconds 30 --out /tmp/autocaption_bench
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from lightning_musicgen.data import autocaption as ac
from lightning_musicgen.data import demo


def key_match(estimate: str, truth: str) -> tuple[bool, bool]:
    (ep, em), (tp, tm) = ac.parse_key(estimate), ac.parse_key(truth)
    relative = (tp - 3) % 12 if tm == "major" else (tp + 3) % 12
    exact = (ep, em) == (tp, tm)
    return exact or (em != tm and ep == relative), exact


def tempo_match(estimate: float | None, truth: float, tolerance: float = 0.04) -> bool:
    return estimate is not None and any(abs(estimate / (truth * f) - 1) <= tolerance for f in (0.5, 1.0, 2.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pieces", type=int, default=60)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0, help="pieces fade out here (demo --max-piece-seconds)")
    p.add_argument("--out", default="/tmp/autocaption_bench")
    p.add_argument("--max-tag-patches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = {"out_dir": str(out), "soundfont": demo.default_soundfont(), "sample_rate": 32000, "channels": 1,
              "max_seconds": args.seconds}
    pieces = []
    for spec in demo.plan_pieces(args.seed):
        meta = demo.render_piece({**spec, **common})
        if "error" not in meta and meta["duration"] >= 5.0 and meta.get("key"):
            pieces.append(meta)
        if len(pieces) == args.pieces:
            break
    captioner = ac.AutoCaptioner(max_tag_patches=args.max_tag_patches)
    start = time.perf_counter()
    monos = [ac._load_mono(str(out / f"{m['id']}.flac")) for m in pieces]
    analyses = []
    for b in range(0, len(monos), 8):
        analyses += captioner.analyze(monos[b:b + 8])
    seconds = time.perf_counter() - start
    audio = sum(m.shape[-1] for m in monos) / ac.SAMPLE_RATE
    totals, keys, exact, tempi = Counter(), Counter(), Counter(), Counter()
    for meta, analysis in zip(pieces, analyses):
        group = meta["corpus_path"].split("/")[0]
        ok, is_exact = key_match(analysis["key"], meta["key"])
        for g in (group, "all"):
            totals[g] += 1
            keys[g] += ok
            exact[g] += is_exact
            tempi[g] += tempo_match(analysis["bpm"], meta["bpm"])
        print(json.dumps({"id": meta["id"], "key": meta["key"], "bpm": meta["bpm"],
                          "meter": meta["time_signature"], "caption": captioner.caption(analysis)}))
    print(f"\n{'collection':14s} {'pieces':>6s} {'key (or relative)':>18s} {'key exact':>10s} {'tempo (x1, x2, x1/2)':>21s}")
    for g in sorted(totals, key=lambda g: (g == "all", g)):
        n = totals[g]
        print(f"{g:14s} {n:6d} {keys[g] / n:17.0%} {exact[g] / n:10.0%} {tempi[g] / n:20.0%}")
    print(f"\nanalysis: {seconds:.1f} s for {audio / 60:.1f} min of audio ({audio / seconds:.1f}x realtime, "
          f"{args.threads} thread(s), {args.max_tag_patches} tagger patches per file)")


if __name__ == "__main__":
    main()
