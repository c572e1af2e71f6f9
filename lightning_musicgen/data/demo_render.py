"""Rendering the demo pieces: a score -> timed note events (`note_events`) -> audio with tinysoundfont
and a General MIDI soundfont (`synthesize`; pretty_midi's TimGM6mb.sf2 is `default_soundfont`), one piece
spec (from `data.demo_corpus.plan_pieces`) -> ID.flac + ID.json sidecar, loudness-normalised with a peak
ceiling (`render_piece`, reused when its render choices are unchanged), and a bounded window of pieces
rendered in parallel, in order, until each split holds its minutes (`render_until`).
"""
from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from lightning_musicgen.audio.io import write_audio
from lightning_musicgen.audio.loudness import normalize_loudness
from lightning_musicgen.data.demo_corpus import COLLECTIONS, MAX_VOICES, choose_ensemble, describe, key_name
from lightning_musicgen.data.shards import atomic_write_json


def default_soundfont() -> str:
    import pretty_midi
    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


def note_events(score, seconds_per_quarter: float, n_doubling: int, rng: random.Random) -> list[tuple]:
    """(time_s, is_on, channel, midi_key, velocity) sorted; offs before ons at equal times."""
    events = []
    parts = list(score.parts)[:MAX_VOICES] if score.parts else [score]
    channels = [c for c in range(16) if c != 9]
    for voice, part in enumerate(parts):
        for n in part.flatten().notes:
            if n.duration.isGrace or n.quarterLength <= 0:
                continue
            on = float(n.offset) * seconds_per_quarter
            off = on + max(0.05, float(n.quarterLength) * seconds_per_quarter * 0.96)
            velocity = int(np.clip(rng.gauss(82 if voice == 0 else 74, 6), 40, 110))
            for p in n.pitches:
                targets = [(channels[voice], p.midi)]
                if n_doubling:  # single-line tune doubled an octave below on the next channel
                    targets.append((channels[1], p.midi - 12))
                for chan, midi in targets:
                    if 0 <= midi < 128:
                        events.append((on, 1, chan, midi, velocity))
                        events.append((off, 0, chan, midi, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


_SYNTH = {}


def _synth(soundfont: str, sample_rate: int):
    import tinysoundfont
    if (soundfont, sample_rate) not in _SYNTH:
        synth = tinysoundfont.Synth(samplerate=sample_rate, gain=-9.0)
        sfid = synth.sfload(soundfont, max_voices=256)
        _SYNTH[(soundfont, sample_rate)] = (synth, sfid)
    return _SYNTH[(soundfont, sample_rate)]


def synthesize(events: list[tuple], programs: list[int], soundfont: str, sample_rate: int,
               max_seconds: float, tail: float = 1.5) -> np.ndarray:
    """Render note events to float32 stereo [T, 2]; voices panned across the stereo field."""
    synth, sfid = _synth(soundfont, sample_rate)
    synth.sounds_off()
    channels = [c for c in range(16) if c != 9]
    for i, program in enumerate(programs):
        synth.program_select(channels[i], sfid, 0, program)
        pan = 64 if len(programs) == 1 else int(24 + 80 * i / (len(programs) - 1))
        synth.control_change(channels[i], 10, pan)
    end = min(events[-1][0] + tail, max_seconds)
    total = int(end * sample_rate)
    out = np.zeros((total, 2), dtype=np.float32)
    pos = 0
    for t, is_on, chan, midi, velocity in events:
        target = min(int(t * sample_rate), total)
        if target > pos:
            out[pos:target] = np.frombuffer(synth.generate_simple(target - pos), dtype=np.float32).reshape(-1, 2)
            pos = target
        if pos >= total:
            break
        if is_on:
            synth.noteon(chan, midi, velocity)
        else:
            synth.noteoff(chan, midi)
    if total > pos:
        out[pos:] = np.frombuffer(synth.generate_simple(total - pos), dtype=np.float32).reshape(-1, 2)
    synth.sounds_off()
    return out


def render_piece(spec: dict) -> dict:
    """Parse, render and write one piece (runs in a worker). Returns its metadata or {"error": ...}."""
    out_dir = Path(spec["out_dir"])
    flac, side = out_dir / f"{spec['id']}.flac", out_dir / f"{spec['id']}.json"
    render_key = {"seed": spec["seed"], "sample_rate": spec["sample_rate"], "channels": spec["channels"],
                  "soundfont": Path(spec["soundfont"]).name, "max_seconds": spec["max_seconds"]}
    if flac.exists() and side.exists():
        try:
            cached = json.loads(side.read_text())
        except json.JSONDecodeError:
            cached = {}
        if cached.get("render") == render_key:  # same choices: reuse (resume)
            return cached
    torch.set_num_threads(1)
    from music21 import corpus, meter
    import pretty_midi
    rng = random.Random(spec["seed"])
    try:
        score = corpus.parse(spec["path"], number=spec["number"]) if spec["number"] is not None \
            else corpus.parse(spec["path"])
        score = score.stripTies()
        try:
            score = score.expandRepeats()
        except Exception:
            pass  # inconsistent repeat marks: play it once through
    except Exception as exc:
        return {"id": spec["id"], "error": f"cannot parse {spec['path']}#{spec['number']}: {exc}"[:300]}
    info = COLLECTIONS[spec["collection"]]
    n_voices = max(1, len(score.parts)) if score.parts else 1
    ensemble, programs = choose_ensemble(n_voices, info["polyphonic"], rng)
    ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    beat_quarters = float(ts.beatDuration.quarterLength) if ts is not None else 1.0
    qpm = rng.uniform(*info["qpm"])
    bpm = max(20, int(round(qpm / beat_quarters)))
    seconds_per_quarter = 60.0 / (bpm * beat_quarters)
    doubling = 1 if (not info["polyphonic"] or n_voices == 1) and len(programs) == 2 else 0
    events = note_events(score, seconds_per_quarter, doubling, rng)
    if not events:
        return {"id": spec["id"], "error": f"{spec['path']}#{spec['number']}: no notes"}
    if len(programs) < n_voices:
        programs = programs + [programs[-1]] * (n_voices - len(programs))
    audio = synthesize(events, programs[:MAX_VOICES], spec["soundfont"], spec["sample_rate"],
                       spec["max_seconds"])
    wav = torch.from_numpy(audio.T.copy())
    if events[-1][0] + 1.5 > spec["max_seconds"]:  # truncated piece: fade out over the last 2 s
        fade = min(wav.shape[-1], int(2.0 * spec["sample_rate"]))
        wav[:, -fade:] *= torch.linspace(1.0, 0.0, fade)
    if spec["channels"] == 1:
        wav = wav.mean(0, keepdim=True)
    wav = normalize_loudness(wav, spec["sample_rate"], target_lufs=-18.0, max_gain_db=40.0, peak=0.89)
    meta = describe(spec, score, ensemble, bpm, ts.ratioString if ts is not None else None, key_name(score))
    meta["instrument"] = sorted({pretty_midi.program_to_instrument_name(p) for p in programs})
    meta.update(id=spec["id"], duration=round(wav.shape[-1] / spec["sample_rate"], 3), render=render_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = flac.with_name(flac.name + f".tmp-{os.getpid()}")
    write_audio(tmp, wav, spec["sample_rate"], format="FLAC", subtype="PCM_16")
    os.replace(tmp, flac)
    atomic_write_json(side, meta)
    return meta


def render_until(specs, minutes_wanted: list[float], workers: int, progress: bool = True) -> tuple[list[list[dict]], int]:
    """Render specs in order (a bounded window in parallel) and fill the splits in turn until each holds
    its minutes. Returns (pieces per split, failed count). Deterministic: results are consumed in order."""
    from tqdm import tqdm
    splits: list[list[dict]] = [[] for _ in minutes_wanted]
    filled = [0.0 for _ in minutes_wanted]
    failed, current = 0, 0
    bar = tqdm(total=round(sum(minutes_wanted), 1), unit="min", desc="render", disable=not progress)
    specs = iter(specs)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) if workers > 1 else _Inline() as pool:
        window = []
        while current < len(minutes_wanted):
            while len(window) < max(2, 3 * workers):
                spec = next(specs, None)
                if spec is None:
                    break
                window.append(pool.submit(render_piece, spec))
            if not window:
                break  # corpus exhausted
            meta = window.pop(0).result()
            if "error" in meta or meta.get("duration", 0) < 5.0:
                failed += 1
                continue
            splits[current].append(meta)
            filled[current] += meta["duration"] / 60
            bar.update(round(min(meta["duration"] / 60, bar.total - bar.n), 2))
            if filled[current] >= minutes_wanted[current]:
                current += 1
        for future in window:
            future.cancel()
    bar.close()
    return splits, failed


class _Inline:
    """A stand-in executor that runs tasks in this process (workers=1)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

        def cancel(self):
            return True

    def submit(self, fn, *args):
        return self._Done(fn(*args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
