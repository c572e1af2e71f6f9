"""`python -m lightning_musicgen prepare`: audio folder or manifest -> WebDataset shards (FLAC + JSON).

Inputs
  - a folder, searched recursively for audio files (flac, wav, ogg, opus, mp3, aiff: whatever libsndfile
    reads); `NAME.json` next to `NAME.wav` is a sidecar with audiocraft's fields (description, title, artist,
    genre, moods, keywords, bpm, key, instrument; other keys are kept too);
  - or a manifest: JSONL (one object per line) or CSV with a path column (`path`, `audio`, `file` or
    `filepath`; relative paths are relative to the manifest) and optionally a caption column
    (`description`, `caption` or `text`); other columns become metadata.

Output (SHARD_DIR)
  - `shard-NNNNNN.tar`: samples `KEY.flac` (target rate/channels, 16-bit) + `KEY.json` (metadata plus
    duration, sample_rate, channels, source path);
  - `shard-NNNNNN.stats.json`: per-shard record (sources, samples, duration, skipped) - marks it complete;
  - `index.json`: samples, total duration and per-shard counts; `report.tsv`: skipped inputs and why.

Melody conditioning files: an input whose metadata has `melody_path` (a path relative to its sidecar's folder
or to the manifest; absolute paths as they are) gets that file, converted like the audio, as an extra member
`KEY.melody.flac`; the streaming pipeline crops it at the same time span as the audio and the melody
conditioner takes its chroma instead of the crop's. An unreadable melody file skips the sample
(`melody_unreadable`).

`--auto-caption`: inputs without a description get one from `data/autocaption.py` (tags, tempo, key), with
the raw analysis in `auto_caption`; the analyses are cached in `OUTPUT/autocaption.jsonl`.

Inputs are sorted and cut into shards of `--shard-size` files, so a re-run maps the same files to the same
shard names and skips every shard whose stats record matches (same files, sizes, modification times and
metadata; a changed input rewrites only its shard). Shards are written under a temporary name and
renamed when complete: a killed run never leaves a truncated shard. Unreadable, empty, non-finite, silent
or too-short files are skipped and listed in report.tsv; the run still succeeds.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from lightning_musicgen.audio.io import AudioReadError, convert_channels, read_audio, resample, write_audio
from lightning_musicgen.data.shards import (MELODY_MEMBER, AtomicShardWriter, atomic_write_json, sample_key,
                                            shard_name, write_index)

AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".caf"}
PATH_COLUMNS = ("path", "audio", "file", "filepath")
CAPTION_COLUMNS = ("description", "caption", "text")
MELODY_KEY = "melody_path"
AUTOCAPTION_CACHE = "autocaption.jsonl"


class InputError(ValueError):
    """Bad command-line input (missing folder, unreadable manifest row): reported on one line, exit 2."""


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _manifest_row(row: dict, where: str, base: Path) -> dict:
    path_col = next((c for c in PATH_COLUMNS if row.get(c)), None)
    if path_col is None:
        raise InputError(f"{where}: no path column (one of {', '.join(PATH_COLUMNS)})")
    meta = {k: v for k, v in row.items() if k not in PATH_COLUMNS and v not in (None, "")}
    caption_col = next((c for c in CAPTION_COLUMNS if row.get(c)), None)
    if caption_col and caption_col != "description":
        meta["description"] = meta.pop(caption_col)
    path = Path(row[path_col]).expanduser()
    path = path if path.is_absolute() else base / path
    return {"path": str(path), "name": str(row[path_col]), "meta": _json_safe(meta)}


def scan_inputs(source: str | os.PathLike) -> list[dict]:
    """Items `{"path", "name", "meta"}` from a folder (with sidecar JSONs) or a JSONL/CSV manifest, sorted."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    items = []
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
                continue
            meta, sidecar = {}, path.with_suffix(".json")
            if sidecar.exists():
                try:
                    meta = json.loads(sidecar.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"{sidecar}: invalid JSON sidecar ({exc})") from None
                if not isinstance(meta, dict):
                    raise InputError(f"{sidecar}: sidecar must hold a JSON object")
            items.append({"path": str(path), "name": str(path.relative_to(source)), "meta": _json_safe(meta)})
    elif source.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(source.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{source}:{n}: invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{source}:{n}: each line must be a JSON object")
            items.append(_manifest_row(row, f"{source}:{n}", source.parent))
    elif source.suffix.lower() == ".csv":
        with open(source, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                items.append(_manifest_row(row, f"{source}:{n}", source.parent))
    else:
        raise InputError(f"{source}: expected a folder, a .jsonl or a .csv manifest")
    items.sort(key=lambda it: it["name"])
    return items


def check_audio(wav: torch.Tensor, sr: int, min_duration: float, silence_db: float) -> tuple[str, str] | None:
    """(reason, detail) when a decoded file must be skipped, else None."""
    if wav.shape[-1] == 0:
        return "empty", "no samples"
    if not torch.isfinite(wav).all():
        return "non_finite", "NaN or inf samples"
    duration = wav.shape[-1] / sr
    if duration < min_duration:
        return "short", f"{duration:.3f}s < {min_duration}s"
    rms = float(wav.double().pow(2).mean().sqrt())
    if rms <= 10 ** (silence_db / 20):
        return "silent", f"rms {20 * np.log10(max(rms, 1e-12)):.1f} dBFS <= {silence_db} dBFS"
    return None


def encode_flac(wav: torch.Tensor, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    write_audio(buf, wav, sample_rate, format="FLAC", subtype=subtype)
    return buf.getvalue()


def resolve_melody_paths(items: list[dict], source: str | os.PathLike) -> list[dict]:
    """Items whose metadata names a melody conditioning file (`melody_path`) get `item["melody"]`, its path
    (relative paths: to the sidecar's folder for folder inputs, to the manifest's folder for manifests).
    Files that are some item's melody file are conditioning inputs, not samples: they are dropped."""
    source = Path(source)
    for it in items:
        value = it["meta"].get(MELODY_KEY)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise InputError(f"{it['name']}: {MELODY_KEY} must be a path, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (Path(it["path"]).parent if source.is_dir() else source.parent) / path
        it["melody"] = str(path)
    melodies = {os.path.realpath(it["melody"]) for it in items if it.get("melody")}
    return [it for it in items if os.path.realpath(it["path"]) not in melodies] if melodies else items


def melody_member(item: dict, sample_rate: int, channels: int) -> bytes | None:
    """The item's melody file as FLAC at the shard's rate and channels (None without one); raises
    AudioReadError when it cannot be used."""
    if not item.get("melody"):
        return None
    wav, sr = read_audio(item["melody"])
    if wav.shape[-1] == 0 or not torch.isfinite(wav).all():
        raise AudioReadError(f"{item['melody']}: empty or non-finite audio")
    wav = resample(convert_channels(wav, channels), sr, sample_rate)
    peak = float(wav.abs().max())
    return encode_flac(wav / peak if peak > 1.0 else wav, sample_rate)


def auto_caption(items: list[dict], output: Path, progress: bool, options: dict | None = None) -> list[dict]:
    """`--auto-caption`: a caption for every item without a description (users' captions win); `options`
    are `AutoCaptioner` keyword arguments."""
    import importlib.util
    if importlib.util.find_spec("musicnn") is None:
        raise InputError("--auto-caption needs the musicnn tagger weights: pip install --no-deps musicnn")
    from lightning_musicgen.data.autocaption import AutoCaptioner, fill_captions, has_caption
    if not any(not has_caption(it["meta"]) for it in items):
        return items
    return fill_captions(items, cache_path=output / AUTOCAPTION_CACHE, progress=progress,
                         captioner=AutoCaptioner(**(options or {})))


def _shard_task(task: dict) -> dict:
    """Write one shard (runs in a worker process). Returns its stats record."""
    torch.set_num_threads(1)
    out = Path(task["output"])
    sr, channels = task["sample_rate"], task["channels"]
    samples, duration, skipped = 0, 0.0, []
    with AtomicShardWriter(out / task["name"]) as writer:
        for item in task["items"]:
            try:
                wav, file_sr = read_audio(item["path"])
            except AudioReadError as exc:
                skipped.append({"path": item["path"], "reason": "unreadable", "detail": str(exc).split(": ", 1)[-1]})
                continue
            bad = check_audio(wav, file_sr, task["min_duration"], task["silence_db"])
            if bad is not None:
                skipped.append({"path": item["path"], "reason": bad[0], "detail": bad[1]})
                continue
            wav = resample(convert_channels(wav, channels), file_sr, sr)
            peak = float(wav.abs().max())
            meta = dict(item["meta"])
            if peak > 1.0:  # float sources above full scale: scale down instead of clipping
                wav = wav / peak
                meta["gain"] = round(1.0 / peak, 6)
            seconds = wav.shape[-1] / sr
            meta.update(duration=round(seconds, 6), sample_rate=sr, channels=channels,
                        frames=int(wav.shape[-1]), source=item["name"])
            try:
                melody = melody_member(item, sr, channels)
            except AudioReadError as exc:
                skipped.append({"path": item["path"], "reason": "melody_unreadable", "detail": str(exc)[:300]})
                continue
            key = sample_key(task["first_index"] + samples + len(skipped), Path(item["name"]).with_suffix("").as_posix())
            files = {"flac": encode_flac(wav, sr), "json": json.dumps(meta, ensure_ascii=False).encode()}
            if melody is not None:
                files[MELODY_MEMBER] = melody
            writer.write(key, files)
            samples += 1
            duration += seconds
    stats = {"name": task["name"], "sources": [it["name"] for it in task["items"]],
             "fingerprint": _fingerprint(task["items"]), "sample_rate": sr,
             "channels": channels, "samples": samples, "duration": round(duration, 6), "skipped": skipped}
    atomic_write_json(out / task["name"].replace(".tar", ".stats.json"), stats)
    return stats


def _fingerprint(items: list[dict]) -> str:
    """Identity of a shard's inputs: names, metadata, sizes and modification times."""
    def stamp(path):
        try:
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return None

    h = hashlib.sha1()
    for it in items:
        melody = [stamp(it["melody"])] if it.get("melody") else []  # a changed melody file rewrites the shard
        h.update(json.dumps([it["name"], it["meta"], stamp(it["path"])] + melody, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _done(output: Path, task: dict) -> dict | None:
    stats_path = output / task["name"].replace(".tar", ".stats.json")
    if not (output / task["name"]).exists() or not stats_path.exists():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    same = (stats.get("fingerprint") == _fingerprint(task["items"])
            and stats.get("sample_rate") == task["sample_rate"] and stats.get("channels") == task["channels"])
    return stats if same else None


def prepare(source, output, sample_rate: int = 32000, channels: int = 1, shard_size: int = 100,
            workers: int = 1, min_duration: float = 1.0, silence_db: float = -60.0, progress: bool = True,
            extra_index: dict | None = None, auto_captions: bool | dict = False) -> dict:
    """Build (or complete) the shard directory `output` from `source`; returns the index dict.
    `auto_captions`: caption inputs without a description (True, or `AutoCaptioner` keyword options)."""
    if shard_size < 1:
        raise InputError(f"--shard-size {shard_size}: must be >= 1")
    if channels not in (1, 2) or sample_rate <= 0:
        raise InputError(f"--sample-rate {sample_rate} / --channels {channels}: need a positive rate, 1 or 2 channels")
    items = resolve_melody_paths(scan_inputs(source), source)
    if not items:
        raise InputError(f"{source}: no audio files found")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if auto_captions:
        items = auto_caption(items, output, progress, {} if auto_captions is True else dict(auto_captions))
    for stale in output.glob("*.tmp-*"):  # leftovers of a killed run
        stale.unlink(missing_ok=True)
    tasks = [{"name": shard_name(i), "items": items[s:s + shard_size], "first_index": s, "output": str(output),
              "sample_rate": sample_rate, "channels": channels, "min_duration": min_duration,
              "silence_db": silence_db} for i, s in enumerate(range(0, len(items), shard_size))]
    results: dict[str, dict] = {}
    todo = []
    for task in tasks:
        stats = _done(output, task)
        if stats is not None:
            results[task["name"]] = stats
        else:
            todo.append(task)
    from tqdm import tqdm
    bar = tqdm(total=len(items), initial=len(items) - sum(len(t["items"]) for t in todo), unit="file",
               desc=f"prepare {output.name}", disable=not progress)
    if todo and workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_shard_task, t): t for t in todo}
            for future in as_completed(futures):
                stats = future.result()
                results[stats["name"]] = stats
                bar.update(len(futures[future]["items"]))
    else:
        for task in todo:
            stats = _shard_task(task)
            results[stats["name"]] = stats
            bar.update(len(task["items"]))
    bar.close()
    ordered = [results[t["name"]] for t in tasks]
    for stale in sorted(output.glob("shard-*.tar")):  # shards of an older, longer input list
        if stale.name not in results:
            stale.unlink()
            stale.with_name(stale.name.replace(".tar", ".stats.json")).unlink(missing_ok=True)
    skipped = [s for st in ordered for s in st["skipped"]]
    return write_index(output, ordered, skipped, kind="audio",
                       sample_rate=sample_rate, channels=channels, **(extra_index or {}))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lightning_musicgen prepare",
        description="Convert a folder of audio (+ sidecar .json) or a JSONL/CSV manifest into WebDataset tar "
                    "shards of FLAC + JSON, with index.json (samples, duration) and report.tsv (skipped files). "
                    "Re-running completes an interrupted run.")
    p.add_argument("--input", required=True, help="audio folder, or manifest .jsonl/.csv (path + caption columns)")
    p.add_argument("--output", required=True, help="shard directory to create/complete")
    p.add_argument("--sample-rate", type=int, default=32000, help="target sample rate (default 32000)")
    p.add_argument("--channels", type=int, default=1, choices=(1, 2), help="target channels (default 1)")
    p.add_argument("--shard-size", type=int, default=100, help="input files per shard (default 100)")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="parallel processes (default: CPU count, at most 8)")
    p.add_argument("--min-duration", type=float, default=1.0, help="skip files shorter than this (s, default 1)")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="skip files whose RMS is at or below this level (dBFS, default -60)")
    p.add_argument("--auto-caption", action="store_true",
                   help="caption inputs that have no description: musicnn tags, tempo and key (offline, CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        index = prepare(args.input, args.output, args.sample_rate, args.channels, args.shard_size, args.workers,
                        args.min_duration, args.silence_db, progress=not args.no_progress,
                        auto_captions=args.auto_caption)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {index['samples']} samples, {index['duration'] / 3600:.2f} h in "
          f"{len(index['shards'])} shards; skipped {index['skipped']} {index['skipped_by_reason'] or ''}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
