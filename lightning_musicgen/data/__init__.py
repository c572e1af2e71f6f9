"""Data: shards (writer, index), streaming crops, datamodules, captions, the demo dataset.

`AudioDataModule` and `TokenDataModule` import Lightning, so they load on first use
(worker processes of `prepare`/`demo-data` never pay for it).
"""
from lightning_musicgen.data.shards import expand_shards, read_index
from lightning_musicgen.data.text import TextAugment

__all__ = ["AudioDataModule", "TextAugment", "TokenDataModule", "expand_shards", "read_index"]


def __getattr__(name):
    if name in ("AudioDataModule", "TokenDataModule"):
        from lightning_musicgen.data import datamodule
        return getattr(datamodule, name)
    raise AttributeError(f"module 'lightning_musicgen.data' has no attribute {name!r}")
