"""Generation with a MusicGen LM, its conditioner and its codec (see `musicgen.MusicGen`)."""
from lightning_musicgen.generation.musicgen import (UNKNOWN, CpuDecodeKernels, MusicGen, Window, check_descriptions,
                                                    generate_long, load_audio_batch, plan_windows)

__all__ = ["UNKNOWN", "CpuDecodeKernels", "MusicGen", "Window", "check_descriptions", "generate_long",
           "load_audio_batch", "plan_windows"]
