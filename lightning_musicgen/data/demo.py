"""`python -m lightning_musicgen demo-data`: an offline demo music dataset rendered from music21's corpus.

Pieces come from music21's bundled corpus (Bach chorales, Palestrina mass movements, Monteverdi
madrigals, Essen folk songs, O'Neill's Irish tunes, Ryan's Mammoth Collection, Aird's Scottish airs). Each
piece gets a random ensemble that fits its number of voices (string/brass/woodwind/saxophone ensembles,
organ, piano, harpsichord, choir; solo or octave-doubled melody instruments for tunes) and a random tempo,
and is rendered with tinysoundfont and a General MIDI soundfont (pretty_midi's TimGM6mb.sf2 unless
`--soundfont`). Output is loudness-normalised with a peak ceiling, so nothing clips. Captions come from the
real metadata, e.g. "A string quartet playing a Baroque chorale by J.S. Bach in G minor, 4/4, 80 BPM".

Layout of OUTPUT (default data/demo):
  render/pieces/ID.flac + ID.json   rendered pieces with audiocraft-style sidecars (kept for resume)
  render/{train,valid}.jsonl        the split manifests
  train/shard-NNNNNN.tar, train/index.json, valid/shard-NNNNNN.tar, valid/index.json  (by `prepare`)
Validation pieces are different pieces from training pieces (a held-out split, ~10% of the minutes).
Everything is deterministic given --seed; re-running resumes (rendered pieces and finished shards are kept).
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from lightning_musicgen.audio.io import write_audio
from lightning_musicgen.audio.loudness import normalize_loudness
from lightning_musicgen.data.prepare import DEFAULT_WORKERS
from lightning_musicgen.data.shards import atomic_write_json
from lightning_musicgen.errors import InputError, MissingFileError, inputs_checked_by_library

MAX_VOICES = 15  # MIDI channels minus the drum channel

# Ensembles for polyphonic pieces: General MIDI programs from the top voice to the bottom one.
FAMILIES = {
    "string": [40, 40, 41, 42, 43],          # violin, violin, viola, cello, contrabass
    "brass": [56, 56, 60, 57, 58],           # trumpet, trumpet, French horn, trombone, tuba
    "woodwind": [73, 68, 71, 70],            # flute, oboe, clarinet, bassoon
    "saxophone": [64, 65, 66, 67],           # soprano, alto, tenor, baritone sax
    "recorder": [74, 74, 74, 74],
}
GROUP_WORDS = {1: "solo", 2: "duo", 3: "trio", 4: "quartet", 5: "quintet", 6: "sextet"}
KEYBOARDS = {"church organ": 19, "piano": 0, "harpsichord": 6}
CHOIR = 52  # choir aahs
# Melody instruments for single-line tunes, and octave-below partners for doubled melodies.
MELODY = {"fiddle": 110, "violin": 40, "flute": 73, "tin whistle": 78, "accordion": 21, "oboe": 68,
          "clarinet": 71, "recorder": 74, "harp": 46, "piano": 0, "acoustic guitar": 24, "banjo": 105,
          "harmonica": 22, "bagpipe": 109}
PARTNERS = {"cello": 42, "bassoon": 70, "acoustic guitar": 24, "harp": 46, "piano": 0}

# name, music21 corpus selection, style phrase, composer (caption) / artist, genre, quarter notes per minute
COLLECTIONS = {
    "bach": dict(weight=0.30, style="a Baroque chorale", by="J.S. Bach", artist="Johann Sebastian Bach",
                 genre="baroque", qpm=(60, 96), polyphonic=True),
    "palestrina": dict(weight=0.10, style="a Renaissance mass movement", by="Palestrina",
                       artist="Giovanni Pierluigi da Palestrina", genre="renaissance", qpm=(96, 144), polyphonic=True),
    "monteverdi": dict(weight=0.10, style="a Renaissance madrigal", by="Claudio Monteverdi",
                       artist="Claudio Monteverdi", genre="renaissance", qpm=(72, 112), polyphonic=True),
    "essenFolksong": dict(weight=0.15, style="a German folk song", by=None, artist="Traditional",
                          genre="folk", qpm=(80, 144), polyphonic=False),
    "oneills1850": dict(weight=0.13, style="an Irish folk tune", by=None, artist="Traditional",
                        genre="irish folk", qpm=(120, 200), polyphonic=False),
    "ryansMammoth": dict(weight=0.14, style="a traditional fiddle tune", by=None, artist="Traditional",
                         genre="fiddle music", qpm=(140, 210), polyphonic=False),
    "airdsAirs": dict(weight=0.08, style="a Scottish air", by=None, artist="Traditional",
                      genre="scottish folk", qpm=(80, 150), polyphonic=False),
}
TUNE_TYPES = ("hornpipe", "reel", "jig", "slipjig", "strathspey", "clog", "fling", "polka", "waltz", "march",
              "schottische", "quickstep")


def default_soundfont() -> str:
    import pretty_midi
    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


# -- catalogue --------------------------------------------------------------------------------------
def catalogue() -> dict[str, list[tuple[str, int | None]]]:
    """(corpus path, work number) of every usable piece per collection (ABC books list their tunes as X: N)."""
    from music21 import corpus
    pieces: dict[str, list] = {name: [] for name in COLLECTIONS}
    for name in ("bach", "palestrina", "monteverdi"):
        for path in corpus.getComposer(name):
            rel = Path(path).relative_to(Path(corpus.__file__).parent).as_posix()
            if name == "bach" and not re.match(r"bach/bwv[\d.]+\.mxl$", rel):
                continue  # chorales only (skips alternative versions and non-chorale works)
            if name == "monteverdi" and not rel.endswith(".mxl"):
                continue  # madrigal scores, not the roman-numeral analyses
            if name == "palestrina" and not rel.endswith(".krn"):
                continue
            pieces[name].append((rel, None))
    root = Path(corpus.__file__).parent
    for name in ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs"):
        for path in sorted((root / name).glob("*.abc")):
            numbers = re.findall(r"^X:\s*(\d+)", path.read_text(errors="replace"), flags=re.M)
            rel = path.relative_to(root).as_posix()
            if len(numbers) <= 1:
                pieces[name].append((rel, None))
            else:
                pieces[name] += [(rel, int(n)) for n in dict.fromkeys(numbers)]
    for name in pieces:
        pieces[name] = sorted(set(pieces[name]), key=lambda p: (p[0], p[1] or 0))
    return pieces


def plan_pieces(seed: int) -> "iter[dict]":
    """An endless-until-exhausted, deterministic stream of piece specs (no piece twice)."""
    rng = random.Random(seed)
    pools = {name: list(items) for name, items in catalogue().items() if items}
    for items in pools.values():
        rng.shuffle(items)
    while pools:
        names = sorted(pools)
        name = rng.choices(names, weights=[COLLECTIONS[n]["weight"] for n in names])[0]
        path, number = pools[name].pop()
        if not pools[name]:
            del pools[name]
        slug = re.sub(r"[^A-Za-z0-9]+", "_", Path(path).with_suffix("").as_posix()).strip("_")
        piece_id = f"{slug}_{number}" if number is not None else slug
        yield {"id": piece_id, "collection": name, "path": path, "number": number, "seed": rng.getrandbits(31)}


# -- musical facts ----------------------------------------------------------------------------------
def key_name(score) -> str | None:
    """'G minor', 'B flat major' from the score's Key (ABC K: fields) or a key analysis."""
    from music21 import key as m21key
    found = next(iter(score.recurse().getElementsByClass(m21key.Key)), None)
    try:
        k = found if found is not None and found.mode in ("major", "minor") else score.analyze("key")
    except Exception:
        return None
    tonic = k.tonic.name.replace("-", " flat").replace("#", " sharp")
    return f"{tonic} {k.mode}"


