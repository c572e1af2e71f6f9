"""MusicGen language model: patterns, transformer, conditioners, MusicGenLM, MusicGenModule."""
from lightning_musicgen.lm.conditioners import ConditionProvider, LMConditions
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.lm.patterns import get_pattern
from lightning_musicgen.lm.transformer import DecoderLayer

__all__ = ["ConditionProvider", "DecoderLayer", "LMConditions", "MusicGenLM", "MusicGenModule", "get_pattern"]


def __getattr__(name):  # MusicGenModule pulls in Lightning; import it on first use
    if name == "MusicGenModule":
        from lightning_musicgen.lm.module import MusicGenModule
        return MusicGenModule
    raise AttributeError(f"module 'lightning_musicgen.lm' has no attribute {name!r}")
