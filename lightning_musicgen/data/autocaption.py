"""Captions for audio that has none: tags, tempo and key, written as one sentence. Offline, CPU.

- Tags: musicnn's MagnaTagATune VGG tagger (`MTT_vgg`, weights shipped inside the `musicnn` wheel, read
  without TensorFlow by `metrics.embedders.musicnn`): sigmoid probabilities of its 50 tags, averaged over
  the file's 3 s patches. The patches of a whole batch of files go through the network together.
- Tempo (`TempoEstimator`): log-mel spectral flux per band (half-wave rectified, 100 frames/s) -> a
  tempogram of autocorrelations over 12 s windows (2 s hop; per band, summed, unbiased, normalised by lag
  0) averaged over the file -> each candidate tempo in [min_bpm, max_bpm] scores the mean autocorrelation
  at 1..4 beat periods (linear interpolation between lags gives sub-frame precision), times a log-normal
  prior around 120 BPM (one octave). Beat periods are found up to a factor of two (it may report the
  eighth-note or half-note pulse of the notated beat).
- Key (`KeyEstimator`): the time-averaged chroma of the package's `ChromaExtractor` (without its argmax
  bottleneck; bin 0 = C), tuned to the file's own reference pitch (estimated from its spectral peaks, so
  music a fraction of a semitone off A440 is read in the right key) and log-compressed (log(1 + 100 *
  power / max power), so loud partials do not drown the others), plus (equal weight) the same chroma
  of the bass register (octave weighting centred on A2 = 110 Hz, one octave wide: the bass line spells
  out the tonal centre), correlated (Pearson) with the 24 rotations of the Temperley (Kostka-Payne corpus, default) or Krumhansl-Kessler major/minor key profiles,
  each first spread over the pitch classes of a note's harmonics 2..7 (amplitude 0.6**(h-1)) as an audio
  chroma sees them; the best rotation is the key, its correlation the confidence. Measured on rendered
  pieces in known keys (`data.cadences`) and on the demo corpus: benchmarks/RESULTS.md.

`AutoCaptioner.analyze(list of mono 16 kHz waveforms [T])` -> one dict per file:
`{"tags": {tag: probability} (top 10), "bpm": float, "bpm_confidence": float, "key": "D minor",
"key_confidence": float}`; `caption_sentence(analysis)` -> "classical, strings, slow, 72 BPM, D minor"
(up to `max_tags` tags with probability >= `tag_threshold`, at least one; synonyms merged).

`fill_captions(items, cache_path)` is what `prepare --auto-caption` runs: every item (`{"path", "name",
"meta"}`) whose metadata has no description gets `meta["description"]` = the sentence and
`meta["auto_caption"]` = the analysis plus the sentence; items with a description are returned unchanged
(users' captions always win). Analyses are cached per file (name, size, modification time, settings) in a
JSONL file, so a re-run only analyses new or changed files; unreadable files are left to `prepare` to report.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_musicgen.audio.chroma import ChromaExtractor
from lightning_musicgen.audio.dsp import slaney_mel_filterbank
from lightning_musicgen.errors import AudioReadError, ConfigError

SAMPLE_RATE = 16000  # the tagger's rate; tempo and key run on the same mono waveform
LOG_COMPRESSION = 100.0  # key chroma of log(1 + gamma * power / max power)
PITCH_NAMES = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B")
MINOR_NAMES = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "G sharp", "A", "B flat", "B")
# Key profiles (weights of the 12 pitch classes from the tonic upwards).
KEY_PROFILES = {
    "krumhansl": ((6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
                  (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)),
    "temperley": ((0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
                  (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330)),
}
# MagnaTagATune tags that say the same thing, and what the sentence calls them.
TAG_SYNONYMS = {"classic": "classical", "vocal": "vocals", "voice": "vocals", "singing": "vocals",
                "no vocal": "instrumental", "no vocals": "instrumental", "no voice": "instrumental",
                "female": "female vocals", "woman": "female vocals", "female vocal": "female vocals",
                "female voice": "female vocals", "male": "male vocals", "man": "male vocals",
                "male vocal": "male vocals", "male voice": "male vocals", "beat": "beats", "choral": "choir"}


def key_name(tonic: int, mode: str) -> str:
    """`key_name(2, "minor")` -> "D minor" (flats/sharps as in the usual key signature)."""
    names = MINOR_NAMES if mode == "minor" else PITCH_NAMES
    return f"{names[tonic % 12]} {mode}"


def parse_key(name: str) -> tuple[int, str]:
    """"B flat major" / "Bb major" / "F# minor" -> (pitch class, mode)."""
    words = name.replace("♭", " flat").replace("♯", " sharp").split()
    if len(words) < 2 or words[-1].lower() not in ("major", "minor"):
        raise ConfigError(f"key {name!r}: expected '<tonic> major|minor'")
    tonic = " ".join(words[:-1]).strip()
    letter = tonic[0].upper()
    base = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}.get(letter)
    if base is None:
        raise ConfigError(f"key {name!r}: unknown tonic {tonic!r}")
    rest = tonic[1:].strip().lower()
    shift = {"": 0, "#": 1, "sharp": 1, "b": -1, "flat": -1, "-": -1}.get(rest)
    if shift is None:
        raise ConfigError(f"key {name!r}: unknown accidental {rest!r}")
    return (base + shift) % 12, words[-1].lower()


def harmonic_profile(profile: np.ndarray, decay: float) -> np.ndarray:
    """What a pitch-class profile looks like in an audio chroma: each note also sounds its harmonics
    2..7 (octaves, twelfth, major seventeenth, minor seventh: +0, +7, +4, +10 semitones), the h-th with
    amplitude decay**(h-1). Without this the audio's fifths pull the estimate towards the dominant key."""
    kernel = np.zeros(12)
    for h in range(1, 8):
        kernel[int(round(12 * math.log2(h))) % 12] += decay ** (h - 1)
    return np.array([sum(profile[(pc - s) % 12] * kernel[s] for s in range(12)) for pc in range(12)])


