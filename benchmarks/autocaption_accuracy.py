"""Accuracy and cost of `prepare --auto-caption`: on rendered pieces in known keys, and on rendered demo pieces.

1. Known keys (`lightning_musicgen.data.cadences`): `--known-keys N` pieces per key for all 24 keys
   (cadential progressions, a bass on every beat, a melody on chord tones; ensembles and tempi cycled), in
   tune with A440, then the same number again detuned by `--detuned-cents` (cycled). Key and tempo only
   (`KeyEstimator`, `TempoEstimator`): key exact, and exact or its relative major/minor, per mode, per
   ensemble and overall; tempo within 4 % of the beat or of its double/half.
2. Demo corpus: the first `--pieces` pieces of the demo dataset for `--seed` (kept in --out, so a re-run
   reuses them), analysed with `AutoCaptioner` (tags too, unless --no-tags); truth = the sidecar's key
   (the whole score's key, often modal or ambiguous) and bpm. Per collection and overall, and the cost.

`--key-tuning 0 --key-log-compression none --key-bass-weight 0` measures the key estimator without tuning
estimation, log compression and bass chroma (its earlier form).

    python benchmarks/autocaption_accuracy.py --known-keys 4 --pieces 60 --seed 2 --seconds 30 --out /tmp/autocaption_bench
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from lightning_musicgen.data import autocaption as ac
from lightning_musicgen.data import cadences, demo_corpus, demo_render


def key_match(estimate: str, truth: str) -> tuple[bool, bool]:
    (ep, em), (tp, tm) = ac.parse_key(estimate), ac.parse_key(truth)
    relative = (tp - 3) % 12 if tm == "major" else (tp + 3) % 12
    exact = (ep, em) == (tp, tm)
    return exact or (em != tm and ep == relative), exact


def tempo_match(estimate: float | None, truth: float, tolerance: float = 0.04) -> bool:
    return estimate is not None and any(abs(estimate / (truth * f) - 1) <= tolerance for f in (0.5, 1.0, 2.0))


def table(title: str, rows: dict[str, list[tuple[bool, bool, bool]]]) -> None:
    print(f"\n{title:24s} {'pieces':>6s} {'key (or relative)':>18s} {'key exact':>10s} {'tempo (x1, x2, x1/2)':>21s}")
    for group, results in rows.items():
        n = len(results)
        ok, exact, tempo = (sum(r[i] for r in results) / n for i in range(3))
        print(f"{group:24s} {n:6d} {ok:17.0%} {exact:10.0%} {tempo:20.0%}")


def known_keys(args, key: ac.KeyEstimator, tempo: ac.TempoEstimator) -> None:
    sets = {"in tune": cadences.plan_key_pieces(args.known_keys, seed=args.known_seed, seconds=args.known_seconds),
            "detuned": cadences.plan_key_pieces(args.known_keys, seed=args.known_seed + 1, seconds=args.known_seconds,
                                                tuning_cents=tuple(args.detuned_cents))}
    start, audio = time.perf_counter(), 0.0
    for name, specs in sets.items():
        groups: dict[str, list] = {}
        for spec in specs:
            wav = torch.from_numpy(cadences.render_key_piece(spec, ac.SAMPLE_RATE))
            audio += wav.shape[-1] / ac.SAMPLE_RATE
            estimate, confidence = key.estimate(wav)
            bpm, _ = tempo.estimate(wav)
            ok, exact = key_match(estimate, spec["key"])
            result = (ok, exact, tempo_match(bpm, spec["bpm"] * 2 ** (spec["tuning_cents"] / 1200)))
            for g in (spec["mode"], spec["ensemble"], "all"):
                groups.setdefault(g, []).append(result)
            if not exact:
                print(json.dumps({"set": name, "id": spec["id"], "key": spec["key"], "ensemble": spec["ensemble"],
                                  "cents": spec["tuning_cents"], "estimate": estimate,
                                  "confidence": round(confidence, 3)}))
        order = ["major", "minor"] + sorted(g for g in groups if g not in ("major", "minor", "all")) + ["all"]
        table(f"known keys, {name}", {g: groups[g] for g in order})
    seconds = time.perf_counter() - start
    print(f"\nknown keys: {seconds:.1f} s to render and analyse {audio / 60:.1f} min of audio")


def corpus(args, key: ac.KeyEstimator, tempo: ac.TempoEstimator) -> None:
    out = Path(args.out)
    common = {"out_dir": str(out), "soundfont": demo_render.default_soundfont(), "sample_rate": 32000, "channels": 1,
              "max_seconds": args.seconds}
    pieces = []
    for spec in demo_corpus.plan_pieces(args.seed):
        meta = demo_render.render_piece({**spec, **common})
        if "error" not in meta and meta["duration"] >= 5.0 and meta.get("key"):
            pieces.append(meta)
        if len(pieces) == args.pieces:
            break
    start = time.perf_counter()
    monos = [ac._load_mono(str(out / f"{m['id']}.flac")) for m in pieces]
    if args.no_tags:
        analyses = [{"key": key.estimate(m)[0], "bpm": tempo.estimate(m)[0]} for m in monos]
    else:
        captioner = ac.AutoCaptioner(max_tag_patches=args.max_tag_patches)
        captioner.key = key
        analyses = []
        for b in range(0, len(monos), 8):
            analyses += captioner.analyze(monos[b:b + 8])
    seconds = time.perf_counter() - start
    audio = sum(m.shape[-1] for m in monos) / ac.SAMPLE_RATE
    groups: dict[str, list] = {}
    for meta, analysis in zip(pieces, analyses):
        ok, exact = key_match(analysis["key"], meta["key"])
        result = (ok, exact, tempo_match(analysis["bpm"], meta["bpm"]))
        for g in (meta["corpus_path"].split("/")[0], "all"):
            groups.setdefault(g, []).append(result)
        print(json.dumps({"id": meta["id"], "key": meta["key"], "bpm": meta["bpm"], "meter": meta["time_signature"],
                          "estimate": analysis["key"], "caption": ac.caption_sentence(analysis) if "tags" in analysis
                          else None}))
    table("demo corpus collection", {g: groups[g] for g in sorted(groups, key=lambda g: (g == "all", g))})
    tags = "no tagger" if args.no_tags else f"{args.max_tag_patches} tagger patches per file"
    print(f"\nanalysis: {seconds:.1f} s for {audio / 60:.1f} min of audio ({audio / seconds:.1f}x realtime, "
          f"{args.threads} thread(s), {tags})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--known-keys", type=int, default=4, help="pieces per key in each known-key set (0: none)")
    p.add_argument("--known-seed", type=int, default=10)
    p.add_argument("--known-seconds", type=float, default=8.0, help="approximate length of a known-key piece")
    p.add_argument("--detuned-cents", type=float, nargs="+", default=[-40.0, -25.0, 25.0, 40.0])
    p.add_argument("--pieces", type=int, default=60, help="demo corpus pieces (0: none)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0, help="pieces fade out here (demo --max-piece-seconds)")
    p.add_argument("--out", default="/tmp/autocaption_bench")
    p.add_argument("--max-tag-patches", type=int, default=10)
    p.add_argument("--no-tags", action="store_true", help="corpus: key and tempo only (no tagger)")
    p.add_argument("--key-profiles", default="temperley")
    p.add_argument("--key-tuning", default="estimate", help="'estimate' or a fixed tuning in semitones from A440")
    p.add_argument("--key-log-compression", default=str(ac.LOG_COMPRESSION), help="gamma, or 'none'")
    p.add_argument("--key-bass-weight", type=float, default=1.0, help="weight of the bass chroma (0: none)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tuning = args.key_tuning if args.key_tuning == "estimate" else float(args.key_tuning)
    gamma = None if args.key_log_compression.lower() == "none" else float(args.key_log_compression)
    key = ac.KeyEstimator(profiles=args.key_profiles, tuning=tuning, log_compression=gamma,
                          bass_weight=args.key_bass_weight)
    tempo = ac.TempoEstimator()
    print(f"key estimator: profiles {args.key_profiles}, tuning {tuning}, log compression {gamma}, "
          f"bass weight {args.key_bass_weight}")
    if args.known_keys > 0:
        known_keys(args, key, tempo)
    if args.pieces > 0:
        corpus(args, key, tempo)


if __name__ == "__main__":
    main()
