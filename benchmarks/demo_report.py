"""The demo's figures: does the trained model make notes, and does it follow a melody?

    python benchmarks/demo_report.py --data data/demo --runs runs/demo   (the last step of `make demo`)

Reads the held-out pieces (DATA/render/valid.jsonl -> DATA/render/pieces/ID.flac), the codec model folder
(RUNS/codec-model), the text samples (RUNS/samples/*.wav) and the melody sample (RUNS/melody/generate.json
and its wav). Writes RUNS/report.json and RUNS/report.png and prints a table.

Pitch content (`lightning_musicgen.metrics.pitch`: clarity, pitch-class changes per second) and key
confidence (`data.autocaption.KeyEstimator`: correlation of the mean chroma with the best of 24 key
profiles) of: the text samples; held-out pieces (their first `--seconds`); the codec's reconstructions of
those pieces (the most the LM can reach through this codec); Gaussian noise at the pieces' loudness.

Melody following (`metrics.ChromaCosine`, argmax chroma, frame by frame) against the melody the sample
was conditioned on (a held-out piece, over the sample's length): the sample; the other held-out pieces
(unrelated music; their mean); the codec reconstruction of the melody piece. The issue's bar: the sample
at least half-way from the unrelated pieces to the reconstruction.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lightning_musicgen.audio import read_audio, resample
from lightning_musicgen.data.autocaption import KeyEstimator
from lightning_musicgen.media import chroma_image, mel_image
from lightning_musicgen.metrics import ChromaCosine
from lightning_musicgen.metrics.pitch import pitch_content
from lightning_musicgen.model_files.codec import load_codec


def mono(wav: torch.Tensor) -> torch.Tensor:
    return wav.float().reshape(-1, wav.shape[-1]).mean(0)


def statistics(clips: list[torch.Tensor], sample_rate: int, keys: KeyEstimator) -> dict:
    """Mean and spread of the pitch statistics over clips ([T] at sample_rate)."""
    rows = []
    for clip in clips:
        row = pitch_content(clip, sample_rate)
        row["key_confidence"] = keys.estimate(resample(clip[None], sample_rate, 16000)[0])[1]
        rows.append(row)
    out = {"clips": len(rows)}
    for name in ("clarity", "changes_per_second", "key_confidence"):
        values = np.array([r[name] for r in rows])
        out[name], out[name + "_std"] = round(float(values.mean()), 3), round(float(values.std()), 3)
    return out


def chroma_cosine(generated: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> float:
    metric = ChromaCosine()
    metric.update(generated.reshape(1, 1, -1), reference.reshape(1, 1, -1), sample_rate=sample_rate)
    return float(metric.compute())


@torch.no_grad()
def reconstruct(codec, clip: torch.Tensor, sample_rate: int) -> torch.Tensor:
    wav = resample(clip[None], sample_rate, codec.sample_rate)[None]
    out = codec.decode(codec.encode(wav))[0, :, : wav.shape[-1]]
    return resample(mono(out)[None], codec.sample_rate, sample_rate)[0]


def held_out(data: Path, count: int, seconds: float, sample_rate: int) -> list[tuple[str, torch.Tensor]]:
    manifest = data / "render" / "valid.jsonl"
    if not manifest.exists():
        sys.exit(f"{manifest}: no held-out manifest (run `make demo` or `lightning_musicgen demo-data` first)")
    pieces = []
    for line in manifest.read_text().splitlines()[:count]:
        path = data / "render" / json.loads(line)["path"]
        wav, sr = read_audio(path, duration=seconds)
        pieces.append((str(path), resample(mono(wav)[None], sr, sample_rate)[0]))
    return pieces


def read_clips(paths, sample_rate: int) -> list[torch.Tensor]:
    clips = []
    for p in paths:
        wav, sr = read_audio(p)
        clips.append(resample(mono(wav)[None], sr, sample_rate)[0])
    return clips


def picture(path: Path, rows: list[tuple[str, torch.Tensor]], sample_rate: int) -> None:
    """Mel spectrogram and chroma of each clip, stacked (one row per clip)."""
    from PIL import Image, ImageDraw
    blocks = []
    for label, clip in rows:
        mel, chroma = mel_image(clip, sample_rate), chroma_image(clip[None], sample_rate, row_height=6)
        chroma = np.asarray(Image.fromarray(chroma).resize((mel.shape[1], chroma.shape[0]), Image.NEAREST))
        block = np.concatenate([np.full((14, mel.shape[1]), 255, np.uint8), mel, np.full((3, mel.shape[1]), 255,
                                                                                        np.uint8), chroma])
        image = Image.fromarray(block)
        ImageDraw.Draw(image).text((2, 1), label, fill=0)
        blocks.append(np.asarray(image))
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 6), (0, width - b.shape[1])), constant_values=255) for b in blocks]
    Image.fromarray(np.concatenate(blocks)).save(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--runs", default="runs/demo")
    ap.add_argument("--pieces", type=int, default=8, help="held-out pieces to compare with")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of each held-out piece")
    ap.add_argument("--noise", type=int, default=4, help="noise clips")
    args = ap.parse_args(argv)
    data, runs, sr = Path(args.data), Path(args.runs), 32000
    torch.manual_seed(0)
    keys = KeyEstimator()
    codec = load_codec(runs / "codec-model").eval()
    pieces = held_out(data, args.pieces, args.seconds, sr)
    recons = [reconstruct(codec, clip, sr) for _, clip in pieces]
    rms = float(torch.stack([c.pow(2).mean() for _, c in pieces]).mean().sqrt())
    noise = [rms * torch.randn(int(args.seconds * sr)) for _ in range(args.noise)]
    samples = sorted((runs / "samples").glob("*.wav"))
    report = {"pitch": {"held-out pieces": statistics([c for _, c in pieces], sr, keys),
                        "codec reconstructions": statistics(recons, sr, keys),
                        "noise": statistics(noise, sr, keys)}}
    if samples:
        report["pitch"]["text samples"] = statistics(read_clips(samples, sr), sr, keys)
    rows = [("held-out: " + Path(pieces[0][0]).stem, pieces[0][1])]
    rows += [(f"text sample: {p.stem}", c) for p, c in zip(samples, read_clips(samples, sr))]
    melody_record = runs / "melody" / "generate.json"
    if melody_record.exists():
        record = json.loads(melody_record.read_text())
        melody_wav = sorted((runs / "melody").glob("*.wav"))[0]
        (sample,) = read_clips([melody_wav], sr)
        melody, msr = read_audio(record["melody"], duration=sample.shape[-1] / sr)
        melody = resample(mono(melody)[None], msr, sr)[0]
        others = [c[: sample.shape[-1]] for p, c in pieces if Path(p).resolve() != Path(record["melody"]).resolve()]
        unrelated = float(np.mean([chroma_cosine(o, melody, sr) for o in others]))
        ceiling = chroma_cosine(reconstruct(codec, melody, sr), melody, sr)
        score = chroma_cosine(sample, melody, sr)
        half_way = (unrelated + ceiling) / 2
        report["melody"] = {"melody": record["melody"], "sample": str(melody_wav), "seconds": sample.shape[-1] / sr,
                            "sample_vs_melody": round(score, 3), "unrelated_pieces_vs_melody": round(unrelated, 3),
                            "unrelated_pieces": len(others), "codec_reconstruction_vs_melody": round(ceiling, 3),
                            "half_way": round(half_way, 3), "half_way_reached": bool(score >= half_way)}
        report["pitch"]["melody sample"] = statistics([sample], sr, keys)
        rows += [("melody (held-out)", melody), ("melody sample", sample)]
    picture(runs / "report.png", rows, sr)
    (runs / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{'pitch content':24s} {'clarity':>8s} {'changes/s':>10s} {'key conf':>9s}")
    for name, row in report["pitch"].items():
        print(f"{name:24s} {row['clarity']:8.3f} {row['changes_per_second']:10.2f} {row['key_confidence']:9.3f}")
    if "melody" in report:
        m = report["melody"]
        print(f"melody following (ChromaCosine to the melody, {m['seconds']:.1f} s): sample {m['sample_vs_melody']:.3f}, "
              f"unrelated pieces {m['unrelated_pieces_vs_melody']:.3f}, codec reconstruction "
              f"{m['codec_reconstruction_vs_melody']:.3f} (half-way {m['half_way']:.3f}: "
              f"{'reached' if m['half_way_reached'] else 'not reached'})")
    print(f"wrote {runs / 'report.json'} and {runs / 'report.png'}")
    return report


if __name__ == "__main__":
    main()
