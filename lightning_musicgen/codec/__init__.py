"""EnCodec-style neural audio codec: CompressionModel (nn.Module) and CodecModule (LightningModule)."""
from lightning_musicgen.codec.model import CodecConfig, CompressionModel

__all__ = ["CodecConfig", "CodecModule", "CompressionModel"]


def __getattr__(name):  # CodecModule pulls in Lightning; import it on first use
    if name == "CodecModule":
        from lightning_musicgen.codec.module import CodecModule
        return CodecModule
    raise AttributeError(f"module 'lightning_musicgen.codec' has no attribute {name!r}")
