"""What `prepare` reads: a folder (walked once, symlinked folders followed once, each audio file with its
JSON sidecar by the per-folder rule) or a JSONL/CSV manifest -> input items {"path", "meta", ...} plus
report entries for what was ignored; `melody_path` resolved against the sidecar's folder or the manifest.
See `data.prepare` for the rules.
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

from lightning_musicgen.errors import InputError


AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".caf"}
PATH_COLUMNS = ("path", "audio", "file", "filepath")
CAPTION_COLUMNS = ("description", "caption", "text")
MELODY_KEY = "melody_path"


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
