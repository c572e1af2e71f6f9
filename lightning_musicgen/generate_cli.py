"""`python -m lightning_musicgen generate`: text (+ melody, + audio prompt) -> wav files + a JSON record.

    python -m lightning_musicgen generate --model runs/demo/model --text "lofi hip hop beat" \\
        --text "calm piano" --duration 10 --out samples/

Inputs are checked before the model loads; every bad input is a one-line `error: ...` and exit
code 2. Outputs: `OUT/000_<slug>.wav`, ... and `OUT/generate.json` (every parameter used, per-file
seeds, timings).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


class InputError(Exception):
    """A bad command-line input; the message is one line naming the argument/file/value."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lightning_musicgen generate",
        description="Generate music with a MusicGen model folder (`export`, `convert`) or training checkpoint "
                    "from text descriptions, optionally following a melody or continuing an audio prompt. "
                    "Writes one wav per description and a JSON of the parameters used.")
    io = p.add_argument_group("inputs and outputs")
    source = io.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", help="model folder (written by `export` or `convert`)")
    source.add_argument("--ckpt", metavar="PATH", help="MusicGenModule training checkpoint (or a model folder)")
    io.add_argument("--text", action="append", default=[], metavar="TEXT",
                    help="a description (repeat for several)")
    io.add_argument("--text-file", metavar="FILE", help="descriptions, one per line (blank lines and #comments skipped)")
    io.add_argument("--melody", metavar="WAV", help="melody to follow (melody models only), resampled, chroma")
    io.add_argument("--prompt-audio", metavar="WAV", help="audio to continue; --duration includes it")
    io.add_argument("--duration", type=float, default=10.0, help="seconds of audio per description (default 10)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    s = p.add_argument_group("sampling")
    s.add_argument("--cfg-coef", type=float, default=3.0, help="classifier-free guidance scale (1 = off; default 3)")
    s.add_argument("--top-k", type=int, default=250, help="top-k sampling (1 = greedy, 0 = off; default 250)")
    s.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (0 = off; default 0)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy; default 1)")
    s.add_argument("--seed", type=int, default=None, help="random seed (batch i uses seed + i); default: random")
    s.add_argument("--two-pass-cfg", action="store_true",
                   help="run the conditional and null passes separately instead of one doubled batch")
    r = p.add_argument_group("runtime")
    r.add_argument("--batch-size", type=int, default=4, help="descriptions generated together (default 4)")
    r.add_argument("--max-duration", type=float, default=30.0,
                   help="LM window in seconds; longer durations slide it (default 30)")
    r.add_argument("--extend-stride", type=float, default=18.0,
                   help="seconds the window advances when extending (default 18; overlap = window - stride)")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="LM compute dtype (auto: bf16 where the CPU/GPU supports it, else fp32)")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def read_texts(args) -> list[str]:
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
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.top_k < 0 or not 0.0 <= args.top_p <= 1.0 or args.temperature < 0:
        raise InputError(f"bad sampling values: --top-k {args.top_k} (>= 0), --top-p {args.top_p} (in [0, 1]), "
                         f"--temperature {args.temperature} (>= 0)")
    if not 0 < args.extend_stride < args.max_duration:
        raise InputError(f"--extend-stride {args.extend_stride} must be in (0, --max-duration {args.max_duration})")
    return texts


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


def run(args) -> dict:
    import torch

    from lightning_musicgen.audio import write_audio
    from lightning_musicgen.generation import MusicGen
    texts = check_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = MusicGen.from_checkpoint(args.model or args.ckpt, device=device, dtype=args.dtype,
                                     max_duration=args.max_duration,
                                     extend_stride=args.extend_stride)
    load_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    files, t1 = [], time.perf_counter()
    for b, start in enumerate(range(0, len(texts), args.batch_size)):
        batch = texts[start:start + args.batch_size]
        wav = model.generate(batch, args.duration, melody=args.melody, prompt=args.prompt_audio,
                             cfg_coef=args.cfg_coef, top_k=args.top_k, top_p=args.top_p,
                             temperature=args.temperature, seed=seed + b, two_pass_cfg=args.two_pass_cfg,
                             progress=not args.no_progress)
        for j, text in enumerate(batch):
            path = out / f"{start + j:03d}_{slug(text)}.wav"
            write_audio(path, wav[j], model.sample_rate)
            files.append({"file": path.name, "text": text, "seed": seed + b, "batch": b})
            print(path)
    record = {
        "model" if args.model else "ckpt": str(Path(args.model or args.ckpt).resolve()), "texts": texts,
        "duration": args.duration,
        "melody": args.melody, "prompt_audio": args.prompt_audio, "cfg_coef": args.cfg_coef,
        "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature, "seed": seed,
        "two_pass_cfg": args.two_pass_cfg, "batch_size": args.batch_size, "max_duration": args.max_duration,
        "extend_stride": args.extend_stride, "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device), "sample_rate": model.sample_rate, "channels": model.channels,
        "frame_rate": model.frame_rate, "files": files, "load_seconds": round(load_s, 3),
        "generate_seconds": round(time.perf_counter() - t1, 3),
    }
    (out / "generate.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    from lightning_musicgen.audio import AudioReadError
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, AudioReadError) as exc:  # bad checkpoint/audio/arguments
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
