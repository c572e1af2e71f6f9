"""Kept for imports of earlier versions: every model file is read and written by
`lightning_musicgen.model_files` (see docs/model_files.md)."""
from lightning_musicgen.model_files import load_lm_components, load_musicgen, save_musicgen

__all__ = ["load_lm_components", "load_musicgen", "save_musicgen"]
