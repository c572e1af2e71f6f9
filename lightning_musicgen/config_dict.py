"""Dataclass configs from plain dicts (YAML blocks, checkpoint hyper-parameters, model folders).

`dataclass_from_dict(cls, d, what)` builds `cls(**d)` after checking every key of `d` is a field of `cls`;
an unknown key raises `ConfigError` in one line that names `what` (e.g. "lm config"), the unknown key(s)
and the known ones. Values are not converted: the dataclass's own `__post_init__` checks them.

`current_names(d, what)` is for readers of files written before the n_q/card rename (codec files, token
shards): audiocraft's keys `bins`/`cardinality` are read as `card`, `num_codebooks` as `n_q`. Only file
readers call it; the API and configs know one name for each thing.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from lightning_musicgen.errors import ConfigError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: dict[str, Any], what: str) -> T:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown} (known: {sorted(known)})")
    return cls(**d)


OLD_NAMES = {"bins": "card", "cardinality": "card", "num_codebooks": "n_q"}


def current_names(d: dict[str, Any], what: str) -> dict[str, Any]:
    """`d` with the keys of files written before the rename under their names now (one level deep)."""
    if not any(k in OLD_NAMES for k in d):
        return d
    out = {k: v for k, v in d.items() if k not in OLD_NAMES}
    for old, new in OLD_NAMES.items():
        if old in d:
            if new in out and out[new] != d[old]:
                raise ConfigError(f"{what}: both {new}={out[new]} and its old name {old}={d[old]} are set")
            out[new] = d[old]
    return out