class KeyEstimator:
    """mono [T] at `sample_rate` -> (key name, correlation with its profile)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, profiles: str = "temperley", harmonic_decay: float = 0.6,
                 tuning: float | str = "estimate", log_compression: float | None = LOG_COMPRESSION,
                 bass_weight: float = 1.0):
        if profiles not in KEY_PROFILES:
            raise ConfigError(f"key profiles {profiles!r}: not one of {sorted(KEY_PROFILES)}")
        # ~0.5 s windows: enough frequency resolution to separate semitones down to ~C2
        n_fft = 1 << int(round(math.log2(sample_rate / 2)))
        common = dict(n_fft=n_fft, hop_length=n_fft // 4, argmax=False, tuning=tuning, log_compression=log_compression)
        self.extractor = ChromaExtractor(sample_rate, 12, **common)
        # the bass register (octave weights centred on A2 = 110 Hz) once more: the bass spells out the tonic
        self.bass_extractor = ChromaExtractor(sample_rate, 12, center_octave=3.0, octave_width=1.0, **common)
        self.bass_weight = bass_weight
        major, minor = (harmonic_profile(np.asarray(p, dtype=np.float64), harmonic_decay)
                        for p in KEY_PROFILES[profiles])
        # templates[m * 12 + tonic] = the profile rotated so that index `tonic` holds its first weight
        self.templates = np.stack([np.roll(p, t) for p in (major, minor) for t in range(12)])

    def chroma_profile(self, mono: Tensor) -> np.ndarray:
        """The file's mean chroma [12] (each frame normalised to max 1 by the extractor), plus
        `bass_weight` times its mean bass chroma."""
        wav = mono.reshape(1, -1).float()
        profile = self.extractor(wav)[0].mean(0).double().numpy()
        if self.bass_weight:
            profile = profile + self.bass_weight * self.bass_extractor(wav)[0].mean(0).double().numpy()
        return profile

    def scores(self, profile: np.ndarray) -> np.ndarray:
        """Pearson correlation of `profile` [12] with the 24 key templates (12 major, then 12 minor)."""
        x = profile - profile.mean()
        t = self.templates - self.templates.mean(1, keepdims=True)
        denom = np.linalg.norm(t, axis=1) * max(np.linalg.norm(x), 1e-12)
        return t @ x / denom

    def estimate(self, mono: Tensor) -> tuple[str, float]:
        scores = self.scores(self.chroma_profile(mono))
        best = int(scores.argmax())
        return key_name(best % 12, "major" if best < 12 else "minor"), float(scores[best])


class TempoEstimator:
    """mono [T] at `sample_rate` -> (beats per minute, confidence in [0, 1]); see the module docstring."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, min_bpm: float = 40.0, max_bpm: float = 240.0,
                 prior_bpm: float = 120.0, prior_octaves: float = 1.0, window_seconds: float = 12.0,
                 hop_seconds: float = 2.0, multiples: int = 4, frame_rate: float = 100.0, n_mels: int = 40):
        if not 0 < min_bpm < max_bpm:
            raise ConfigError(f"tempo range [{min_bpm}, {max_bpm}] BPM: need 0 < min < max")
        self.sample_rate, self.min_bpm, self.max_bpm = sample_rate, min_bpm, max_bpm
        self.prior_bpm, self.prior_octaves, self.multiples = prior_bpm, prior_octaves, multiples
        self.hop = int(round(sample_rate / frame_rate))
        self.frame_rate = sample_rate / self.hop
        self.n_fft = 1 << int(math.ceil(math.log2(4 * self.hop)))
        self.window = int(round(window_seconds * self.frame_rate))
        self.window_hop = int(round(hop_seconds * self.frame_rate))
        mel = slaney_mel_filterbank(self.n_fft // 2 + 1, n_mels, 30.0, min(8000.0, sample_rate / 2), sample_rate)
        self.mel = torch.from_numpy(mel).float()
        # candidate tempi on a log grid of 0.1 % steps
        steps = int(math.ceil(math.log(max_bpm / min_bpm) / math.log1p(1e-3))) + 1
        self.bpms = np.geomspace(min_bpm, max_bpm, steps)
        self.prior = np.exp(-0.5 * (np.log2(self.bpms / prior_bpm) / prior_octaves) ** 2)

    def onset_flux(self, mono: Tensor) -> Tensor:
        """Half-wave rectified log-mel flux per band [n_mels, frames - 1]."""
        spec = torch.stft(mono.float(), self.n_fft, self.hop, window=torch.hann_window(self.n_fft),
                          center=True, return_complex=True).abs().pow(2)
        db = 10 * torch.log10(torch.einsum("ft,fm->mt", spec, self.mel).clamp_min(1e-10))
        db = db.clamp_min(db.max() - 80.0)
        return (db[:, 1:] - db[:, :-1]).clamp_min(0.0)

    def tempogram(self, flux: Tensor) -> np.ndarray:
        """Mean over windows of the band-summed, unbiased autocorrelation [lags], normalised at lag 0."""
        frames = flux.shape[-1]
        win = min(self.window, frames)
        starts = range(0, max(frames - win, 0) + 1, self.window_hop)
        acfs = []
        for s in starts:
            x = flux[:, s:s + win].double()
            x = x - x.mean(-1, keepdim=True)
            spec = torch.fft.rfft(x, n=2 * win)
            acf = torch.fft.irfft(spec.abs().pow(2), n=2 * win)[:, :win].sum(0)
            if acf[0] <= 0:
                continue  # a silent window says nothing about the tempo
            acf = acf / (win - torch.arange(win, dtype=acf.dtype))  # unbiased: divide by the overlap
            acfs.append((acf / acf[0]).numpy())
        return np.mean(acfs, axis=0) if acfs else np.zeros(win)

    def candidate_scores(self, acf: np.ndarray) -> np.ndarray:
        """Mean autocorrelation at 1..`multiples` beat periods of each candidate in `self.bpms`."""
        lags = 60.0 * self.frame_rate / self.bpms
        total, count = np.zeros_like(lags), np.zeros_like(lags)
        usable = len(acf) // 2  # the unbiased estimate gets noisy past half the window
        for k in range(1, self.multiples + 1):
            lag = k * lags
            ok = lag < max(usable, 2)
            total[ok] += np.interp(lag[ok], np.arange(len(acf)), acf)
            count[ok] += 1
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)

    def estimate(self, mono: Tensor) -> tuple[float, float]:
        flux = self.onset_flux(mono)
        if flux.shape[-1] < 4:
            return float("nan"), 0.0
        scores = self.candidate_scores(self.tempogram(flux))
        weighted = np.clip(scores, 0.0, None) * self.prior
        best = int(weighted.argmax())
        if weighted[best] <= 0:
            return float("nan"), 0.0
        return float(self.bpms[best]), float(np.clip(scores[best], 0.0, 1.0))


