"""Generation with a MusicGen LM, its conditioner and its codec.

    from lightning_musicgen.generation import MusicGen
    wav = MusicGen.from_pretrained("runs/demo/model").generate(["calm piano"], duration=10.0)  # [B, C, T]

Modules, by responsibility:
- `musicgen`: `MusicGen`, the user-facing wrapper (who owns which module, device and dtype);
- `loop`: the autoregressive decoding loop of one window (KV cache, CFG, sampling), `UNKNOWN`;
- `long_form`: `Window`, `plan_windows`, `generate_long` (sliding window beyond `max_duration`);
- `inputs`: `check_descriptions`, `load_audio_batch` (melody / prompt audio);
- `cpu_kernels`: `CpuDecodeKernels` (oneDNN-packed linears, single-query attention on CPU);
- `modes`: `eval_mode`, dropout off with every submodule's own training flag restored.
The compute dtype policy is `lightning_musicgen.precision.inference_dtype`.
"""
from lightning_musicgen.generation.cpu_kernels import CpuDecodeKernels
from lightning_musicgen.generation.inputs import check_descriptions, load_audio_batch
from lightning_musicgen.generation.long_form import Window, generate_long, plan_windows
from lightning_musicgen.generation.loop import UNKNOWN, decode_window
from lightning_musicgen.generation.modes import eval_mode
from lightning_musicgen.generation.musicgen import MusicGen

__all__ = ["UNKNOWN", "CpuDecodeKernels", "MusicGen", "Window", "check_descriptions", "decode_window", "eval_mode",
           "generate_long", "load_audio_batch", "plan_windows"]
