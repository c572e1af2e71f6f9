"""`python -m lightning_musicgen prepare`: audio folder or manifest -> WebDataset shards (FLAC + JSON).

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

import csv
import hashlib
import io
import json
import os
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lightning_musicgen.audio.channels import channel_order, to_channels
from lightning_musicgen.audio.integrity import read_checked
from lightning_musicgen.audio.io import convert_channels, read_audio, resample, write_audio
from lightning_musicgen.data.shards import (MELODY_MEMBER, AtomicShardWriter, atomic_write_json, json_bytes,
                                            sample_key, shard_name, write_index)
from lightning_musicgen.errors import AudioReadError, InputError

AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".caf"}
PATH_COLUMNS = ("path", "audio", "file", "filepath")
CAPTION_COLUMNS = ("description", "caption", "text")
MELODY_KEY = "melody_path"
AUTOCAPTION_CACHE = "autocaption.jsonl"
MARKER_NAME = "prepare.json"
LOCK_NAME = ".prepare.lock"
MARKER_FORMAT = "lightning_musicgen.prepare/1"
STATS_VERSION = 2
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))  # processes when not told
# Every name prepare writes into its output folder (a `.tmp-PID` suffix is a write in progress).
OWN_NAME = re.compile(r"^(shard-\d{6,}\.tar|shard-\d{6,}\.stats\.json|index\.json|report\.tsv|"
                      + "|".join(map(re.escape, (MARKER_NAME, LOCK_NAME, AUTOCAPTION_CACHE))) + r")(\.tmp-\d+)?$")
STATS_NAME = re.compile(r"^shard-(\d{6,})\.stats\.json$")

__all__ = ["InputError", "prepare", "scan_inputs", "scan_source", "plan_shards", "claim_output", "main"]


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def report_entry(path, action: str, reason: str, detail: str = "") -> dict:
    """One report.tsv row: `action` is skipped (not in the shards), kept (in the shards, with a
    problem) or ignored (not an input: broken link, unreadable folder, other file type, unused sidecar)."""
    return {"path": str(path), "action": action, "reason": reason, "detail": detail}


# ---- inputs --------------------------------------------------------------------------------------------

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


def walk_folder(source: Path, exclude: Path | None = None) -> tuple[dict[Path, list[Path]], list[dict]]:
    """Files per folder under `source` (symlinked folders followed once) and the ignored paths:
    unreadable folders, broken symlinks, second paths to a folder (symlinks). `exclude` (the output folder)
    is not entered."""
    ignored: list[dict] = []
    folders: dict[Path, list[Path]] = {}
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        ignored.append(report_entry(exc.filename, "ignored", "unreadable_folder", exc.strerror or str(exc)))

    for root, dirs, files in os.walk(source, onerror=unreadable, followlinks=True):
        root_path = Path(root)
        try:
            st = os.stat(root_path)
        except OSError as exc:
            unreadable(exc)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back to a folder already scanned
            ignored.append(report_entry(root_path, "ignored", "already_scanned",
                                        "a symlink to a folder scanned before"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if exclude is None or not _same_path(root_path / d, exclude))
        kept = []
        for name in sorted(files):
            path = root_path / name
            if path.is_symlink() and not path.exists():
                ignored.append(report_entry(path, "ignored", "broken_symlink", f"points to {os.readlink(path)}"))
            else:
                kept.append(path)
        folders[root_path] = kept
    return folders, ignored


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def match_sidecars(files: list[Path]) -> tuple[dict[Path, Path | None], list[dict]]:
    """Audio files of one folder -> their sidecar (or None), and the folder's ignored files (see the
    module docstring for the rule)."""
    audio = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    sidecars = [p for p in files if p.suffix.lower() == ".json"]
    others = [p for p in files if p not in audio and p not in sidecars]
    by_name = {p.name: p for p in audio}
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in audio:
        by_stem[p.stem].append(p)
    owner: dict[Path, Path | None] = {p: None for p in audio}
    ignored = [report_entry(p, "ignored", "not_audio", f"suffix {p.suffix or '(none)'!r} is not an audio type")
               for p in others]
    loose = []
    for sidecar in sidecars:
        base = sidecar.name[:-len(sidecar.suffix)]
        if base in by_name:  # NAME.EXT.json: explicit
            owner[by_name[base]] = sidecar
        else:
            loose.append((sidecar, base))
    for sidecar, base in loose:
        candidates = by_stem.get(base, [])
        if len(candidates) == 1 and owner[candidates[0]] is None:
            owner[candidates[0]] = sidecar
        elif len(candidates) == 1:
            ignored.append(report_entry(sidecar, "ignored", "unused_sidecar",
                                        f"{candidates[0].name} has its own {owner[candidates[0]].name}"))
        elif candidates:
            names = sorted(c.name for c in candidates)
            ignored.append(report_entry(sidecar, "ignored", "ambiguous_sidecar",
                                        f"matches {', '.join(names)}; name it {names[0]}.json to pick one"))
        else:
            ignored.append(report_entry(sidecar, "ignored", "unused_sidecar", "no audio file with this name"))
    return owner, ignored


def read_sidecar(path: Path) -> dict:
    """A sidecar's metadata; InputError (one line, naming the file) when it is not a JSON object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON sidecar ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: a sidecar must hold a JSON object, not {type(meta).__name__}")
    return _json_safe(meta)


