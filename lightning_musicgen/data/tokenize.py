"""`python -m lightning_musicgen tokenize`: audio shards -> codec token shards for LM training.

Every input shard `NAME.tar` becomes `OUTPUT/NAME.tar` with samples `KEY.codes.npy` (int16/int32 [K, F]) and
`KEY.json` (the audio sample's metadata plus `frame_rate`, `n_q`, `card`,
`codec_sample_rate`, `codec_channels`, `frames`, `duration`), written atomically; a re-run skips finished
shards. `OUTPUT/index.json` sizes epochs for `TokenDataModule` (duration in seconds of audio).

With `--chroma` each sample also gets `KEY.chroma.npy` (uint8 [Fc]): the argmax chroma bin of every
frame, computed by the melody conditioner's `ChromaExtractor` (MusicGen's settings: 32 kHz, n_fft 16384,
hop 4096, so Fc = T // hop + 1 frames of 7.8 Hz) from the sample's melody conditioning file (`melody.flac`)
when it has one, else from its audio. The json then carries `chroma` (those settings and the `source`),
and `TokenDataModule` crops the chroma with the codes, so text+melody models train on tokens with no
audio decode per step. Without `--chroma` a sample's melody file is not carried (token shards hold no
audio): each is listed in the report as ignored.

Long files are encoded in chunks of `--chunk-seconds` with `--context-seconds` of audio on each side that
is encoded and then discarded, so chunk seams see the same receptive field as a whole-file encode (exact
when the context covers the encoder's receptive field; SEANet's is well under a second).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lightning_musicgen.audio.chroma import ChromaExtractor
from lightning_musicgen.audio.io import AudioReadError, convert_channels, read_audio, resample
from lightning_musicgen.data.shards import (AUDIO_EXTS, MELODY_MEMBER, AtomicShardWriter, atomic_write_json,
                                            expand_shards, iter_tar_samples, write_index)
from lightning_musicgen.errors import InputError, inputs_checked_by_library


@torch.no_grad()
def encode_long(model, wav: torch.Tensor, chunk_seconds: float = 30.0, context_seconds: float = 1.0) -> torch.Tensor:
    """codes [K, F] of wav [C, T] (model rate/channels) with F = ceil(T / hop), encoded chunk by chunk."""
    hop = int(round(model.sample_rate / model.frame_rate))
    total = math.ceil(wav.shape[-1] / hop)
    chunk = max(1, int(round(chunk_seconds * model.frame_rate)))
    context = max(0, int(round(context_seconds * model.frame_rate)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    pieces = []
    for f0 in range(0, total, chunk):
        f1 = min(total, f0 + chunk)
        a0, a1 = max(0, f0 - context), min(total, f1 + context)
        segment = wav[:, a0 * hop: a1 * hop]
        codes = model.encode(segment[None].to(device))[0]
        pieces.append(codes[:, f0 - a0: f1 - a0].cpu())
    return torch.cat(pieces, dim=-1)


def shard_filename(url: str) -> str:
    """`shard-000001.tar` from a path, URL or `pipe:` command (its last word ending in .tar)."""
    words = url[5:].split() if url.startswith("pipe:") else [url]
    name = next((Path(w).name for w in reversed(words) if w.endswith(".tar")), None)
    if name is None:
        raise InputError(f"{url}: cannot tell the shard's file name (no word ending in .tar)")
    return name


def _audio_blob(sample: dict) -> bytes | None:
    return next((sample[e] for e in AUDIO_EXTS if e in sample), None)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def token_sample(codes, meta: dict, codec_info: dict, seconds: float, chroma=None,
                 chroma_info: dict | None = None) -> dict[str, bytes]:
    """The members of one token sample: `codes.npy` (codes [K, F] as int16, or int32 for a card above
    int16) and `json` (`meta` plus `codec_info` - frame_rate, n_q, card, codec_sample_rate,
    codec_channels -, `frames` and `duration` in seconds); with `chroma` (argmax bins [Fc]) also
    `chroma.npy` (uint8) and the json's `chroma` (`chroma_info`)."""
    codes = np.asarray(codes)
    dtype = np.int16 if int(codec_info["card"]) <= np.iinfo(np.int16).max else np.int32
    meta = {**meta, **codec_info, "frames": int(codes.shape[-1]), "duration": round(float(seconds), 6)}
    members = {"codes.npy": _npy(codes.astype(dtype))}
    if chroma is not None:
        members["chroma.npy"] = _npy(np.asarray(chroma).astype(np.uint8))
        meta["chroma"] = dict(chroma_info or {})
    members["json"] = json.dumps(meta, ensure_ascii=False).encode()
    return members


CHROMA_SETTINGS = ("sample_rate", "n_chroma", "n_fft", "hop_length")


def chroma_bins(extractor: ChromaExtractor, wav: torch.Tensor, sample_rate: int) -> np.ndarray:
    """The argmax chroma bin of every frame of wav [C, T] (any rate): uint8 [T' // hop + 1]."""
    wav = resample(wav.float().mean(0, keepdim=True), sample_rate, extractor.sample_rate)
    return extractor(wav[None])[0].argmax(-1).numpy().astype(np.uint8)