def merge_tags(tags: dict[str, float]) -> list[tuple[str, float]]:
    """(sentence word, probability) by decreasing probability, synonyms merged (the highest counts)."""
    merged: dict[str, float] = {}
    for tag, p in tags.items():
        word = TAG_SYNONYMS.get(tag, tag)
        merged[word] = max(merged.get(word, 0.0), p)
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))


def caption_sentence(analysis: dict, max_tags: int = 3, tag_threshold: float = 0.2) -> str:
    """"classical, strings, slow, 72 BPM, D minor": the strongest tags (at least one), tempo, key."""
    ranked = merge_tags(analysis.get("tags") or {})
    words = [w for i, (w, p) in enumerate(ranked[:max_tags]) if i == 0 or p >= tag_threshold]
    bpm = analysis.get("bpm")
    if isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0:
        words.append(f"{int(round(bpm))} BPM")
    if analysis.get("key"):
        words.append(analysis["key"])
    return ", ".join(words)


class AutoCaptioner:
    """Tags + tempo + key of mono 16 kHz waveforms, in batches (see the module docstring).

    Args:
        tagger_checkpoint: a musicnn TensorFlow checkpoint prefix (default: `MTT_vgg` inside the installed
            `musicnn` package; `pip install --no-deps musicnn`).
        key_profiles: "temperley" or "krumhansl".
        max_seconds: analyse at most this much of each file (its middle part).
        max_tag_patches: the tagger sees at most this many 3 s patches per file, evenly spaced (it costs
            ~0.3 s of one CPU core per patch; tempo and key always use the whole excerpt).
        max_tags, tag_threshold: the sentence names up to `max_tags` tags with probability >= threshold.
    """

    version = 2  # bump when the analysis changes: cached results of other versions are recomputed

    def __init__(self, tagger_checkpoint: str | None = None, key_profiles: str = "temperley",
                 min_bpm: float = 40.0, max_bpm: float = 240.0, max_seconds: float = 180.0,
                 max_tag_patches: int = 10, max_tags: int = 3, tag_threshold: float = 0.2):
        from lightning_musicgen.metrics.embedders.musicnn import MTT_LABELS, MusicnnVGG
        self.tagger = MusicnnVGG(checkpoint=tagger_checkpoint, model="MTT_vgg").eval()
        self.labels = MTT_LABELS
        self.tempo = TempoEstimator(SAMPLE_RATE, min_bpm=min_bpm, max_bpm=max_bpm)
        self.key = KeyEstimator(SAMPLE_RATE, key_profiles)
        self.max_seconds, self.max_tag_patches = max_seconds, max(1, max_tag_patches)
        self.max_tags, self.tag_threshold = max_tags, tag_threshold
        # what the cached analyses depend on (the sentence options are applied after the cache)
        self.settings = {"version": self.version, "tagger": tagger_checkpoint or "musicnn/MTT_vgg",
                         "key_profiles": key_profiles, "min_bpm": min_bpm, "max_bpm": max_bpm,
                         "max_seconds": max_seconds, "max_tag_patches": self.max_tag_patches}

    def excerpt(self, mono: Tensor) -> Tensor:
        limit = int(self.max_seconds * SAMPLE_RATE)
        if mono.shape[-1] <= limit:
            return mono
        start = (mono.shape[-1] - limit) // 2
        return mono[start:start + limit]

    def _spread(self, patches: Tensor) -> Tensor:
        """At most `max_tag_patches` of a file's 3 s patches, evenly spaced over it."""
        n = patches.shape[0]
        if n <= self.max_tag_patches:
            return patches
        return patches[torch.linspace(0, n - 1, self.max_tag_patches).round().long()]

    @torch.no_grad()
    def tag_probs(self, monos: list[Tensor]) -> Tensor:
        """Tag probabilities [len(monos), 50]: one network pass over the patches of all the files."""
        patches = [self._spread(self.tagger.patches(m.float().reshape(1, -1))[0]) for m in monos]
        counts = [p.shape[0] for p in patches]
        stacked = torch.cat(patches).unsqueeze(1)  # [N, 1, 187, 96]
        probs = torch.sigmoid(self.tagger.network(stacked)[1])
        return torch.stack([chunk.mean(0) for chunk in probs.split(counts)])

    def analyze(self, monos: list[Tensor]) -> list[dict]:
        """Mono 16 kHz waveforms [T] -> analyses (tags, bpm, key and their confidences)."""
        monos = [self.excerpt(m.float().reshape(-1)) for m in monos]
        probs = self.tag_probs(monos)
        results = []
        for mono, p in zip(monos, probs):
            bpm, bpm_conf = self.tempo.estimate(mono)
            key, key_conf = self.key.estimate(mono)
            top = p.argsort(descending=True)[:10].tolist()
            results.append({"tags": {self.labels[i]: round(float(p[i]), 4) for i in top},
                            "bpm": round(bpm, 2) if math.isfinite(bpm) else None,
                            "bpm_confidence": round(bpm_conf, 4), "key": key, "key_confidence": round(key_conf, 4)})
        return results

    def caption(self, analysis: dict) -> str:
        return caption_sentence(analysis, self.max_tags, self.tag_threshold)


