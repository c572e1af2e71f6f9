"""Captions from sample metadata: audiocraft-style metadata merging, field/description dropout, word dropout.

Metadata follows audiocraft's music fields: description, title, artist, genre, moods, keywords, bpm, key,
instrument. At train time (`TextAugment.sample`) the description is, with probability `merge_text_p`, merged
with "field: value" pairs of the other fields (key, bpm, genre, moods, instrument, keywords) in random order,
each field dropped with probability `drop_other_p`, and the description itself dropped with probability
`drop_desc_p`. (audiocraft's code keeps a field with probability drop_other_p; here the name means what it
says: the probability of dropping.) Then each word is dropped with probability `word_dropout`.
Validation captions (`TextAugment.deterministic`) are the description, or the merged metadata in a fixed
order when there is no description.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightning_musicgen.errors import ConfigError

MERGE_FIELDS = ("key", "bpm", "genre", "moods", "instrument", "keywords")


def field_text(value) -> str | None:
    """A metadata value as text (lists joined by commas); None for empty/missing values."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ", ".join(parts) or None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def metadata_pairs(meta: dict) -> list[str]:
    """`field: value` strings for the mergeable fields present in `meta`, in a fixed order."""
    pairs = []
    for name in MERGE_FIELDS:
        text = field_text(meta.get(name))
        if text is not None:
            pairs.append(f"{name}: {text}")
    return pairs


def join_caption(description: str | None, pairs: list[str]) -> str:
    parts = ([description.strip().rstrip(".")] if description and description.strip() else []) + pairs
    return ". ".join(parts).strip()


def word_dropout(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word with probability p (one uniform draw of `rng` per word). The data
    layer and the text conditioner (`TextConditioner.drop_words`) both use this."""
    if p <= 0 or not text:
        return text
    words = text.split()
    keep = rng.random(len(words)) >= p
    return " ".join(w for w, k in zip(words, keep) if k)


@dataclass
class TextAugment:
    """Caption sampling options (see module docstring for the semantics)."""

    merge_text_p: float = 0.25
    drop_desc_p: float = 0.5
    drop_other_p: float = 0.5
    word_dropout: float = 0.0

    def __post_init__(self):
        for name in ("merge_text_p", "drop_desc_p", "drop_other_p", "word_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value}: must be a probability in [0, 1]")

    def sample(self, meta: dict, rng: np.random.Generator) -> str:
        """A training caption. Always consumes the same number of draws for a given `meta` shape, so a
        replayed stream (resume) stays aligned."""
        description = field_text(meta.get("description"))
        pairs = metadata_pairs(meta)
        u_merge, u_desc = rng.random(2)
        keep = rng.random(len(pairs)) >= self.drop_other_p
        order = rng.permutation(len(pairs))
        if u_merge < self.merge_text_p:
            merged = [pairs[i] for i in order if keep[i]]
            if u_desc < self.drop_desc_p:
                description = None
            text = join_caption(description, merged)
        else:
            text = join_caption(description, [])
        return word_dropout(text, self.word_dropout, rng)

    @staticmethod
    def deterministic(meta: dict) -> str:
        """The validation caption: the description, else all metadata pairs in a fixed order."""
        description = field_text(meta.get("description"))
        return join_caption(description, [] if description else metadata_pairs(meta))
