"""Training callbacks: generate-and-evaluate, codec reconstructions, media logging helpers."""
from lightning_musicgen.callbacks.codec import CodecReconstruction
from lightning_musicgen.callbacks.evaluate import EvaluateGeneration
from lightning_musicgen.callbacks.media import chroma_image, log_media, log_scalars, mel_image

__all__ = ["CodecReconstruction", "EvaluateGeneration", "chroma_image", "log_media", "log_scalars", "mel_image"]
