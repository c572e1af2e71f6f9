"""`MusicGen`: the user-facing inference wrapper (conditioner + LM + codec) for text, melody and
continuation.

    model = MusicGen.from_pretrained("runs/demo/model")     # a model folder (`export`, `convert`)
    model = MusicGen.from_checkpoint("last.ckpt")            # or a MusicGenModule checkpoint
    wav = model.generate(["lofi beat", "calm piano"], duration=10.0, seed=0)   # [B, C, T]

Who owns the modules:
- `from_checkpoint` / `from_pretrained` load their own modules and place them once: the LM on
  `device` in `dtype` (`precision.inference_dtype`: bf16 where the hardware runs it fast, else
  fp32), the conditioner and codec on `device` in fp32, all in eval mode.
- `MusicGen(lm, conditioner, codec)` uses the modules it is given as they are (the live modules of
  a training run included): it never moves, casts, re-modes or freezes them. Device and compute
  dtype are the LM's; the conditioner and codec must be on the same device. Every call runs with
  dropout off (`modes.eval_mode`: each submodule's own `training` flag is restored afterwards),
  without autograd (the decoding loop under `torch.inference_mode`), and reads the weights as they
  are at that moment.

Decoding: `loop.decode_window` (KV cache, CFG, sampling); durations beyond `max_duration` (30 s):
`long_form` (sliding window, like audiocraft's extend_stride); on CPU the loop runs in
`cpu_kernels.CpuDecodeKernels`.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable

import torch

from lightning_musicgen.errors import CheckpointError, ConfigError, InputError
from lightning_musicgen.generation.cpu_kernels import CpuDecodeKernels
from lightning_musicgen.generation.inputs import check_descriptions, load_audio_batch
from lightning_musicgen.generation.long_form import Window, generate_long, plan_windows
from lightning_musicgen.generation.loop import StepProgress, decode_window, window_steps
from lightning_musicgen.generation.modes import eval_mode
from lightning_musicgen.lm.conditioners import ConditionProvider, LMConditions
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.lm.sampling import SamplingParams, make_generator
from lightning_musicgen.precision import inference_dtype


def _device_of(module: torch.nn.Module | None) -> torch.device | None:
    """The device of a module's first parameter (or buffer); None when it holds no tensor."""
    if module is None:
        return None
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return None if tensor is None else tensor.device