def has_caption(meta: dict) -> bool:
    from lightning_musicgen.data.text import field_text
    return field_text(meta.get("description")) is not None


def _load_mono(path: str) -> Tensor:
    from lightning_musicgen.audio.io import read_audio, resample
    wav, sr = read_audio(path)
    if wav.shape[-1] == 0 or not torch.isfinite(wav).all():
        raise AudioReadError(f"{path}: empty or non-finite audio")
    return resample(wav.mean(0, keepdim=True), sr, SAMPLE_RATE)[0]


def _cache_key(item: dict, settings: dict) -> str:
    try:
        st = os.stat(item["path"])
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    return hashlib.sha1(json.dumps([item["name"], stamp, settings], sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, dict]:
    cache = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = row["analysis"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a killed run
    return cache


def fill_captions(items: list[dict], cache_path: str | os.PathLike | None = None,
                  captioner: AutoCaptioner | None = None, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Items with an auto caption wherever the metadata has no description (see the module docstring)."""
    from tqdm import tqdm
    todo = [i for i, it in enumerate(items) if not has_caption(it["meta"])]
    if not todo:
        return items
    captioner = captioner or AutoCaptioner()
    cache_path = Path(cache_path) if cache_path is not None else None
    cache = _read_cache(cache_path) if cache_path is not None else {}
    keys = {i: _cache_key(items[i], captioner.settings) for i in todo}
    missing = [i for i in todo if keys[i] not in cache]
    bar = tqdm(total=len(todo), initial=len(todo) - len(missing), unit="file", desc="auto-caption",
               disable=not progress)
    for b in range(0, len(missing), batch_size):
        loaded = []
        for i in missing[b:b + batch_size]:
            try:
                loaded.append((i, _load_mono(items[i]["path"])))
            except Exception:  # unreadable: prepare skips and reports it
                bar.update(1)
        if loaded:
            analyses = captioner.analyze([m for _, m in loaded])
            lines = []
            for (i, _), analysis in zip(loaded, analyses):
                cache[keys[i]] = analysis
                lines.append(json.dumps({"key": keys[i], "name": items[i]["name"], "analysis": analysis}))
            if cache_path is not None:
                with open(cache_path, "a") as f:
                    f.write("\n".join(lines) + "\n")
            bar.update(len(loaded))
    bar.close()
    out = list(items)
    for i in todo:
        analysis = cache.get(keys[i])
        if analysis is None:
            continue
        sentence = captioner.caption(analysis)
        meta = {**items[i]["meta"], "description": sentence, "auto_caption": {**analysis, "caption": sentence}}
        out[i] = {**items[i], "meta": meta}
    return out
