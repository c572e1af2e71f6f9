"""Audio I/O, resampling, channel conversion and chroma (one implementation of each)."""
from lightning_musicgen.audio.chroma import ChromaExtractor
from lightning_musicgen.audio.io import (AudioReadError, audio_info, convert_channels, load_audio,
                                         read_audio, resample, write_audio)

__all__ = ["AudioReadError", "ChromaExtractor", "audio_info", "convert_channels", "load_audio",
           "read_audio", "resample", "write_audio"]
