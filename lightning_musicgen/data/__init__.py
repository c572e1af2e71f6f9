"""Data: shards (writer, index), streaming crops, datamodules, captions, the demo dataset."""
from lightning_musicgen.data.datamodule import AudioDataModule, SkippedSamplesLogger, TokenDataModule
from lightning_musicgen.data.shards import expand_shards, read_index
from lightning_musicgen.data.text import TextAugment

__all__ = ["AudioDataModule", "SkippedSamplesLogger", "TextAugment", "TokenDataModule", "expand_shards",
           "read_index"]
