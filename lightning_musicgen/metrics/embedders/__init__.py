"""Pretrained audio networks for the metrics; all load weights from local paths only."""
from lightning_musicgen.metrics.embedders.base import AudioEmbedder
from lightning_musicgen.metrics.embedders.clap import ClapEmbedder
from lightning_musicgen.metrics.embedders.musicnn import MusicnnVGG
from lightning_musicgen.metrics.embedders.panns import Cnn14
from lightning_musicgen.metrics.embedders.vggish import VGGish

__all__ = ["AudioEmbedder", "ClapEmbedder", "Cnn14", "MusicnnVGG", "VGGish"]