def tokenize_shards(model, source, output, chunk_seconds: float = 30.0, context_seconds: float = 1.0,
                    progress: bool = True, codec_name: str | None = None,
                    chroma: ChromaExtractor | None = None) -> dict:
    """Encode every audio shard of `source` with `model` (a CompressionModel or anything with `encode`,
    `sample_rate`, `channels`, `frame_rate`, `n_q`, `card`) into `output`; with `chroma` (an argmax
    extractor) also each sample's chroma bins (of its melody file if it has one, else of its audio)."""
    from tqdm import tqdm
    urls = expand_shards(source)
    if not urls:
        raise InputError(f"{source}: no shards")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    codec_info = {"frame_rate": float(model.frame_rate), "n_q": int(model.n_q),
                  "card": int(model.card), "codec_sample_rate": int(model.sample_rate),
                  "codec_channels": int(model.channels)}
    chroma_info = None if chroma is None else {k: int(getattr(chroma, k)) for k in CHROMA_SETTINGS}
    shards, skipped = [], []  # skipped: report entries (unreadable samples, and ignored melody files)
    bar = tqdm(urls, unit="shard", desc=f"tokenize -> {output.name}", disable=not progress)
    for url in bar:
        name = shard_filename(url)
        stats_path = output / name.replace(".tar", ".stats.json")
        if (output / name).exists() and stats_path.exists():
            stats = json.loads(stats_path.read_text())
            if stats.get("codec") == codec_info and stats.get("chroma") == chroma_info:
                shards.append(stats)
                skipped += stats["skipped"]
                continue
        errors: list[dict] = []
        samples, duration = 0, 0.0
        with AtomicShardWriter(output / name) as writer:
            for sample in iter_tar_samples(url, lambda exc: errors.append(
                    {"path": url, "reason": "tar_error", "detail": str(exc).splitlines()[0][:200]})):
                where = f"{url}#{sample.get('__key__')}"
                blob = _audio_blob(sample)
                try:
                    meta = json.loads(sample["json"]) if "json" in sample else {}
                    if blob is None:
                        raise AudioReadError("no audio member")
                    wav, sr = read_audio(io.BytesIO(blob))
                    if wav.shape[-1] == 0 or not torch.isfinite(wav).all():
                        raise AudioReadError("empty or non-finite audio")
                except (AudioReadError, ValueError) as exc:
                    errors.append({"path": where, "reason": "unreadable", "detail": str(exc)[:200]})
                    continue
                bins, info = None, None
                if chroma is not None:
                    try:
                        source_wav, source_sr, source = (*read_audio(io.BytesIO(sample[MELODY_MEMBER])), "melody") \
                            if MELODY_MEMBER in sample else (wav, sr, "audio")
                    except AudioReadError as exc:
                        errors.append({"path": where, "reason": "unreadable melody", "detail": str(exc)[:200]})
                        continue
                    bins, info = chroma_bins(chroma, source_wav, source_sr), {**chroma_info, "source": source}
                wav = resample(convert_channels(wav, model.channels), sr, model.sample_rate)
                codes = encode_long(model, wav, chunk_seconds, context_seconds)
                seconds = wav.shape[-1] / model.sample_rate
                if codec_name:
                    meta["codec"] = codec_name
                writer.write(sample["__key__"], token_sample(codes, meta, codec_info, seconds, bins, info))
                samples += 1
                duration += seconds
                if chroma is None and MELODY_MEMBER in sample:  # reported: a melody run must not silently lose it
                    errors.append({"path": where, "reason": "melody file not carried", "action": "ignored",
                                   "detail": "token shards keep no audio: tokenize with --chroma to carry its chroma"})
        stats = {"name": name, "samples": samples, "duration": round(duration, 6), "skipped": errors,
                 "codec": codec_info, "chroma": chroma_info}
        atomic_write_json(stats_path, stats)
        shards.append(stats)
        skipped += errors
    extra = {} if chroma_info is None else {"chroma": chroma_info}
    return write_index(output, shards, skipped, kind="tokens", **codec_info, **extra)


def tokenize_command(*, codec: str, input: str, output: str, device: str = "auto",
                     n_q: Optional[int] = None, chunk_seconds: float = 30.0, context_seconds: float = 1.0,
                     chroma: bool = False, chroma_hop_length: int = 4096, no_progress: bool = False) -> None:
    """Encode audio shards with a trained codec into token shards for LM training.

    Reads the shards of `prepare`/`demo-data` and writes KEY.codes.npy + KEY.json shards that
    TokenDataModule reads. Re-running skips finished shards.

    Args:
        codec: codec model folder (`export`) or CodecModule checkpoint.
        input: audio shards: folder, index.json, glob or brace pattern.
        output: token shard folder.
        device: torch device (auto: cuda if available, else cpu).
        n_q: keep the first n_q codebooks (default: all).
        chunk_seconds: encode long files in chunks of this many seconds.
        context_seconds: audio context (seconds) encoded and discarded around each chunk.
        chroma: also store each sample's argmax chroma (of its melody file, else its audio) for
            text+melody LMs (MusicGen-melody's chroma at 32 kHz, n_fft 16384).
        chroma_hop_length: chroma hop in samples at 32 kHz (MusicGen: 4096, 7.8 frames/s); the LM's
            `melody.hop_length` must be the same.
        no_progress: no progress bar.
    """
    from lightning_musicgen.model_files.codec import load_codec
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with inputs_checked_by_library():
        model = load_codec(codec).eval().to(device)
        if n_q is not None:
            model.n_q = n_q
        extractor = ChromaExtractor(hop_length=chroma_hop_length, argmax=True) if chroma else None
        index = tokenize_shards(model, input, output, chunk_seconds, context_seconds, progress=not no_progress,
                                codec_name=str(codec), chroma=extractor)
    print(f"{output}: {index['samples']} samples, {index['duration'] / 3600:.2f} h of audio as "
          f"{index['n_q']} x {index['frame_rate']:g} Hz codes{' + chroma' if chroma else ''}; "
          f"skipped {index['skipped']}")
    if index.get("ignored"):
        print(f"{output}: {index['ignored']} samples carry a melody file that token shards do not keep; "
              f"re-run with --chroma to carry their chroma")
