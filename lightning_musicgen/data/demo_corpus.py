"""The demo corpus: which pieces of music21's bundled corpus the demo dataset uses (`catalogue`,
`plan_pieces`: a deterministic, seeded order of piece specs), the ensemble each gets (`choose_ensemble`:
General MIDI programs that fit its number of voices) and its caption and audiocraft-style metadata from the
piece's real metadata (`describe`), e.g. "A string quartet playing a Baroque chorale by J.S. Bach in G minor,
4/4, 80 BPM". No audio here: rendering is `data.demo_render`.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

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
