"""Reference statistics for FAD: embed a folder of audio files and save their mu and sigma.

    python -m lightning_musicgen.metrics.reference --embedder musicnn_vgg --out stats.npz DIR_OR_FILES...
    python -m lightning_musicgen.metrics.reference --embedder vggish --weights vggish-10086976.pth ...

The .npz (keys `mu`, `sigma`) goes to `EvaluateGeneration(reference_stats={"fad_<embedder>": path})`
or `FrechetAudioDistance(reference_stats=path)`. Unreadable files are skipped and counted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif"}
EMBEDDERS = ("vggish", "panns", "clap", "musicnn_vgg")


def build_embedder(name: str, weights: str | None):
    """An embedder by metric suffix; `weights` is its checkpoint/folder (musicnn_vgg: the model name)."""
    from lightning_musicgen.metrics import ClapEmbedder, Cnn14, MusicnnVGG, VGGish
    if name == "musicnn_vgg":
        return MusicnnVGG(model=weights or "MTT_vgg")
    if not weights:
        raise ValueError(f"--weights: the {name} embedder needs a local checkpoint path")
    return {"vggish": VGGish, "panns": Cnn14, "clap": ClapEmbedder}[name](weights)


def audio_files(inputs: list[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_musicgen.metrics.reference",
                                     description="Embed audio files and save FAD reference statistics (mu, sigma).")
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("--embedder", choices=EMBEDDERS, default="musicnn_vgg")
    parser.add_argument("--weights", default=None, help="checkpoint file or save_pretrained folder of the embedder")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="read at most this much of each file")
    args = parser.parse_args(argv)
    from lightning_musicgen.audio import AudioReadError, load_audio
    from lightning_musicgen.metrics import FrechetAudioDistance, save_reference_stats
    try:
        files = audio_files(args.inputs)
        if not files:
            raise ValueError(f"{', '.join(args.inputs)}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        embedder = build_embedder(args.embedder, args.weights)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fad = FrechetAudioDistance(embedder)
    skipped = 0
    for path in tqdm(files, desc=f"embedding ({args.embedder})", unit="file"):
        try:
            wav, sr = load_audio(path, duration=args.max_seconds)
        except AudioReadError as exc:
            print(f"warning: skipped {exc}", file=sys.stderr)
            skipped += 1
            continue
        with torch.no_grad():
            fad.update(wav[None], real=True, sample_rate=sr)
    try:
        mu, sigma = fad.reference_stats()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_reference_stats(args.out, mu, sigma)
    print(f"{args.out}: {args.embedder} statistics of {int(fad.real_n)} embeddings from {len(files) - skipped} "
          f"files ({skipped} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