def scan_folder(source: Path, exclude: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Items of an audio folder and the report entries of its inputs that are not items."""
    folders, report = walk_folder(source, exclude)
    items = []
    for files in folders.values():
        owner, ignored = match_sidecars(files)
        report += ignored
        for path, sidecar in owner.items():
            name = path.relative_to(source).as_posix()
            try:
                meta = read_sidecar(sidecar) if sidecar is not None else {}
            except InputError as exc:
                report.append(report_entry(path, "skipped", "bad_sidecar", str(exc)))
                continue
            items.append({"path": str(path), "name": name, "meta": meta})
    return items, report


def scan_manifest(source: Path) -> list[dict]:
    items = []
    if source.suffix.lower() in (".jsonl", ".ndjson"):
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
    return items


def scan_source(source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> tuple[list[dict], list[dict]]:
    """(items `{"path", "name", "meta"}` sorted by name, report entries of inputs that are not items)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if source.is_dir():
        items, report = scan_folder(source, Path(exclude) if exclude else None)
    else:
        items, report = scan_manifest(source), []
    items.sort(key=lambda it: it["name"])
    return items, report


def scan_inputs(source: str | os.PathLike) -> list[dict]:
    """Items `{"path", "name", "meta"}` from a folder (with sidecar JSONs) or a JSONL/CSV manifest, sorted."""
    return scan_source(source)[0]


# ---- the output folder ---------------------------------------------------------------------------------

class OutputClaim:
    """Holds `.prepare.lock` in the output folder (an advisory flock, so it dies with its process)."""

    def __init__(self, output: Path):
        self.output, self._file = output, None

    def acquire(self) -> "OutputClaim":
        self._file = open(self.output / LOCK_NAME, "a+")
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no protection against concurrent runs
            return self
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise InputError(f"--output {self.output}: another prepare (pid {holder}) is writing to this folder; "
                             "wait for it to finish") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


def _input_identity(source: Path) -> str:
    return str(source.resolve())


def read_marker(output: Path) -> dict | None:
    try:
        marker = json.loads((output / MARKER_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else {}


def foreign_files(output: Path, source: Path, items: list[dict]) -> list[str]:
    """Names in `output` that this prepare (from `source`) did not write: files of other names (except
    those present when an earlier `--overwrite` run adopted the folder), or shards of another input
    (another marker; without a marker, stats listing files that are not in the input)."""
    names = sorted(os.listdir(output))
    marker = read_marker(output)
    same_input = marker is not None and marker.get("input") == _input_identity(source)
    adopted = set(marker.get("kept_foreign", [])) if same_input else set()
    foreign = [n for n in names if not OWN_NAME.match(n) and n not in adopted]
    if marker is not None:
        if marker.get("input") != _input_identity(source):
            foreign += [n for n in names if OWN_NAME.match(n) and n not in (MARKER_NAME, LOCK_NAME)]
        return foreign
    # a folder from before markers existed: prepare's if its records list only files of this input
    known = {it["name"] for it in items}
    for n in names:
        if STATS_NAME.match(n) or n == "index.json":
            try:
                record = json.loads((output / n).read_text())
                ours = (record.get("kind") == "audio" if n == "index.json"
                        else isinstance(record.get("sources"), list) and set(record["sources"]) <= known)
            except (OSError, json.JSONDecodeError, AttributeError, TypeError):
                ours = False
            if not ours:  # token shards, another input's shards, or unreadable records
                foreign += [m for m in names if OWN_NAME.match(m) and m != LOCK_NAME]
                break
    return foreign


def claim_output(output: str | os.PathLike, source: str | os.PathLike, items: list[dict],
                 overwrite: bool = False) -> OutputClaim:
    """Create/lock the output folder and check it is ours to write (see the module docstring).
    A refused folder is left exactly as it was (the check runs before anything is written)."""
    output, source = Path(output), Path(source)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: is a file; give a folder (new, empty, or prepared from this input)")

    def refuse_foreign() -> None:
        foreign = foreign_files(output, source, items) if output.is_dir() and not overwrite else []
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(f"--output {output}: holds files this prepare did not write ({shown}); choose "
                             "another folder, or pass --overwrite to replace prepare's files in it")

    refuse_foreign()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--output {output}: cannot create the folder ({exc.strerror})") from None
    claim = OutputClaim(output).acquire()
    try:
        refuse_foreign()  # again under the lock: another run may have claimed it meanwhile
        marker = read_marker(output) or {}
        kept = set(marker.get("kept_foreign", [])) if marker.get("input") == _input_identity(source) else set()
        kept |= {n for n in os.listdir(output) if not OWN_NAME.match(n)}  # only non-empty with --overwrite
        atomic_write_json(output / MARKER_NAME, {"format": MARKER_FORMAT, "input": _input_identity(source),
                                                 "kept_foreign": sorted(kept)})
        for stale in output.glob("*.tmp-*"):  # leftovers of a killed run (the lock says none is running)
            if OWN_NAME.match(stale.name):
                stale.unlink(missing_ok=True)
    except BaseException:
        claim.release()
        raise
    return claim


# ---- the shard plan ------------------------------------------------------------------------------------

def previous_plan(output: Path, shard_size: int) -> dict[int, list[str]]:
    """Shard number -> source names, from the stats records of an earlier run (empty when the shard
    size changed: the old layout cannot be kept)."""
    plan = {}
    for stats_path in sorted(output.glob("shard-*.stats.json")):
        match = STATS_NAME.match(stats_path.name)
        if not match:
            continue
        try:
            stats = json.loads(stats_path.read_text())
            sources = [str(s) for s in stats["sources"]]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        if stats.get("shard_size", shard_size) != shard_size or len(sources) > shard_size:
            return {}
        plan[int(match.group(1))] = sources
    return plan


def plan_shards(items: list[dict], shard_size: int,
                previous: dict[int, list[str]] | None = None) -> dict[int, list[dict]]:
    """Shard number -> items. Known files stay in their shard; new ones fill the last shard, then new ones."""
    by_name = {it["name"]: it for it in items}
    plan: dict[int, list[dict]] = {}
    placed: set[str] = set()
    for number in sorted(previous or {}):
        members = [by_name[n] for n in previous[number] if n in by_name and n not in placed]
        if members:
            plan[number] = members
            placed.update(it["name"] for it in members)
    new = [it for it in items if it["name"] not in placed]
    if plan and new:
        last = max(plan)
        room = shard_size - len(plan[last])
        plan[last] += new[:room]
        new = new[room:]
    number = max(plan) + 1 if plan else 0
    for start in range(0, len(new), shard_size):
        plan[number] = new[start:start + shard_size]
        number += 1
    return plan


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


# ---- one shard -----------------------------------------------------------------------------------------

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


def load_item(item: dict, task: dict) -> tuple[torch.Tensor | None, dict, dict | None]:
    """(wav at the target format or None when skipped, metadata, report entry or None) for one input."""
    sr, channels = task["sample_rate"], task["channels"]
    try:
        audio = read_checked(item["path"])
    except AudioReadError as exc:
        return None, {}, report_entry(item["path"], "skipped", "unreadable", str(exc).split(": ", 1)[-1])
    entry, meta = None, dict(item["meta"])
    if audio.truncated is not None:
        if task["skip_truncated"] or audio.wav.shape[-1] == 0:
            return None, {}, report_entry(item["path"], "skipped", "truncated", audio.truncated)
        entry = report_entry(item["path"], "kept", "truncated",
                             f"{audio.truncated}; kept {audio.wav.shape[-1] / audio.sample_rate:.3f}s")
        meta["truncated"] = audio.truncated
    wav = to_channels(audio.wav, channels, channel_order(audio.format, audio.subtype))
    bad = check_audio(wav, audio.sample_rate, task["min_duration"], task["silence_db"])  # after the downmix
    if bad is not None:
        return None, {}, report_entry(item["path"], "skipped", *bad)
    wav = resample(wav, audio.sample_rate, sr)
    peak = float(wav.abs().max())
    if peak > 1.0:  # float sources above full scale, or downmix sums: scale down instead of clipping
        wav = wav / peak
        meta["gain"] = round(1.0 / peak, 6)
    meta.update(duration=round(wav.shape[-1] / sr, 6), sample_rate=sr, channels=channels,
                frames=int(wav.shape[-1]), source=item["name"])
    return wav, meta, entry


def _shard_task(task: dict) -> dict:
    """Write one shard (runs in a worker process). Returns its stats record."""
    torch.set_num_threads(1)
    out = Path(task["output"])
    sr = task["sample_rate"]
    samples, duration, report = 0, 0.0, []
    with AtomicShardWriter(out / task["name"]) as writer:
        for position, item in enumerate(task["items"]):
            wav, meta, entry = load_item(item, task)
            melody = None
            if wav is not None:
                try:
                    melody = melody_member(item, sr, task["channels"])
                except AudioReadError as exc:
                    wav, entry = None, report_entry(item["path"], "skipped", "melody_unreadable", str(exc)[:300])
            if entry is not None:
                report.append(entry)
            if wav is None:
                continue
            key = sample_key(task["first_index"] + position, Path(item["name"]).with_suffix("").as_posix())
            files = {"flac": encode_flac(wav, sr), "json": json_bytes(meta)}
            if melody is not None:
                files[MELODY_MEMBER] = melody
            writer.write(key, files)
            samples += 1
            duration += meta["duration"]
    stats = {"version": STATS_VERSION, "name": task["name"], "sources": [it["name"] for it in task["items"]],
             "fingerprint": _fingerprint(task["items"]), "options": _shard_options(task),
             "shard_size": task["shard_size"], "sample_rate": sr, "channels": task["channels"],
             "samples": samples, "duration": round(duration, 6), "report": report}
    atomic_write_json(out / task["name"].replace(".tar", ".stats.json"), stats)
    return stats


def _shard_options(task: dict) -> dict:
    """The options that change a shard's content."""
    return {k: task[k] for k in ("sample_rate", "channels", "min_duration", "silence_db", "skip_truncated")}


def _fingerprint(items: list[dict]) -> str:
    """Identity of a shard's inputs: names, metadata, sizes and modification times (of melody files too)."""
    def stamp(path):
        try:
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return None

    h = hashlib.sha1()
    for it in items:
        melody = [stamp(it["melody"])] if it.get("melody") else []  # a changed melody file rewrites the shard
        record = json.dumps([it["name"], it["meta"], stamp(it["path"])] + melody, sort_keys=True, default=str)
        h.update(record.encode("utf-8", "backslashreplace"))
    return h.hexdigest()


def _done(output: Path, task: dict) -> dict | None:
    stats_path = output / task["name"].replace(".tar", ".stats.json")
    if not (output / task["name"]).exists() or not stats_path.exists():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    same = (stats.get("version") == STATS_VERSION and stats.get("fingerprint") == _fingerprint(task["items"])
            and stats.get("options") == _shard_options(task))
    return stats if same else None


# ---- the run -------------------------------------------------------------------------------------------

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
        stats = _done(output, task)
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
    return results


def remove_stale_shards(output: Path, keep: set[str]) -> None:
    """Delete prepare's shards that the current plan no longer has (the folder is claimed: they are ours)."""
    for stale in sorted(output.glob("shard-*.tar")):
        if stale.name not in keep and OWN_NAME.match(stale.name):
            stale.unlink()
            stale.with_name(stale.name.replace(".tar", ".stats.json")).unlink(missing_ok=True)
    for stats in sorted(output.glob("shard-*.stats.json")):
        if stats.name.replace(".stats.json", ".tar") not in keep:
            stats.unlink(missing_ok=True)


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
