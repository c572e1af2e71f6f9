"""Dataclass configs from plain dicts (YAML blocks, checkpoint hyper-parameters, model folders).

`dataclass_from_dict(cls, d, what)` builds `cls(**d)` after checking every key of `d` is a field of `cls`;
an unknown key raises `ConfigError` in one line that names `what` (e.g. "lm config"), the unknown key(s)
and the known ones. Values are not converted: the dataclass's own `__post_init__` checks them.
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
