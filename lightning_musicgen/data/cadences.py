"""Pieces in a known key: cadential chord progressions rendered with the demo's General MIDI synthesiser.

A yardstick for key estimation (`autocaption.KeyEstimator`): every piece states its key without
ambiguity. It is a chain of phrases, each a cadential progression that ends on the tonic (major:
I-IV-V-I, ii-V-I, I-vi-ii-V(7)-I, I-IV-I64-V7-I; minor, harmonic minor with the raised leading tone in V:
i-iv-V-i, ii°-V-i, i-VI-iv-V(7)-i, i-iv-i64-V7-i), one chord a bar, and starts and ends on the tonic
chord. Three voices: a bass on every beat (the chord's root, its fifth on the third beat of a 4/4 bar, the
root of a six-four chord's cadence on its fifth), the chord held in a middle register, and a melody on
chord tones (one a beat, moving to the nearest tone of the next chord, ending on the tonic).

`plan_key_pieces(pieces_per_key, seed)` -> specs (all 24 keys, `pieces_per_key` each, ensembles and
tempi cycled and drawn from `seed`); `render_key_piece(spec, sample_rate)` -> mono float32 [T], loudness
normalised to -18 LUFS with a 0.89 peak ceiling. Rendering uses `demo_render.synthesize` (tinysoundfont and
pretty_midi's TimGM6mb.sf2). Deterministic given the spec.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from lightning_musicgen.data import demo_render

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)
# Progressions as (scale degree 0-6, inversion) per bar; inversion 2 = a cadential six-four chord and a
# `7` marks a dominant seventh.
PROGRESSIONS = {
    "major": (("I", "IV", "V", "I"), ("ii", "V", "I"), ("I", "vi", "ii", "V7", "I"), ("I", "IV", "I64", "V7", "I")),
    "minor": (("i", "iv", "V", "i"), ("ii°", "V", "i"), ("i", "VI", "iv", "V7", "i"), ("i", "iv", "i64", "V7", "i")),
}
NUMERALS = {"i": 0, "ii": 1, "iii": 2, "iv": 3, "v": 4, "vi": 5, "vii": 6}
# (caption words, GM programs for melody, chords, bass)
ENSEMBLES = (
    ("piano", (0, 0, 0)),
    ("strings", (40, 48, 43)),     # violin, string ensemble, contrabass
    ("church organ", (19, 19, 19)),
    ("guitars", (25, 24, 32)),     # steel guitar, nylon guitar, acoustic bass
    ("woodwinds", (73, 71, 70)),   # flute, clarinet, bassoon
    ("brass", (56, 61, 58)),       # trumpet, brass section, tuba
    ("electric piano", (4, 4, 33)),
    ("harpsichord", (6, 6, 6)),
    ("synthesizers", (81, 89, 38)),  # sawtooth lead, warm pad, synth bass
)
TEMPI = (66, 84, 100, 120, 138)
COMPING = ("held", "beats", "arpeggio")  # chord held through the bar, struck on every beat, broken in eighths
KEY_NAMES = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B")
MINOR_KEY_NAMES = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "G sharp", "A", "B flat", "B")


def chord_pitches(numeral: str, tonic: int, mode: str) -> tuple[list[int], int, bool]:
    """("V7", tonic pc, mode) -> (pitch classes root-third-fifth[-seventh], inversion, is seventh chord)."""
    scale = MAJOR_SCALE if mode == "major" else HARMONIC_MINOR_SCALE
    name = numeral.rstrip("764°").lower()
    inversion = 2 if numeral.endswith("64") else 0
    seventh = numeral.endswith("7")
    degree = NUMERALS[name]
    pcs = [(tonic + scale[(degree + 2 * k) % 7]) % 12 for k in range(4 if seventh else 3)]
    return pcs, inversion, seventh


def plan_key_pieces(pieces_per_key: int = 1, seed: int = 0, seconds: float = 8.0,
                    tuning_cents: tuple[float, ...] = (0.0,)) -> list[dict]:
    """Specs of 24 * `pieces_per_key` pieces: each key (12 major, then 12 minor) `pieces_per_key` times,
    the ensembles cycled over the pieces; tempo, metre, accompaniment, registers
    and the phrases drawn; the tuning (cents off A440) cycled over the pieces from `tuning_cents`."""
    rng = random.Random(seed)
    specs = []
    for k in range(24):
        tonic, mode = k % 12, ("major" if k < 12 else "minor")
        for j in range(pieces_per_key):
            name, programs = ENSEMBLES[(k * pieces_per_key + j) % len(ENSEMBLES)]
            specs.append({
                "id": f"{'maj' if mode == 'major' else 'min'}{tonic:02d}_{j}",
                "key": f"{(KEY_NAMES if mode == 'major' else MINOR_KEY_NAMES)[tonic]} {mode}",
                "tonic": tonic, "mode": mode, "ensemble": name, "programs": list(programs),
                "bpm": rng.choice(TEMPI), "beats_per_bar": rng.choice((4, 4, 3)), "seconds": seconds,
                "comping": rng.choice(COMPING), "melody_notes_per_beat": rng.choice((1, 1, 2)),
                "bass_octave": rng.choice((-1, 0, 0)), "melody_octave": rng.choice((0, 0, 1)),
                "tuning_cents": float(tuning_cents[(k * pieces_per_key + j) % len(tuning_cents)]),
                "seed": rng.getrandbits(31)})
    return specs


def _nearest(pcs: list[int], previous: int, low: int, high: int) -> int:
    """The MIDI note of pitch classes `pcs` nearest to `previous` within [low, high]."""
    notes = [n for n in range(low, high + 1) if n % 12 in pcs]
    return min(notes, key=lambda n: (abs(n - previous), n))


def key_piece_events(spec: dict) -> list[tuple]:
    """(time_s, is_on, channel, midi_key, velocity) of the piece, sorted as `demo_render.synthesize` wants them."""
    rng = random.Random(spec["seed"])
    tonic, mode, beats = spec["tonic"], spec["mode"], spec["beats_per_bar"]
    beat = 60.0 / spec["bpm"]
    bars_wanted = max(2, int(round(spec["seconds"] / (beat * beats))))
    bars = ["I" if mode == "major" else "i"]
    while len(bars) < bars_wanted:
        bars += list(rng.choice(PROGRESSIONS[mode]))
    channels = [c for c in range(16) if c != 9]
    melody_ch, chord_ch, bass_ch = channels[:3]
    events = []

    def note(on: float, length: float, chan: int, midi: int, velocity: int) -> None:
        events.append((on, 1, chan, midi, velocity))
        events.append((on + 0.95 * length, 0, chan, midi, 0))

    bass_low = 31 + 12 * spec.get("bass_octave", 0)           # bass roots in G1..F#2 (an octave lower: G0..)
    mel_low, mel_high = 64 + 12 * spec.get("melody_octave", 0), 84 + 12 * spec.get("melody_octave", 0)
    melody = rng.randrange(mel_low + 3, mel_low + 9)
    voicing = 60
    per_beat = spec.get("melody_notes_per_beat", 1)
    comping = spec.get("comping", "held")
    for b, numeral in enumerate(bars):
        pcs, inversion, _ = chord_pitches(numeral, tonic, mode)
        start = b * beats * beat
        last = b == len(bars) - 1
        hits = 1 if last else beats
        length = beats * beat if last else beat
        # chord: a close voicing nearest to the previous one, its bass note first
        lowest = _nearest([pcs[inversion]], voicing, 52, 64)
        chord = [lowest] + sorted(_nearest([pc], lowest + 4, lowest + 1, lowest + 12)
                                  for pc in pcs if pc != pcs[inversion])
        voicing = lowest
        if comping == "held" or last:
            for n in chord:
                note(start, beats * beat, chord_ch, n, 62)
        elif comping == "beats":
            for i in range(beats):
                for n in chord:
                    note(start + i * beat, beat, chord_ch, n, 58 if i else 64)
        else:  # broken chord in eighths: low, high, middle, high ...
            order = [chord[0], chord[-1], chord[1], chord[-1]]
            for i in range(2 * beats):
                note(start + i * beat / 2, beat / 2, chord_ch, order[i % 4], 60)
        # bass on every beat: the root (the fifth above it on the third beat of a 4/4 bar); a six-four
        # chord stands on its fifth
        root = bass_low + (pcs[inversion] - bass_low) % 12
        for i in range(hits):
            up = (pcs[2] - pcs[0]) % 12 if (beats == 4 and i == 2 and inversion == 0 and not last) else 0
            note(start + i * beat, length, bass_ch, root + up, 80 if i == 0 else 70)
        # melody: chord tones by small steps; the last bar holds the tonic
        if last:
            note(start, length, melody_ch, _nearest([tonic], melody, mel_low, mel_high), 86)
            continue
        for i in range(beats * per_beat):
            options = sorted({_nearest([pc], melody + rng.choice((-4, -2, 0, 2, 4)), mel_low, mel_high) for pc in pcs},
                             key=lambda n: abs(n - melody))
            melody = rng.choice(options[:2]) if i else options[0]
            note(start + i * beat / per_beat, beat / per_beat, melody_ch, melody, int(rng.gauss(86, 5)))
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def render_key_piece(spec: dict, sample_rate: int = 16000, soundfont: str | None = None) -> np.ndarray:
    """Mono float32 [T] of the piece, -18 LUFS, peak <= 0.89. A spec's `tuning_cents` (default 0) detunes
    it: rendered at sample_rate / 2**(cents / 1200) and played at `sample_rate`, every pitch moves by that
    many cents (and the tempo by as many cents' worth, under 3 % for 50 cents)."""
    from lightning_musicgen.audio.loudness import normalize_loudness
    events = key_piece_events(spec)
    render_rate = int(round(sample_rate / 2 ** (spec.get("tuning_cents", 0) / 1200)))
    audio = demo_render.synthesize(events, spec["programs"], soundfont or demo_render.default_soundfont(), render_rate,
                            max_seconds=events[-1][0] + 1.5)
    wav = torch.from_numpy(audio.mean(1, keepdims=True).T.copy())
    return normalize_loudness(wav, sample_rate, target_lufs=-18.0, max_gain_db=40.0, peak=0.89)[0].numpy()
