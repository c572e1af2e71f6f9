"""Known-answer learning at a larger size than tests/test_known_answer.py: for each pattern, a random sharpened
teacher MusicGenLM conditioned on 4 fixed captions (tests/known_answer.py) draws token shards; a student of the
teacher's architecture is trained on them by `python -m lightning_musicgen fit` (CFG dropout 0.3) and scored on
held-out teacher draws against the true entropies (nats per code; the caption information in nats per clip):

    student conditional NLL vs H(X|C); student null-condition NLL vs H(X); gap vs I(X;C) = (H(X) - H(X|C)) K T

    python benchmarks/known_answer.py [--patterns delay parallel --n_q 3 --card 32 --dim 64 --frames 30
                                       --train 4096 --steps 600 --batch 32 --lr 1e-2 --sharpen 2]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import known_answer as ka  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patterns", nargs="+", default=["delay", "parallel"])
    p.add_argument("--n_q", type=int, default=3)
    p.add_argument("--card", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--sharpen", type=float, default=2.0)
    p.add_argument("--caption_gain", type=float, default=4.0)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--train", type=int, default=4096)
    p.add_argument("--held_out", type=int, default=1024)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight_decay", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for pattern in args.patterns:
        spec = ka.TeacherSpec(pattern, args.n_q, args.card, args.dim, args.heads, args.layers, args.sharpen,
                              args.caption_gain)
        with tempfile.TemporaryDirectory(prefix="known-answer-") as tmp:
            out = ka.run(spec, Path(tmp), args.frames, args.train, args.held_out, args.steps, args.batch, args.lr,
                         args.weight_decay)
        t, s, u = out.truth, out.student, out.untrained
        rows.append(f"| {pattern} | {math.log(args.card):.3f} | {t.cond:.4f} | {u.cond:.4f} | {s.cond:.4f} | "
                    f"{100 * (s.cond / t.cond - 1):+.2f} % | {t.uncond:.4f} | {s.uncond:.4f} | "
                    f"{t.gap_per_clip:.3f} | {s.gap_per_clip:.3f} | {out.fit_seconds:.0f} |")
        print(rows[-1], flush=True)
    print("| pattern | log card | H(X|C) | untrained | student cond | vs H(X|C) | H(X) | student null | "
          "I(X;C) /clip | student gap /clip | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
