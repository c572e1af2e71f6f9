"""`python -m lightning_musicgen demo-data`: an offline demo music dataset rendered from music21's corpus.

Pieces come from music21's bundled corpus (Bach chorales, Palestrina mass movements, Monteverdi
madrigals, Essen folk songs, O'Neill's Irish tunes, Ryan's Mammoth Collection, Aird's Scottish airs). Each
piece gets a random ensemble that fits its number of voices (string/brass/woodwind/saxophone ensembles,
organ, piano, harpsichord, choir; solo or octave-doubled melody instruments for tunes) and a random tempo,
and is rendered with tinysoundfont and a General MIDI soundfont (pretty_midi's TimGM6mb.sf2 unless
`--soundfont`). Output is loudness-normalised with a peak ceiling, so nothing clips. Captions come from the
real metadata, e.g. "A string quartet playing a Baroque chorale by J.S. Bach in G minor, 4/4, 80 BPM".

This module builds the dataset: pieces come from `data.demo_corpus`, are rendered by `data.demo_render`
and written as shards by `data.prepare`.

Layout of OUTPUT (default data/demo):
  render/pieces/ID.flac + ID.json   rendered pieces with audiocraft-style sidecars (kept for resume)
  render/{train,valid}.jsonl        the split manifests
  train/shard-NNNNNN.tar, train/index.json, valid/shard-NNNNNN.tar, valid/index.json  (by `prepare`)
Validation pieces are different pieces from training pieces (a held-out split, ~10% of the minutes).
Everything is deterministic given --seed; re-running resumes (rendered pieces and finished shards are kept).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

from lightning_musicgen.data.demo_corpus import plan_pieces
from lightning_musicgen.data.demo_render import default_soundfont, render_until
from lightning_musicgen.data.prepare import DEFAULT_WORKERS
from lightning_musicgen.errors import InputError, MissingFileError, inputs_checked_by_library


def build_demo(output, minutes: float = 60.0, valid_fraction: float = 0.1, seed: int = 0,
               soundfont: str | None = None, sample_rate: int = 32000, channels: int = 1,
               workers: int = 2, max_piece_seconds: float = 90.0, shard_size: int = 16,
               progress: bool = True) -> dict:
    """Render the demo dataset and write its train/valid shards; returns a summary dict."""
    from lightning_musicgen.data.prepare import prepare
    soundfont = str(Path(soundfont or default_soundfont()).expanduser())
    if not Path(soundfont).is_file():
        raise MissingFileError(f"{soundfont}: soundfont not found")
    import tinysoundfont
    try:
        tinysoundfont.Synth(samplerate=sample_rate).sfload(soundfont)
    except Exception as exc:
        raise InputError(f"{soundfont}: not a loadable SoundFont ({exc})") from None
    output = Path(output)
    pieces_dir = output / "render" / "pieces"
    pieces_dir.mkdir(parents=True, exist_ok=True)
    common = {"out_dir": str(pieces_dir), "soundfont": soundfont, "sample_rate": sample_rate,
              "channels": channels, "max_seconds": max_piece_seconds}
    specs = ({**spec, **common} for spec in plan_pieces(seed))
    valid_minutes = minutes * valid_fraction
    start = time.time()
    (valid, train), failed = render_until(specs, [valid_minutes, minutes - valid_minutes], workers, progress)
    render_seconds = time.time() - start
    summary = {"render_seconds": round(render_seconds, 1), "failed_pieces": failed}
    for name, pieces in (("valid", valid), ("train", train)):
        manifest = output / "render" / f"{name}.jsonl"
        lines = [json.dumps({"path": f"pieces/{m['id']}.flac",
                             **{k: v for k, v in m.items() if k not in ("id", "duration", "render")}}) for m in pieces]
        manifest.write_text("\n".join(lines) + "\n")
        index = prepare(manifest, output / name, sample_rate=sample_rate, channels=channels,
                        shard_size=shard_size, workers=workers, progress=progress,
                        extra_index={"source": "lightning_musicgen demo-data", "seed": seed})
        summary[name] = {"pieces": len(pieces), "samples": index["samples"],
                         "minutes": round(index["duration"] / 60, 2), "shards": len(index["shards"])}
    summary["total_seconds"] = round(time.time() - start, 1)
    return summary


def demo_data_command(*, output: str = "data/demo", minutes: float = 60.0, valid_fraction: float = 0.1, seed: int = 0,
                      soundfont: Optional[str] = None, sample_rate: int = 32000, channels: Literal[1, 2] = 1,
                      workers: int = DEFAULT_WORKERS, max_piece_seconds: float = 90.0, shard_size: int = 16,
                      no_progress: bool = False) -> None:
    """Render the offline demo music dataset (music21's corpus) into train/valid shards.

    Pieces are rendered with a General MIDI soundfont and written as WebDataset shards (OUTPUT/train,
    OUTPUT/valid) with captions from the real metadata. Deterministic given --seed; re-running resumes.

    Args:
        output: output folder.
        minutes: total minutes of audio, train + valid.
        valid_fraction: share of the minutes held out for validation (different pieces).
        seed: piece, ensemble and tempo choices.
        soundfont: a .sf2/.sf3 General MIDI soundfont (default: pretty_midi's TimGM6mb.sf2).
        sample_rate: sample rate.
        channels: 1 = mono, 2 = stereo.
        workers: processes (default: CPU count, at most 8).
        max_piece_seconds: longer pieces fade out here.
        shard_size: pieces per shard.
        no_progress: no progress bars.
    """
    if not minutes > 0 or not 0 < valid_fraction < 1:
        raise InputError(f"--minutes {minutes} must be > 0 and --valid-fraction {valid_fraction} in (0, 1)")
    with inputs_checked_by_library():
        summary = build_demo(output, minutes, valid_fraction, seed, soundfont, sample_rate, channels, workers,
                             max_piece_seconds, shard_size, progress=not no_progress)
    print(f"{output}: train {summary['train']['minutes']} min ({summary['train']['samples']} pieces, "
          f"{summary['train']['shards']} shards), valid {summary['valid']['minutes']} min "
          f"({summary['valid']['samples']} pieces); {summary['failed_pieces']} pieces failed; "
          f"{summary['total_seconds']} s")
