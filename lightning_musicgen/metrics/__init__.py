"""Generation metrics as torchmetrics Metrics (state summed across DDP ranks) and their embedders."""
from lightning_musicgen.metrics.chroma import ChromaCosine
from lightning_musicgen.metrics.clap import CLAPScore
from lightning_musicgen.metrics.embedders import AudioEmbedder, ClapEmbedder, Cnn14, MusicnnVGG, VGGish
from lightning_musicgen.metrics.frechet import (FrechetAudioDistance, frechet_distance, load_reference_stats,
                                                save_reference_stats)
from lightning_musicgen.metrics.kl import KLDivergence, kl_divergence

__all__ = ["AudioEmbedder", "CLAPScore", "ChromaCosine", "ClapEmbedder", "Cnn14", "FrechetAudioDistance",
           "KLDivergence", "MusicnnVGG", "VGGish", "frechet_distance", "kl_divergence", "load_reference_stats",
           "save_reference_stats"]
