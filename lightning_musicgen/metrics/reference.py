"""Reference statistics for FAD: embed a folder of audio files and save their mu and sigma.

    python -m lightning_musicgen reference --embedder musicnn_vgg --out stats.npz DIR_OR_FILES...
    python -m lightning_musicgen reference --embedder vggish --weights vggish-10086976.pth ...

The .npz (keys `mu`, `sigma`) goes to `EvaluateGeneration(reference_stats={"fad_<embedder>": path})`
or `FrechetAudioDistance(reference_stats=path)`. Unreadable files are skipped and counted.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional, get_args

from lightning_musicgen.errors import InputError, inputs_checked_by_library

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif"}
Embedder = Literal["vggish", "panns", "clap", "musicnn_vgg"]
EMBEDDERS = get_args(Embedder)


def build_embedder(name: str, weights: str | None):
    """An embedder by metric suffix; `weights` is its checkpoint/folder (musicnn_vgg: the model name)."""
    from lightning_musicgen.metrics import ClapEmbedder, Cnn14, MusicnnVGG, VGGish
    if name == "musicnn_vgg":
        return MusicnnVGG(model=weights or "MTT_vgg")
    if not weights:
        raise InputError(f"--weights: the {name} embedder needs a local checkpoint path")
    return {"vggish": VGGish, "panns": Cnn14, "clap": ClapEmbedder}[name](weights)


def audio_files(inputs: list[str]) -> list[Path]:
    """The audio files among `inputs`, folders searched recursively; InputError for a missing path."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return files


def reference_command(inputs: list[str], /, *, out: str,
                      embedder: Embedder = "musicnn_vgg",
                      weights: Optional[str] = None, max_seconds: float = 30.0) -> None:
    """Embed audio files and save FAD reference statistics (mu, sigma) to an .npz.

    The file goes to EvaluateGeneration(reference_stats={"fad_<embedder>": path}) or
    FrechetAudioDistance(reference_stats=path). Unreadable files are skipped, counted and named.

    Args:
        inputs: audio files or folders (searched recursively).
        out: output .npz (keys mu, sigma).
        embedder: the FAD embedder (its metric suffix).
        weights: checkpoint file or save_pretrained folder of the embedder (musicnn_vgg: the model name).
        max_seconds: read at most this much of each file.
    """
    import torch
    from tqdm import tqdm

    from lightning_musicgen.audio import AudioReadError, load_audio
    from lightning_musicgen.metrics import FrechetAudioDistance, save_reference_stats
    files = audio_files(inputs)
    if not files:
        raise InputError(f"{', '.join(inputs)}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    with inputs_checked_by_library():
        fad = FrechetAudioDistance(build_embedder(embedder, weights))
    skipped = 0
    for path in tqdm(files, desc=f"embedding ({embedder})", unit="file"):
        try:
            wav, sr = load_audio(path, duration=max_seconds)
        except AudioReadError as exc:
            print(f"warning: skipped {exc}", file=sys.stderr)
            skipped += 1
            continue
        with torch.no_grad():
            fad.update(wav[None], real=True, sample_rate=sr)
    with inputs_checked_by_library():
        mu, sigma = fad.reference_stats()
    save_reference_stats(out, mu, sigma)
    print(f"{out}: {embedder} statistics of {int(fad.real_n)} embeddings from {len(files) - skipped} "
          f"files ({skipped} skipped)")
