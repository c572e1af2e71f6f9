"""`python -m lightning_musicgen prepare`: audio folder or manifest -> WebDataset shards (FLAC + JSON).

This module runs it (`prepare`, `prepare_command`): inputs are read by `data.prepare_inputs`, the output
folder is claimed and planned by `data.prepare_output`, each shard is written by `data.prepare_shard`.

Inputs
  - a folder, searched recursively (symlinked folders are followed once) for audio files (flac, wav, ogg,
    opus, mp3, aiff: whatever libsndfile reads), each with an optional JSON sidecar holding audiocraft's
    fields (description, title, artist, genre, moods, keywords, bpm, key, instrument; other keys are kept).
    Sidecar rule, per folder: `NAME.EXT.json` belongs to `NAME.EXT`; otherwise `NAME.json` belongs to the
    one audio file of that folder whose name without its extension is NAME. When several audio files share
    NAME (`dup.wav`, `dup.flac`), `NAME.json` belongs to none of them and is reported as ambiguous. A
    sidecar never applies to a file in another folder, and never to two files;
  - or a manifest: JSONL (one object per line) or CSV with a path column (`path`, `audio`, `file` or
    `filepath`; relative paths are relative to the manifest) and optionally a caption column
    (`description`, `caption` or `text`); other columns become metadata.

Output (SHARD_DIR)
  - `shard-NNNNNN.tar`: samples `KEY.flac` (target rate/channels, 16-bit) + `KEY.json` (metadata plus
    duration, sample_rate, channels, source path);
  - `shard-NNNNNN.stats.json`: per-shard record (sources, samples, duration, report) - marks it complete;
  - `index.json`: samples, total duration and per-shard counts; `report.tsv`: every input that was skipped,
    kept with a problem (truncated) or ignored, and why;
  - `prepare.json`: which input the folder was prepared from; `.prepare.lock`: held while a run writes.

Melody conditioning files: an input whose metadata has `melody_path` (a path relative to its sidecar's folder
or to the manifest; absolute paths as they are) gets that file, converted like the audio, as an extra member
`KEY.melody.flac`; the streaming pipeline crops it at the same time span as the audio and the melody
conditioner takes its chroma instead of the crop's. An unreadable melody file skips the sample
(`melody_unreadable`).

`--auto-caption`: inputs without a description get one from `data/autocaption.py` (tags, tempo, key), with
the raw analysis in `auto_caption`; the analyses are cached in `OUTPUT/autocaption.jsonl`.

Safety: `prepare` writes only into an empty or new folder, or one it prepared earlier from the same input;
a folder holding anything else (another dataset's shards, other files) is refused unless `overwrite`,
and even then only files with prepare's own names are replaced (the other files present then are
recorded in prepare.json and accepted by later runs; new ones are refused again). A second run on the same folder while
one is writing is refused (an advisory lock, released by the OS when its holder dies).

Shard plan: a first run sorts the inputs and cuts them into shards of `shard_size` files. A re-run keeps
every known file in the shard that holds it (read from the stats records), appends new files to the
last shard while it has room and then to new shards, and drops removed files from theirs: only shards
whose files changed are rewritten. A shard whose stats record matches (same files, sizes, modification
times, metadata, options) is kept as is. Shards are written under a temporary name and renamed when
complete: a killed run never leaves a truncated shard.

Every input ends up as a sample, or in report.tsv: unreadable, empty, non-finite, silent (after the
channel downmix) or too-short files are skipped; truncated files are kept at their decodable length
(or skipped with `skip_truncated`); a sidecar that is not a JSON object skips its audio file; broken
symlinks, unreadable folders, files of other types and unused sidecars are listed as ignored.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

from lightning_musicgen.data.prepare_inputs import resolve_melody_paths, scan_source
from lightning_musicgen.data.prepare_output import (AUTOCAPTION_CACHE, claim_output, plan_shards, previous_plan,
                                                    remove_stale_shards)
from lightning_musicgen.data.prepare_shard import done_shard, shard_task
from lightning_musicgen.data.shards import shard_name, write_index
from lightning_musicgen.errors import InputError


DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))  # processes when not told


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


def prepare(source, output, sample_rate: int = 32000, channels: int = 1, shard_size: int = 100,
            workers: int = 1, min_duration: float = 1.0, silence_db: float = -60.0, progress: bool = True,
            extra_index: dict | None = None, overwrite: bool = False, skip_truncated: bool = False,
            auto_captions: bool | dict = False) -> dict:
    """Build (or complete) the shard directory `output` from `source`; returns the index dict.
    `auto_captions`: caption inputs without a description (True, or `AutoCaptioner` keyword options)."""
    if shard_size < 1:
        raise InputError(f"--shard-size {shard_size}: must be >= 1")
    if channels not in (1, 2) or sample_rate <= 0:
        raise InputError(f"--sample-rate {sample_rate} / --channels {channels}: need a positive rate, 1 or 2 channels")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: is a file; give a folder (new, empty, or prepared from this input)")
    items, scan_report = scan_source(source, exclude=output)
    items = resolve_melody_paths(items, source)
    if not items:
        raise InputError(f"{source}: no audio files found" + (f" ({len(scan_report)} paths ignored or skipped)"
                                                              if scan_report else ""))
    claim = claim_output(output, source, items, overwrite)
    try:
        if auto_captions:
            items = auto_caption(items, output, progress, {} if auto_captions is True else dict(auto_captions))
        options = {"output": str(output), "sample_rate": sample_rate, "channels": channels,
                   "min_duration": min_duration, "silence_db": silence_db, "skip_truncated": skip_truncated,
                   "shard_size": shard_size}
        plan = plan_shards(items, shard_size, previous_plan(output, shard_size))
        tasks = [{"name": shard_name(n), "items": members, "first_index": n * shard_size, **options}
                 for n, members in sorted(plan.items())]
        results = run_shard_tasks(output, tasks, workers, progress)
        ordered = [results[t["name"]] for t in tasks]
        remove_stale_shards(output, {t["name"] for t in tasks})
        report = [e for st in ordered for e in st["report"]] + scan_report
        return write_index(output, ordered, report, kind="audio",
                           sample_rate=sample_rate, channels=channels, **(extra_index or {}))
    finally:
        claim.release()


def run_shard_tasks(output: Path, tasks: list[dict], workers: int, progress: bool) -> dict[str, dict]:
    """Write the shards that are not already complete (in `workers` processes); shard name -> stats."""
    results: dict[str, dict] = {}
    todo = []
    for task in tasks:
        stats = done_shard(output, task)
        if stats is not None:
            results[task["name"]] = stats
        else:
            todo.append(task)
    from tqdm import tqdm
    total = sum(len(t["items"]) for t in tasks)
    bar = tqdm(total=total, initial=total - sum(len(t["items"]) for t in todo), unit="file",
               desc=f"prepare {output.name}", disable=not progress)
    if todo and workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(shard_task, t): t for t in todo}
            for future in as_completed(futures):
                stats = future.result()
                results[stats["name"]] = stats
                bar.update(len(futures[future]["items"]))
    else:
        for task in todo:
            stats = shard_task(task)
            results[stats["name"]] = stats
            bar.update(len(task["items"]))
    bar.close()
    return results


def summary_line(output, index: dict) -> str:
    parts = [f"{output}: {index['samples']} samples, {index['duration'] / 3600:.2f} h in {len(index['shards'])} shards"]
    for key in ("skipped", "kept", "ignored"):
        if index.get(key):
            label = "kept with problems" if key == "kept" else key
            parts.append(f"{label} {index[key]} {index[f'{key}_by_reason']}")
    if len(parts) > 1:
        parts.append(f"see {Path(output) / 'report.tsv'}")
    return "; ".join(parts)


def prepare_command(*, input: str, output: str, overwrite: bool = False, sample_rate: int = 32000,
                    channels: Literal[1, 2] = 1, shard_size: int = 100, workers: int = DEFAULT_WORKERS,
                    min_duration: float = 1.0, silence_db: float = -60.0, skip_truncated: bool = False,
                    auto_caption: bool = False, no_progress: bool = False) -> None:
    """Convert an audio folder or a JSONL/CSV manifest into WebDataset shards of FLAC + JSON.

    Writes index.json (samples, duration) and report.tsv (every input skipped, kept with a problem, or
    ignored, and why). Re-running completes an interrupted run and rewrites only the shards whose files
    changed.

    Args:
        input: audio folder (+ sidecar .json), or manifest .jsonl/.csv (path + caption columns).
        output: shard folder to create or complete (new, empty, or prepared earlier from this input).
        overwrite: write into a folder holding files prepare did not write from this input; prepare's
            own file names (shard-*.tar, index.json, ...) are replaced, other files are left alone.
        sample_rate: target sample rate.
        channels: target channels; surround files are downmixed with ITU-R BS.775 coefficients.
        shard_size: input files per shard.
        workers: parallel processes (default: CPU count, at most 8).
        min_duration: skip files shorter than this (seconds).
        silence_db: skip files whose RMS after the channel conversion is at or below this level (dBFS).
        skip_truncated: skip truncated files (default: keep what decodes; either way they are in report.tsv).
        auto_caption: caption inputs that have no description: musicnn tags, tempo and key (offline, CPU).
        no_progress: no progress bar.
    """
    index = prepare(input, output, sample_rate, channels, shard_size, workers, min_duration, silence_db,
                    progress=not no_progress, overwrite=overwrite, skip_truncated=skip_truncated,
                    auto_captions=auto_caption)
    print(summary_line(output, index))