def _dropout_off(method):
    """Run a MusicGen method with its modules in eval mode, each submodule's flag restored after."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with eval_mode(self.lm, self.conditioner, self.codec):
            return method(self, *args, **kwargs)
    return run


class MusicGen:
    """Text (+ melody, + audio prompt) to music with a MusicGen LM, its conditioner and its codec.

    The given modules are used as they are, never moved, cast or re-moded (see the module
    docstring); build from files with `from_checkpoint`/`from_pretrained`, which place their own
    modules on a device and in a dtype. `max_duration`/`extend_stride` (seconds) set the sliding
    window used for durations beyond what the LM was trained on (`extend_stride` default: 60 % of
    the window, audiocraft's 18 s of 30 s). `frame_rate`: codes per second,
    needed only without a codec. `cpu_kernels` (CPU): decode with `CpuDecodeKernels`
    (single-query attention; with `packed_weights`, oneDNN-packed linear weights: faster, the LM's
    weight memory twice while generating)."""

    def __init__(self, lm: MusicGenLM, conditioner: ConditionProvider, codec=None, *, max_duration: float = 30.0,
                 extend_stride: float | None = None, frame_rate: float | None = None, cpu_kernels: bool = True,
                 packed_weights: bool = True):
        weight = next(lm.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.lm, self.conditioner, self.codec = lm, conditioner, codec
        for name, module in (("conditioner", conditioner), ("codec", codec)):
            where = _device_of(module)
            if where is not None and where != self.device:
                raise ConfigError(f"MusicGen: the {name} is on {where} but the LM on {self.device}; give modules on "
                                  "one device")
        if codec is None and frame_rate is None:
            raise ConfigError("MusicGen without a codec needs frame_rate")
        self.frame_rate = float(frame_rate if frame_rate is not None else codec.frame_rate)
        self.interleaved_stereo = False
        if codec is not None:
            if codec.card != lm.card:
                raise ConfigError(f"codec card {codec.card} != LM card {lm.card}")
            if lm.n_q == 2 * codec.n_q and codec.channels == 1:
                self.interleaved_stereo = True  # transformers' stereo MusicGen: L/R codebooks interleaved
            elif lm.n_q != codec.n_q:
                raise ConfigError(f"codec gives n_q={codec.n_q} codebooks, the LM models n_q={lm.n_q}")
        if extend_stride is None:
            extend_stride = 0.6 * max_duration
        if not 0 < extend_stride < max_duration:
            raise ConfigError(f"extend_stride ({extend_stride} s) must be in (0, max_duration = {max_duration} s)")
        self.max_duration, self.extend_stride = float(max_duration), float(extend_stride)
        self.cpu_kernels, self.packed_weights = cpu_kernels, packed_weights

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None, text_encoder: str | None = None,
                        **kwargs) -> "MusicGen":
        """A model folder (`export`, `convert`), a MusicGenModule checkpoint (EMA weights when kept;
        its codec and text encoder are resolved from its references) or a converted file of earlier
        versions. `text_encoder`: a folder for a text encoder recorded by name only.

        `device` (default: cuda when available, else cpu); `dtype`: the LM's compute dtype (default:
        `precision.inference_dtype`, bf16 where the hardware runs it fast, else fp32); the text
        encoder and the codec stay in fp32. Other keywords go to `MusicGen(...)`."""
        from lightning_musicgen.model_files.read import load_musicgen
        device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = inference_dtype(dtype, device)
        lm, conditioner, codec, info = load_musicgen(path, device="cpu", text_encoder=text_encoder)
        if codec is None:
            raise CheckpointError(f"{path}: the checkpoint records no codec; generation needs one")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("max_duration", float(info.get("max_duration") or 30.0))
        # modules loaded here are this object's own: placed once, for inference only
        model = cls(lm.to(device, dtype).eval(), conditioner.to(device).eval(), codec.to(device).eval(), **kwargs)
        model.checkpoint_path = str(path)
        return model

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None, text_encoder: str | None = None,
                        **kwargs) -> "MusicGen":
        """A model folder written by `export` (or `convert`); runs from any directory or machine."""
        from lightning_musicgen.model_files.files import folder_kind
        if folder_kind(folder) != "musicgen":
            raise CheckpointError(f"{folder}: not a MusicGen model folder (config.json with kind 'musicgen'); "
                                  "write one with `python -m lightning_musicgen export`")
        return cls.from_checkpoint(folder, device=device, dtype=dtype, text_encoder=text_encoder, **kwargs)

    # ---- properties ------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def channels(self) -> int:
        return 2 if self.interleaved_stereo else self.codec.channels

    @property
    def has_melody(self) -> bool:
        return self.conditioner.melody is not None

    def num_frames(self, duration: float) -> int:
        return int(round(duration * self.frame_rate))

    # ---- codec -----------------------------------------------------------------------------
    @_dropout_off
    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, C, T] at the codec's rate -> codes [B, K, F] in the LM's codebook layout."""
        wav = wav.to(self.device, torch.float32)
        if self.interleaved_stereo:
            left, right = self.codec.encode(wav[:, :1]), self.codec.encode(wav[:, 1:2])
            return torch.stack([left, right], dim=2).flatten(1, 2)  # [L0, R0, L1, R1, ...]
        return self.codec.encode(wav)

    @_dropout_off
    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] -> wav [B, C, F * hop] (fp32)."""
        codes = codes.to(self.device)
        if self.interleaved_stereo:
            return torch.cat([self.codec.decode(codes[:, 0::2]), self.codec.decode(codes[:, 1::2])], dim=1)
        return self.codec.decode(codes)

    # ---- conditions ------------------------------------------------------------------------
    def _cast(self, c: LMConditions) -> LMConditions:
        return c.to(self.device, self.dtype)

    @_dropout_off
    @torch.no_grad()
    def conditions(self, descriptions: list[str | None], melody: torch.Tensor | None = None,
                   with_null: bool = True) -> tuple[LMConditions, LMConditions | None]:
        """(conditional, null) conditions; `melody` [B, C, T] at the melody conditioner's rate."""
        sr = self.conditioner.melody.sample_rate if melody is not None else None
        cond = self.conditioner(descriptions, melody=melody, melody_sample_rate=sr)
        null = self.conditioner.null(descriptions) if with_null else None
        return self._cast(cond), (self._cast(null) if null is not None else None)

    # ---- the decoding loop -----------------------------------------------------------------
    @_dropout_off
    def generate_window(self, cond: LMConditions, null: LMConditions | None, num_frames: int,
                        prompt: torch.Tensor | None = None, sampling: SamplingParams = SamplingParams(),
                        cfg_coef: float = 3.0, generator: torch.Generator | None = None,
                        two_pass_cfg: bool = False, progress: StepProgress | None = None) -> torch.Tensor:
        """One LM call: codes [B, K, num_frames] whose first frames are `prompt` [B, K, P]
        (`loop.decode_window`). CFG is on when `cfg_coef != 1` and `null` is given."""
        return decode_window(self.lm, cond, null, num_frames, prompt, sampling, cfg_coef, generator, two_pass_cfg,
                             progress)

    # ---- public API --------------------------------------------------------------------------
    @_dropout_off
    def generate_tokens(self, descriptions: list[str | None], duration: float, melody=None, prompt=None,
                        cfg_coef: float = 3.0, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0,
                        seed: int | None = None, *, two_pass_cfg: bool = False, progress: bool = False,
                        callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """codes LongTensor [B, K, F] for `duration` seconds (F = duration * frame_rate), before decoding.

        descriptions: one text per sample (None: unconditional). melody: a file path, a list of
        paths (one per text), a tensor [C, T] / [B, C, T] at the model's sample rate, or a
        (tensor, sample_rate) pair; needs a melody model. prompt: audio of the same kinds to
        continue; `duration` counts it (the output starts with the prompt's codes).
        progress: a tqdm bar over decoding steps; callback(done, total) is called after every step."""
        descriptions = check_descriptions(descriptions)
        B = len(descriptions)
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            raise InputError(f"duration must be a positive number of seconds, got {duration!r}")
        if not math.isfinite(float(cfg_coef)):
            raise InputError(f"cfg_coef must be a finite number, got {cfg_coef!r}")
        sampling = SamplingParams(top_k=int(top_k), top_p=float(top_p), temperature=float(temperature))
        total = self.num_frames(duration)
        if total < 1:
            raise InputError(f"duration {duration} s is shorter than one codec frame ({1 / self.frame_rate:.3f} s)")
        melody_wav = None
        if melody is not None:
            if not self.has_melody:
                raise InputError("melody given, but this model has no melody conditioning (not a melody model)")
            melody_wav = load_audio_batch(melody, B, self.conditioner.melody.sample_rate, 1, "melody").to(self.device)
        prompt_codes = None
        if prompt is not None:
            if isinstance(prompt, torch.Tensor) and prompt.dtype == torch.long:
                prompt_codes = prompt if prompt.dim() == 3 else prompt[None]  # already codes [B, K, P]
                prompt_codes = prompt_codes.expand(B, -1, -1) if prompt_codes.shape[0] == 1 else prompt_codes
            else:
                wav = load_audio_batch(prompt, B, self.sample_rate, self.channels, "prompt")
                prompt_codes = self.encode(wav)
            if prompt_codes.shape[:2] != (B, self.lm.n_q):
                raise InputError(f"prompt codes of shape {tuple(prompt_codes.shape)}, expected [{B}, {self.lm.n_q}, P]")
            if prompt_codes.shape[-1] >= total:
                raise InputError(f"the prompt ({prompt_codes.shape[-1] / self.frame_rate:.2f} s) must be shorter than "
                                 f"the requested duration ({duration} s)")
        window_frames = self.num_frames(self.max_duration)
        stride_frames = self.num_frames(self.extend_stride)
        windows = plan_windows(total, window_frames, stride_frames,
                               0 if prompt_codes is None else prompt_codes.shape[-1])
        generator = make_generator(seed, self.device)
        with_cfg = cfg_coef != 1.0
        bar = StepProgress(sum(window_steps(self.lm, w) for w in windows), progress, callback)
        fixed = None if melody_wav is not None and len(windows) > 1 else self.conditions(descriptions, melody_wav,
                                                                                         with_cfg)

        def run(window: Window, window_prompt: torch.Tensor | None) -> torch.Tensor:
            cond, null = fixed if fixed is not None else self.conditions(
                descriptions, self._melody_segment(melody_wav, window), with_cfg)
            return self.generate_window(cond, null, window.num_frames, window_prompt, sampling, cfg_coef,
                                        generator, two_pass_cfg, bar)

        rows = B * (2 if with_cfg and not two_pass_cfg else 1)
        try:
            with self.decoding_kernels(rows):
                return generate_long(run, windows, prompt_codes)
        finally:
            bar.close()

    def decoding_kernels(self, rows: int):
        """The context the decoding loop runs in (CPU: `CpuDecodeKernels`)."""
        if self.device.type == "cpu" and self.cpu_kernels:
            return CpuDecodeKernels(self.lm, rows, pack_linears=self.packed_weights)
        return contextlib.nullcontext()

    def _melody_segment(self, melody_wav: torch.Tensor, window: Window) -> torch.Tensor:
        """The melody under a window (looped when the melody is shorter than the generation)."""
        sr = self.conditioner.melody.sample_rate
        start = int(round(window.offset / self.frame_rate * sr))
        length = int(round(self.max_duration * sr))
        index = torch.arange(start, start + length, device=melody_wav.device) % melody_wav.shape[-1]
        return melody_wav[..., index]

    def generate(self, descriptions: list[str | None], duration: float, melody=None, prompt=None,
                 cfg_coef: float = 3.0, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0,
                 seed: int | None = None, *, two_pass_cfg: bool = False, progress: bool = False,
                 callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """wav [B, C, T] (fp32, the codec's sample rate) = decode(generate_tokens(...))."""
        codes = self.generate_tokens(descriptions, duration, melody, prompt, cfg_coef, top_k, top_p, temperature,
                                     seed, two_pass_cfg=two_pass_cfg, progress=progress, callback=callback)
        return self.decode(codes)

    @_dropout_off
    @torch.inference_mode()
    def lm_logits(self, codes: torch.Tensor, descriptions: list[str | None], melody=None) -> torch.Tensor:
        """Teacher forcing: logits [B, K, T, card] (fp32); [b, k, t] is the distribution of
        codes[b, k, t] given its past under the model's pattern."""
        descriptions = check_descriptions(descriptions)
        melody_wav = None
        if melody is not None:
            melody_wav = load_audio_batch(melody, len(descriptions), self.conditioner.melody.sample_rate, 1,
                                          "melody").to(self.device)
        cond, _ = self.conditions(descriptions, melody_wav, with_null=False)
        logits, _ = self.lm.compute_logits(codes.to(self.device), cond)
        return logits.float()

    def __repr__(self) -> str:
        return (f"MusicGen(n_q={self.lm.n_q}, card={self.lm.card}, dim={self.lm.dim}, "
                f"layers={len(self.lm.transformer.layers)}, sample_rate={self.sample_rate if self.codec else None}, "
                f"channels={self.channels if self.codec else None}, dtype={self.dtype}, device={self.device})")