def tune_type(title: str | None) -> str | None:
    words = re.sub(r"[^a-z]+", " ", (title or "").lower()).split()
    return next((t for t in TUNE_TYPES if t in words or (t == "slipjig" and "slip" in words)), None)


def clean_title(title: str | None) -> str | None:
    if not title:
        return None
    title = re.split(r"\s+--\s+|\s*\(", title)[0].strip().rstrip(".,;:")
    if title.isupper():
        title = title.title().replace("'S", "'s")
    return title or None


def choose_ensemble(n_voices: int, polyphonic: bool, rng: random.Random) -> tuple[str, list[int]]:
    """(caption phrase, GM program per voice from top to bottom)."""
    if polyphonic and n_voices > 1:
        kind = rng.choice(["family"] * 5 + ["keyboard"] * 3 + ["choir"])
        if kind == "family":
            family = rng.choice(list(FAMILIES))
            programs = FAMILIES[family]
            voices = [programs[round(i * (len(programs) - 1) / (n_voices - 1))] for i in range(n_voices)]
            group = GROUP_WORDS.get(n_voices, "ensemble")
            return f"a {family} {group}", voices
        if kind == "keyboard":
            name = rng.choice(list(KEYBOARDS))
            article = "an" if name[0] in "aeiou" else "a"
            return f"{article} {name}" if name != "piano" else "a solo piano", [KEYBOARDS[name]] * n_voices
        return "a choir", [CHOIR] * n_voices
    name = rng.choice(list(MELODY))
    if rng.random() < 0.35:
        partner = rng.choice([p for p in PARTNERS if p != name])
        return f"a {name} and {partner} in octaves", [MELODY[name], PARTNERS[partner]]
    return f"a solo {name}", [MELODY[name]]


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


def describe(spec: dict, score, ensemble: str, bpm: int, time_signature: str | None, key: str | None) -> dict:
    """Caption + audiocraft-style metadata from the piece's real metadata."""
    info = COLLECTIONS[spec["collection"]]
    title = clean_title(score.metadata.title if score.metadata else None)
    style = info["style"]
    kind = tune_type(score.metadata.title if score.metadata else None)
    if kind and spec["collection"] in ("ryansMammoth", "oneills1850", "airdsAirs"):
        region = {"ryansMammoth": "a traditional", "oneills1850": "an Irish", "airdsAirs": "a Scottish"}
        style = f"{region[spec['collection']]} {kind}"
    if spec["collection"] == "bach":
        title = "Chorale BWV " + Path(spec["path"]).stem.replace("bwv", "")
    verb = "singing" if ensemble == "a choir" else "playing"
    text = f"{ensemble[0].upper()}{ensemble[1:]} {verb} {style}"
    if info["by"]:
        text += f" by {info['by']}"
    elif title and spec["collection"] != "essenFolksong":
        text += f", \"{title}\","
    facts = [f for f in (f"in {key}" if key else None, time_signature, f"{bpm} BPM") if f]
    text += " " + ", ".join(facts)
    return {"description": text, "title": title, "artist": info["artist"], "genre": info["genre"],
            "keywords": [w for w in (kind, info["genre"], ensemble.split(" ", 1)[-1]) if w],
            "bpm": bpm, "key": key, "time_signature": time_signature, "ensemble": ensemble,
            "corpus": "music21", "corpus_path": spec["path"], "work_number": spec["number"]}


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
