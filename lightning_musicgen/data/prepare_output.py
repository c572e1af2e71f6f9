"""The output folder of `prepare`: claiming it (empty, new, or prepared earlier from the same input; an
advisory lock while a run writes; only prepare's own file names ever replaced) and the shard plan (known
files stay in their shard, new files fill the last one and then new ones; stale shards removed).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lightning_musicgen.data.shards import atomic_write_json
from lightning_musicgen.errors import InputError


AUTOCAPTION_CACHE = "autocaption.jsonl"
MARKER_NAME = "prepare.json"
LOCK_NAME = ".prepare.lock"
MARKER_FORMAT = "lightning_musicgen.prepare/1"
# Every name prepare writes into its output folder (a `.tmp-PID` suffix is a write in progress).
OWN_NAME = re.compile(r"^(shard-\d{6,}\.tar|shard-\d{6,}\.stats\.json|index\.json|report\.tsv|"
                      + "|".join(map(re.escape, (MARKER_NAME, LOCK_NAME, AUTOCAPTION_CACHE))) + r")(\.tmp-\d+)?$")
STATS_NAME = re.compile(r"^shard-(\d{6,})\.stats\.json$")


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


def remove_stale_shards(output: Path, keep: set[str]) -> None:
    """Delete prepare's shards that the current plan no longer has (the folder is claimed: they are ours)."""
    for stale in sorted(output.glob("shard-*.tar")):
        if stale.name not in keep and OWN_NAME.match(stale.name):
            stale.unlink()
            stale.with_name(stale.name.replace(".tar", ".stats.json")).unlink(missing_ok=True)
    for stats in sorted(output.glob("shard-*.stats.json")):
        if stats.name.replace(".stats.json", ".tar") not in keep:
            stats.unlink(missing_ok=True)
