"""One shard of `prepare` (runs in a worker): read and check each input (unreadable, empty, non-finite,
silent, too short -> skipped; truncated -> kept or skipped), convert it to the target rate/channels, encode
it (and its melody file) as FLAC and write the tar under a temporary name, then its stats record; a shard
whose record matches its files and options is kept as is.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from lightning_musicgen.audio.channels import channel_order, to_channels
from lightning_musicgen.audio.integrity import read_checked
from lightning_musicgen.audio.io import convert_channels, read_audio, resample, write_audio
from lightning_musicgen.data.prepare_inputs import report_entry
from lightning_musicgen.data.shards import MELODY_MEMBER, AtomicShardWriter, atomic_write_json, json_bytes, sample_key
from lightning_musicgen.errors import AudioReadError


STATS_VERSION = 2


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


def shard_task(task: dict) -> dict:
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


def done_shard(output: Path, task: dict) -> dict | None:
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
