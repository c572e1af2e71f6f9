"""`python -m lightning_musicgen generate`: text (+ melody, + audio prompt) -> wav files + a JSON record.

    python -m lightning_musicgen generate --model runs/demo/model --text "lofi hip hop beat" \\
        --text "calm piano" --duration 10 --out samples/

`generate_command` is the verb (its docstring is `generate --help`); `run` does the work. Inputs are checked before the model loads (numbers must be finite, `--device` must exist on this
machine); every bad input is a one-line `error: ...` and exit code 2. Progress covers the whole request
(all batches): a bar on a terminal, else a log line after 1, 2, 4, ... seconds (then every minute),
each with the steps done, the rate and an estimate of the time left. Outputs: `OUT/000_<slug>.wav`, ...
and `OUT/generate.json` (every parameter used, per-file seeds, timings).
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, Optional

from lightning_musicgen.errors import InputError

__all__ = ["InputError", "generate_command", "check_inputs", "check_device", "RequestProgress", "run"]


def read_texts(args) -> list[str]:
    """The descriptions of --text and --text-file, stripped; InputError when there are none."""
    texts = []
    for i, t in enumerate(args.text):
        if not t.strip():
            raise InputError(f"--text #{i + 1} is empty")
        texts.append(t.strip())
    if args.text_file:
        path = Path(args.text_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--text-file {path}: cannot read ({type(exc).__name__}: {exc})") from exc
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not from_file:
            raise InputError(f"--text-file {path}: no descriptions in it")
        texts += from_file
    if not texts:
        raise InputError("no description: give --text TEXT or --text-file FILE")
    return texts


def check_inputs(args) -> list[str]:
    """Everything that can be checked without loading the model."""
    from lightning_musicgen.audio import AudioReadError, audio_info
    texts = read_texts(args)
    if not (args.duration > 0) or args.duration == float("inf"):
        raise InputError(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.model is not None and not Path(args.model, "config.json").is_file():
        raise InputError(f"--model {args.model}: not a model folder (no config.json; write one with `export`)")
    if args.ckpt is not None and not Path(args.ckpt).exists():
        raise InputError(f"--ckpt {args.ckpt}: no such file")
    for flag, value in (("--melody", args.melody), ("--prompt-audio", args.prompt_audio)):
        if value is None:
            continue
        try:
            _, _, frames = audio_info(value)
        except AudioReadError as exc:
            raise InputError(f"{flag} {exc}") from exc
        if frames == 0:
            raise InputError(f"{flag} {value}: no audio samples")
    for flag in ("cfg_coef", "top_p", "temperature", "max_duration", "extend_stride"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise InputError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.top_k < 0 or not 0.0 <= args.top_p <= 1.0 or args.temperature < 0:
        raise InputError(f"bad sampling values: --top-k {args.top_k} (>= 0), --top-p {args.top_p} (in [0, 1]), "
                         f"--temperature {args.temperature} (>= 0)")
    if args.max_duration is not None and args.max_duration <= 0:
        raise InputError(f"--max-duration must be > 0, got {args.max_duration}")
    if args.extend_stride is not None and args.max_duration is not None \
            and not 0 < args.extend_stride < args.max_duration:
        raise InputError(f"--extend-stride {args.extend_stride} must be in (0, --max-duration {args.max_duration})")
    check_device(args.device)
    return texts


def check_device(name: str) -> str:
    """The device to use for `--device NAME` ("auto": cuda if available); InputError if it is not here."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name}: not a device name (cpu, cuda, cuda:1, mps, ...): {exc}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return name


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RequestProgress:
    """Decoding progress over all batches of a request, with an estimate of the time left.

    `callback(batch)` returns the `callback(done, total)` that `MusicGen.generate` calls after every
    decoding step of that batch (every batch has the same number of steps). On a terminal: one tqdm bar
    for the whole request. Otherwise (logs, SLURM): a line `generate: STEP/TOTAL steps (P%), R steps/s,
    elapsed E, about T left` after 1, 2, 4, 8, ... seconds, then every `max_interval` seconds."""

    def __init__(self, batches: int, enabled: bool = True, stream=None, terminal: bool | None = None,
                 max_interval: float = 60.0):
        self.batches, self.enabled, self.max_interval = batches, enabled, max_interval
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.per_batch = self.total = 0
        self.bar, self.start, self.next_log, self.interval = None, None, 0.0, 1.0

    def callback(self, batch: int):
        def step(done: int, total: int) -> None:
            self.update(batch * total + done, total)
        return step

    def update(self, done_all: int, per_batch: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.start is None:
            self.per_batch, self.total = per_batch, per_batch * self.batches
            self.start = self.next_log = now
            self.next_log += self.interval
            self._begin()
        if self.bar is not None:
            self.bar.n = done_all
            self.bar.refresh()
        elif now >= self.next_log or done_all == self.total:
            self._log(done_all, now)
            self.interval = min(self.interval * 2, self.max_interval)
            self.next_log = now + self.interval

    def _begin(self) -> None:
        head = f"generate: {self.batches} batch(es) x {self.per_batch} decoding steps = {self.total} steps"
        if self.terminal:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc="generate", unit="step", file=self.stream, dynamic_ncols=True)
        else:
            print(head, file=self.stream, flush=True)

    def _log(self, done: int, now: float) -> None:
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = f"about {_clock(left)} left" if math.isfinite(left) else "estimating time left"
        print(f"generate: {done}/{self.total} steps ({100 * done / self.total:.0f}%), {rate:.1f} steps/s, "
              f"elapsed {_clock(elapsed)}, {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


def run(args) -> dict:
    import torch

    from lightning_musicgen.audio import write_audio
    from lightning_musicgen.generation import MusicGen
    texts = check_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    t0 = time.perf_counter()
    model = MusicGen.from_checkpoint(args.model or args.ckpt, device=device, dtype=args.dtype,
                                     max_duration=args.max_duration,
                                     extend_stride=args.extend_stride)
    load_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    files, t1 = [], time.perf_counter()
    starts = range(0, len(texts), args.batch_size)
    progress = RequestProgress(len(starts), enabled=not args.no_progress)
    for b, start in enumerate(starts):
        batch = texts[start:start + args.batch_size]
        wav = model.generate(batch, args.duration, melody=args.melody, prompt=args.prompt_audio,
                             cfg_coef=args.cfg_coef, top_k=args.top_k, top_p=args.top_p,
                             temperature=args.temperature, seed=seed + b, two_pass_cfg=args.two_pass_cfg,
                             callback=progress.callback(b))
        for j, text in enumerate(batch):
            path = out / f"{start + j:03d}_{slug(text)}.wav"
            write_audio(path, wav[j], model.sample_rate)
            files.append({"file": path.name, "text": text, "seed": seed + b, "batch": b})
            print(path)
    progress.close()
    record = {
        "model" if args.model else "ckpt": str(Path(args.model or args.ckpt).resolve()), "texts": texts,
        "duration": args.duration,
        "melody": args.melody, "prompt_audio": args.prompt_audio, "cfg_coef": args.cfg_coef,
        "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature, "seed": seed,
        "two_pass_cfg": args.two_pass_cfg, "batch_size": args.batch_size, "max_duration": model.max_duration,
        "extend_stride": model.extend_stride, "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device), "sample_rate": model.sample_rate, "channels": model.channels,
        "frame_rate": model.frame_rate, "files": files, "load_seconds": round(load_s, 3),
        "generate_seconds": round(time.perf_counter() - t1, 3),
    }
    (out / "generate.json").write_text(json.dumps(record, indent=2))
    return record


def generate_command(*, model: Optional[str] = None, ckpt: Optional[str] = None, text: list[str] = (),
                     text_file: Optional[str] = None, melody: Optional[str] = None,
                     prompt_audio: Optional[str] = None, duration: float = 10.0, out: str,
                     cfg_coef: float = 3.0, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0,
                     seed: Optional[int] = None, two_pass_cfg: bool = False, batch_size: int = 4,
                     max_duration: Optional[float] = None, extend_stride: Optional[float] = None,
                     dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", device: str = "auto",
                     threads: Optional[int] = None, no_progress: bool = False) -> None:
    """Generate music from text descriptions to wav files.

    Uses a MusicGen model folder (`export`, `convert`) or a training checkpoint; optionally follows a
    melody or continues an audio prompt. Writes one wav per description (OUT/000_<slug>.wav, ...) and
    OUT/generate.json with every parameter used. Give exactly one of --model and --ckpt.

    Args:
        model: model folder (written by `export` or `convert`).
        ckpt: MusicGenModule training checkpoint (or a model folder).
        text: a description (repeat for several).
        text_file: descriptions, one per line (blank lines and #comments skipped).
        melody: melody wav to follow (melody models only); resampled, its chroma conditions the LM.
        prompt_audio: wav to continue; --duration includes it.
        duration: seconds of audio per description.
        out: output folder (created).
        cfg_coef: classifier-free guidance scale (1 = off).
        top_k: top-k sampling (1 = greedy, 0 = off).
        top_p: nucleus sampling mass (0 = off).
        temperature: softmax temperature (0 = greedy).
        seed: random seed (batch i uses seed + i); default: random.
        two_pass_cfg: run the conditional and null passes separately instead of one doubled batch.
        batch_size: descriptions generated together.
        max_duration: LM window in seconds; longer durations slide it (default: the duration the model
            was trained on, 30 s for the official models).
        extend_stride: seconds the window advances when extending (overlap = window - stride; default:
            60 % of the window).
        dtype: LM compute dtype (auto: bf16 where the CPU/GPU supports it, else float32).
        device: cpu, cuda, cuda:1, ... (auto: cuda if available).
        threads: CPU threads for torch (default: torch's choice).
        no_progress: no progress bar.
    """
    if (model is None) == (ckpt is None):
        raise InputError("give one of --model DIR or --ckpt PATH" + (" (not both)" if model is not None else ""))
    run(SimpleNamespace(model=model, ckpt=ckpt, text=list(text), text_file=text_file, melody=melody,
                        prompt_audio=prompt_audio, duration=duration, out=out, cfg_coef=cfg_coef, top_k=top_k,
                        top_p=top_p, temperature=temperature, seed=seed, two_pass_cfg=two_pass_cfg,
                        batch_size=batch_size, max_duration=max_duration, extend_stride=extend_stride,
                        dtype=dtype, device=device, threads=threads, no_progress=no_progress))
