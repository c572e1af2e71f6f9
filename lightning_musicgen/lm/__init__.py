"""MusicGen language model: patterns, transformer, conditioners, MusicGenLM, MusicGenModule."""
from lightning_musicgen.lm.conditioners import ConditionProvider, LMConditions
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.lm.patterns import get_pattern

__all__ = ["ConditionProvider", "LMConditions", "MusicGenLM", "get_pattern"]
