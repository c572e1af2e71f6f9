r"""WebDataset shards: naming, atomic writing, the index file, and shard-list expansion.

A shard is a plain tar of samples `KEY.flac` + `KEY.json` (audio shards) or `KEY.codes.npy` + `KEY.json`
(token shards). Each shard directory holds `index.json` (samples, total duration, per-shard counts) that
datamodules use for epoch sizing, and `report.tsv` listing the inputs that were skipped, kept with a
problem, or ignored, and why.

report.tsv: a header line `path<TAB>action<TAB>reason<TAB>detail`, then one line per entry. In every
field a backslash, tab, newline and carriage return are written `\\`, `\t`, `\n`, `\r` (so a name
with a tab or newline stays on its line and in its column; `read_report` undoes it), and bytes of a
file name that are not UTF-8 appear as `\udcXX`.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import braceexpand

from lightning_musicgen.errors import InputError, MissingFileError

INDEX_NAME = "index.json"
REPORT_NAME = "report.tsv"
SHARD_FORMAT = "lightning_musicgen.shards/1"
AUDIO_EXTS = ("flac", "wav", "ogg", "opus", "mp3")
MELODY_MEMBER = "melody.flac"  # optional member: the sample's melody conditioning file (prepare: melody_path)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(index: int, name: str) -> str:
    """A WebDataset key: no dots (the key ends at the first dot of a member name) and no slashes."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:80]
    return f"{index:08d}_{stem}" if stem else f"{index:08d}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to `path.tmp-PID` then rename: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any, **kwargs) -> bytes:
    """UTF-8 JSON; undecodable bytes of file names (lone surrogates) become `\\udcXX` escapes."""
    return json.dumps(obj, ensure_ascii=False, **kwargs).encode("utf-8", "backslashreplace")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj, indent=1) + b"\n")


class AtomicShardWriter:
    """Write one tar shard under a temporary name; `close()` renames it into place.

    Used as a context manager: if the body raises (or the process is killed) the final name never
    appears, so a resumed run sees the shard as missing and rewrites it from scratch.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: `files` maps extensions (`flac`, `json`, `codes.npy`) to bytes."""
        if "." in key or "/" in key:
            raise InputError(f"sample key {key!r} must not contain '.' or '/'")
        now = time.time()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), now, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._tar.close()
        except Exception:
            pass
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


REPORT_COLUMNS = ("path", "action", "reason", "detail")
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def tsv_escape(value: Any) -> str:
    return re.sub(r"[\\\t\n\r]", lambda m: _TSV_ESCAPES[m.group()], str(value))


def tsv_unescape(value: str) -> str:
    return re.sub(r"\\[\\tnr]", lambda m: _TSV_UNESCAPES[m.group()], value)


def format_report(entries: list[dict]) -> bytes:
    """report.tsv's bytes (see the module docstring); entries without an action are `skipped`."""
    lines = ["\t".join(REPORT_COLUMNS)]
    for e in entries:
        row = {"action": "skipped", "detail": "", **e}
        lines.append("\t".join(tsv_escape(row[c]) for c in REPORT_COLUMNS))
    return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


def read_report(path: str | os.PathLike) -> list[dict]:
    """The entries of a report.tsv (a path to it or to its shard directory), unescaped."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, map(tsv_unescape, line.split("\t")))) for line in lines[1:] if line]


def write_index(shard_dir: str | os.PathLike, shards: list[dict], report: list[dict], **info) -> dict:
    """Write `index.json` (+ `report.tsv`) for a finished shard directory. `report` entries are dicts
    with `path`, `reason`, `detail` and `action` (skipped - the default -, kept or ignored); the index
    counts each action in total and by reason."""
    shard_dir = Path(shard_dir)
    counts: dict[str, dict[str, int]] = {"skipped": {}, "kept": {}, "ignored": {}}
    for e in report:
        by_reason = counts.setdefault(e.get("action", "skipped"), {})
        by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + 1
    index = {"format": SHARD_FORMAT, **info,
             "samples": sum(s["samples"] for s in shards),
             "duration": round(sum(s["duration"] for s in shards), 3)}
    for action, by_reason in counts.items():
        index[action], index[f"{action}_by_reason"] = sum(by_reason.values()), by_reason
    index["shards"] = [{k: s[k] for k in ("name", "samples", "duration")} for s in shards]
    atomic_write_bytes(shard_dir / REPORT_NAME, format_report(report))
    atomic_write_json(shard_dir / INDEX_NAME, index)
    return index


def read_index(path: str | os.PathLike) -> dict:
    """Read a shard directory's `index.json` (path to the file or to its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no shard index (run `prepare` to create it)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid shard index ({exc})") from None
    if index.get("format") != SHARD_FORMAT:
        raise InputError(f"{path}: not a shard index (format={index.get('format')!r})")
    return index


def expand_shards(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """Shard URLs from a spec: a list, a directory (its index.json, else its *.tar), an index.json,
    a glob, a brace pattern (`shard-{000000..000009}.tar`), or `pipe:CMD` (object storage through a CLI,
    e.g. `pipe:aws s3 cp s3://bucket/shard-{000000..000009}.tar -`). Comma/space separated lists work.
    Local files must exist: a missing one is a one-line error naming it."""
    if spec is None:
        return []
    if not isinstance(spec, (str, os.PathLike)):
        return [url for item in spec for url in expand_shards(item)]
    spec = str(spec).strip()
    if spec.startswith("pipe:") or re.match(r"^[a-z][a-z0-9+]*://", spec):
        return list(braceexpand.braceexpand(spec))  # remote: existence is checked on read
    if "," in spec and not os.path.exists(spec) and "{" not in spec:
        return expand_shards([s for s in spec.split(",") if s.strip()])
    path = Path(spec)
    if path.is_dir():
        if (path / INDEX_NAME).exists():
            return expand_shards(path / INDEX_NAME)
        found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise MissingFileError(f"{path}: no *.tar shards in this directory")
        return found
    if path.name == INDEX_NAME or (path.suffix == ".json" and path.exists()):
        index = read_index(path)
        return [str(path.parent / s["name"]) for s in index["shards"]]
    urls: list[str] = []
    for pattern in braceexpand.braceexpand(spec):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise MissingFileError(f"{pattern}: no shard matches this pattern")
            urls += matches
        elif not os.path.exists(pattern):
            raise MissingFileError(f"{pattern}: shard not found")
        else:
            urls.append(pattern)
    return urls


def iter_tar_samples(url: str, on_error) -> Iterator[dict]:
    """Samples (`{"__key__", "__url__", ext: bytes}`) of one shard; errors go to `on_error(exc)` and end
    the shard (a truncated tar keeps the samples read before the damage)."""
    import webdataset as wds

    def handler(exc: Exception) -> bool:
        on_error(exc)
        return False  # stop this shard: after a tar error the stream position is unreliable

    yield from wds.tariterators.tarfile_samples([{"url": url}], handler=handler)
