"""lightning_musicgen: train MusicGen and its EnCodec tokenizer with PyTorch Lightning."""
__version__ = "0.1.0"


def __getattr__(name):  # MusicGen pulls in the LM and codec; import it on first use
    if name == "MusicGen":
        from lightning_musicgen.generation import MusicGen
        return MusicGen
    raise AttributeError(f"module 'lightning_musicgen' has no attribute {name!r}")
