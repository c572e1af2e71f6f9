"""The demo's figures: does the trained model make notes, and does it follow a melody?

    python benchmarks/demo_report.py --data data/demo --runs runs/demo   (the last step of `make demo`)

Reads the held-out pieces (DATA/render/valid.jsonl -> DATA/render/pieces/ID.flac), the codec model folder
(RUNS/codec-model), the LM model folder (RUNS/model), the text samples (RUNS/samples/*.wav) and the melody
sample (RUNS/melody/generate.json and its wav). Writes RUNS/report.json and RUNS/report.png (mel spectrogram
and chroma of a held-out piece, the samples, the melody and its sample) and prints a table.

Codec on the held-out pieces: SI-SNR (dB), mel distance (`codec.losses.MelDistance`) and ChromaCosine of
the reconstruction to the original. LM: cross-entropy per codebook (nats per code) on consecutive crops of
the held-out pieces of the training crop length, conditioned on their captions and their own chroma
(teacher forcing, `MusicGen.lm_logits`); their sum times the frame rate is nats per second of audio.

Pitch content (`lightning_musicgen.metrics.pitch`: clarity, pitch-class changes per second) and key
confidence (`data.autocaption.KeyEstimator`: correlation of the mean chroma with the best of 24 key
profiles) of: the text samples; held-out pieces (their first `--seconds`); the codec's reconstructions of
those pieces (the most the LM can reach through this codec); Gaussian noise at the pieces' loudness.

Melody following (`metrics.ChromaCosine`, argmax chroma, frame by frame) against the melody the sample
was conditioned on (a held-out piece, over the sample's length): the sample; the other held-out pieces
(unrelated music; their mean); the codec reconstruction of the melody piece. The issue's bar: the sample
at least half-way from the unrelated pieces to the reconstruction. The same for a sample conditioned on
each of the first `--melody-pieces` held-out melodies (same text, length and sampling settings as the
melody sample; `melody_all`), so one lucky or unlucky melody does not decide the figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lightning_musicgen.audio import read_audio, resample
from lightning_musicgen.codec.losses import MelDistance, si_snr
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


def manifest_of(data: Path, count: int) -> list[dict]:
    manifest = data / "render" / "valid.jsonl"
    if not manifest.exists():
        sys.exit(f"{manifest}: no held-out manifest (run `make demo` or `lightning_musicgen demo-data` first)")
    return [json.loads(line) for line in manifest.read_text().splitlines()[:count]]


def held_out(data: Path, count: int, seconds: float | None, sample_rate: int) -> list[tuple[str, torch.Tensor]]:
    pieces = []
    for item in manifest_of(data, count):
        path = data / "render" / item["path"]
        wav, sr = read_audio(path, duration=seconds)
        pieces.append((str(path), resample(mono(wav)[None], sr, sample_rate)[0]))
    return pieces


@torch.no_grad()
def codec_figures(codec, pieces: list[torch.Tensor], recons: list[torch.Tensor], sample_rate: int) -> dict:
    mel = MelDistance(sample_rate)
    snr = [float(si_snr(r[None, None], p[None, None])) for p, r in zip(pieces, recons)]
    dist = [float(mel(r[None, None], p[None, None])) for p, r in zip(pieces, recons)]
    chroma = [chroma_cosine(r, p, sample_rate) for p, r in zip(pieces, recons)]
    return {"si_snr_db": round(float(np.mean(snr)), 2), "mel_distance": round(float(np.mean(dist)), 3),
            "chroma_cosine": round(float(np.mean(chroma)), 3), "frame_rate": float(codec.frame_rate),
            "n_q": int(codec.n_q), "card": int(codec.card), "clips": len(pieces)}


@torch.no_grad()
def lm_figures(model_dir: Path, data: Path, count: int, crop_seconds: float, crops_per_piece: int) -> dict:
    """Teacher-forced cross-entropy per codebook on consecutive crops of the held-out pieces."""
    from lightning_musicgen.generation import MusicGen
    model = MusicGen.from_pretrained(model_dir, device="cpu", dtype="float32")
    sums, n = torch.zeros(model.lm.n_q, dtype=torch.float64), 0
    for item in manifest_of(data, count):
        wav, sr = read_audio(data / "render" / item["path"])
        wav = resample(mono(wav)[None], sr, model.sample_rate)
        length = int(crop_seconds * model.sample_rate)
        for c in range(min(crops_per_piece, wav.shape[-1] // length)):
            crop = wav[:, c * length:(c + 1) * length]
            codes = model.encode(crop[None])
            melody = crop[None] if model.has_melody else None
            if melody is not None and model.sample_rate != model.conditioner.melody.sample_rate:
                melody = resample(melody, model.sample_rate, model.conditioner.melody.sample_rate)
            logits = model.lm_logits(codes, [item.get("description")], melody=melody)  # [1, K, T, card]
            ce = torch.nn.functional.cross_entropy(logits[0].permute(0, 2, 1), codes[0], reduction="none").mean(-1)
            sums += ce.double()
            n += 1
    per_q = (sums / max(n, 1)).tolist()
    return {"ce_per_codebook": [round(v, 4) for v in per_q], "ce_sum": round(sum(per_q), 4),
            "nats_per_second": round(sum(per_q) * model.frame_rate, 1), "crops": n, "crop_seconds": crop_seconds}


def following(sample: torch.Tensor, melody: torch.Tensor, others: list[torch.Tensor], codec,
              sample_rate: int) -> tuple[float, float, float]:
    """(sample, unrelated pieces (mean), codec reconstruction): ChromaCosine of each to `melody`."""
    unrelated = float(np.mean([chroma_cosine(o, melody, sample_rate) for o in others]))
    ceiling = chroma_cosine(reconstruct(codec, melody, sample_rate), melody, sample_rate)
    return chroma_cosine(sample, melody, sample_rate), unrelated, ceiling


@torch.no_grad()
def melody_following(model_dir: Path, codec, pieces: list[tuple[str, torch.Tensor]], record: dict,
                     sample_rate: int) -> dict:
    """The melody sample's figure for every held-out piece: a sample of the record's length, text and
    sampling settings conditioned on the piece's melody, against that melody; the other pieces; the
    codec's reconstruction. `fraction`: how far the sample goes from the unrelated pieces to the
    reconstruction (1/2 = the issue's half-way mark)."""
    from lightning_musicgen.generation import MusicGen
    model = MusicGen.from_pretrained(model_dir, device="cpu", dtype="float32")
    length = int(record["duration"] * sample_rate)
    melodies = [(p, c[:length]) for p, c in pieces if c.shape[-1] >= length]
    rows = []
    for i, (path, melody) in enumerate(melodies):
        wav = model.generate(record["texts"][:1], record["duration"], melody=(melody[None, None], sample_rate),
                             cfg_coef=record["cfg_coef"], top_k=record["top_k"], top_p=record["top_p"],
                             temperature=record["temperature"], seed=record["seed"])
        sample = resample(mono(wav[0])[None], model.sample_rate, sample_rate)[0][:length]
        others = [o for j, (_, o) in enumerate(melodies) if j != i]
        score, unrelated, ceiling = following(sample, melody, others, codec, sample_rate)
        rows.append({"melody": path, "sample_vs_melody": round(score, 3), "unrelated_pieces_vs_melody": round(unrelated, 3),
                     "codec_reconstruction_vs_melody": round(ceiling, 3),
                     "fraction": round((score - unrelated) / max(ceiling - unrelated, 1e-6), 3)})
    mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in
            ("sample_vs_melody", "unrelated_pieces_vs_melody", "codec_reconstruction_vs_melody", "fraction")}
    return {"pieces": rows, "mean": mean,
            "half_way_reached": sum(r["fraction"] >= 0.5 for r in rows), "of": len(rows)}


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
    ap.add_argument("--crop-seconds", type=float, default=3.0, help="LM validation crop (the training crop)")
    ap.add_argument("--crops-per-piece", type=int, default=8)
    ap.add_argument("--melody-pieces", type=int, default=6,
                    help="also condition a sample on each of this many held-out melodies (1: only the melody sample)")
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
    report = {"codec": codec_figures(codec, [c for _, c in pieces], recons, sr)}
    if (runs / "model" / "config.json").exists():
        report["lm"] = lm_figures(runs / "model", data, args.pieces, args.crop_seconds, args.crops_per_piece)
    report["pitch"] = {"held-out pieces": statistics([c for _, c in pieces], sr, keys),
                       "codec reconstructions": statistics(recons, sr, keys),
                       "noise": statistics(noise, sr, keys)}
    sample_clips = read_clips(samples, sr)
    if samples:
        report["pitch"]["text samples"] = statistics(sample_clips, sr, keys)
    rows = [("held-out: " + Path(pieces[0][0]).stem, pieces[0][1])]
    rows += [(f"text sample: {p.stem}", c) for p, c in zip(samples, sample_clips)]
    melody_record = runs / "melody" / "generate.json"
    if melody_record.exists():
        record = json.loads(melody_record.read_text())
        melody_wav = sorted((runs / "melody").glob("*.wav"))[0]
        (sample,) = read_clips([melody_wav], sr)
        melody, msr = read_audio(record["melody"], duration=sample.shape[-1] / sr)
        melody = resample(mono(melody)[None], msr, sr)[0]
        others = [c[: sample.shape[-1]] for p, c in pieces if Path(p).resolve() != Path(record["melody"]).resolve()]
        score, unrelated, ceiling = following(sample, melody, others, codec, sr)
        half_way = (unrelated + ceiling) / 2
        report["melody"] = {"melody": record["melody"], "sample": str(melody_wav), "seconds": sample.shape[-1] / sr,
                            "sample_vs_melody": round(score, 3), "unrelated_pieces_vs_melody": round(unrelated, 3),
                            "unrelated_pieces": len(others), "codec_reconstruction_vs_melody": round(ceiling, 3),
                            "half_way": round(half_way, 3), "half_way_reached": bool(score >= half_way)}
        report["pitch"]["melody sample"] = statistics([sample], sr, keys)
        if args.melody_pieces > 1:
            report["melody_all"] = melody_following(runs / "model", codec, pieces[: args.melody_pieces], record, sr)
        rows += [("melody (held-out)", melody), ("melody sample", sample)]
    picture(runs / "report.png", rows, sr)
    (runs / "report.json").write_text(json.dumps(report, indent=2))
    c = report["codec"]
    print(f"codec on {c['clips']} held-out pieces: SI-SNR {c['si_snr_db']:.2f} dB, mel distance {c['mel_distance']:.3f}, "
          f"chroma cosine {c['chroma_cosine']:.3f}")
    if "lm" in report:
        lm = report["lm"]
        print(f"LM validation cross-entropy per codebook ({lm['crops']} crops of {lm['crop_seconds']:g} s): "
              f"{', '.join(f'{v:.3f}' for v in lm['ce_per_codebook'])} nats (sum {lm['ce_sum']:.3f}, "
              f"{lm['nats_per_second']:.0f} nats/s)")
    print(f"{'pitch content':24s} {'clarity':>8s} {'changes/s':>10s} {'key conf':>9s}")
    for name, row in report["pitch"].items():
        print(f"{name:24s} {row['clarity']:8.3f} {row['changes_per_second']:10.2f} {row['key_confidence']:9.3f}")
    if "melody" in report:
        m = report["melody"]
        print(f"melody following (ChromaCosine to the melody, {m['seconds']:.1f} s): sample {m['sample_vs_melody']:.3f}, "
              f"unrelated pieces {m['unrelated_pieces_vs_melody']:.3f}, codec reconstruction "
              f"{m['codec_reconstruction_vs_melody']:.3f} (half-way {m['half_way']:.3f}: "
              f"{'reached' if m['half_way_reached'] else 'not reached'})")
    if "melody_all" in report:
        a = report["melody_all"]
        for r in a["pieces"]:
            print(f"  {Path(r['melody']).stem:28s} sample {r['sample_vs_melody']:.3f}, unrelated "
                  f"{r['unrelated_pieces_vs_melody']:.3f}, reconstruction {r['codec_reconstruction_vs_melody']:.3f}, "
                  f"fraction of the way {r['fraction']:.2f}")
        m = a["mean"]
        print(f"melody following over {a['of']} held-out melodies: sample {m['sample_vs_melody']:.3f}, unrelated "
              f"{m['unrelated_pieces_vs_melody']:.3f}, reconstruction {m['codec_reconstruction_vs_melody']:.3f}; "
              f"half-way reached for {a['half_way_reached']} of {a['of']}")
    print(f"wrote {runs / 'report.json'} and {runs / 'report.png'}")
    return report


if __name__ == "__main__":
    main()
