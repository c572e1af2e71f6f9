"""Decode a whole audio file and tell whether it is complete (for `prepare`).

`read_checked(path) -> CheckedAudio(wav float32[C, T], sample_rate, format, subtype, truncated)`.
`truncated` is None for a complete file, else one line saying what is missing. A file counts as
truncated when
- decoding fails part-way (the samples decoded before the failure are returned), or
- it decodes to fewer frames than its header announces (FLAC STREAMINFO, MP3 Xing/Info/VBRI
  headers, and anything else libsndfile reads a length from), or
- WAV: the `data` chunk declares more bytes than the file holds (libsndfile silently shortens
  such files to what is there, so the header check above cannot see it), or
- Ogg (Vorbis, Opus, FLAC in Ogg): the file does not end with a complete page (checked with the
  page's CRC) carrying the end-of-stream flag.
A file that cannot be opened, or fails before its first sample, raises AudioReadError.

Not detectable: an MP3 without a Xing/Info/VBRI header cut exactly between two MPEG frames, or a
headerless raw stream: nothing in such a file records its length.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from lightning_musicgen.errors import AudioReadError, one_line

BLOCK_FRAMES = 1 << 16
RETRY_FRAMES = 1 << 12  # a failing read loses its whole block: the failed span is re-read in small blocks
OGG_MAX_PAGE = 27 + 255 + 255 * 255


@dataclass
class CheckedAudio:
    wav: torch.Tensor           # float32 [C, T], everything that decoded
    sample_rate: int
    format: str                 # soundfile's container name: WAV, FLAC, OGG, MP3, ...
    subtype: str                # soundfile's codec name: PCM_16, VORBIS, OPUS, MPEG_LAYER_III, ...
    truncated: str | None       # None when complete, else what is missing (one line)


def read_checked(path: str | os.PathLike) -> CheckedAudio:
    """Decode all of `path` block by block and check it against its header and container."""
    path = str(path)
    try:
        f = sf.SoundFile(path)
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioReadError(f"{path}: cannot read audio ({exc})") from exc
    with f:
        sr, announced, fmt, subtype, channels = f.samplerate, f.frames, f.format, f.subtype, f.channels
        data, decoded, failure = _decode(f, announced, channels)
    if failure is not None and decoded == 0:
        raise AudioReadError(f"{path}: cannot decode audio ({failure})") from failure
    wav = torch.from_numpy(np.ascontiguousarray(data[:decoded].T))
    truncated = None
    if failure is not None:
        reason = one_line(str(failure)).removeprefix("Error : ") or type(failure).__name__
        truncated = f"decoding failed after {decoded / sr:.3f}s ({reason})"
    elif 0 < announced and decoded < announced:
        truncated = f"decoded {decoded} of the {announced} frames its header announces"
    elif fmt == "WAV":
        cut = wav_data_shortfall(path)
        if cut is not None:
            truncated = f"data chunk declares {cut[0]} frames, the file holds {cut[1]}"
    elif fmt == "OGG" and not ogg_ends_with_eos(path):
        truncated = "no complete end-of-stream Ogg page at the end of the file"
    return CheckedAudio(wav, sr, fmt, subtype, truncated)


def _decode(f: sf.SoundFile, announced: int, channels: int) -> tuple[np.ndarray, int, Exception | None]:
    """(frames [N, C] float32, frames decoded, the exception that stopped decoding or None)."""
    # preallocate what the header announces (at most an hour: a corrupt header can announce anything)
    out = np.empty((min(max(announced, 0), f.samplerate * 3600), channels), np.float32)
    decoded, block, first_error = 0, BLOCK_FRAMES, None
    while True:
        if decoded + block > len(out):  # longer than announced (or unknown): grow
            out = np.concatenate([out, np.empty((max(block, len(out)), channels), np.float32)])
        try:
            n = len(f.read(block, dtype="float32", always_2d=True, out=out[decoded:decoded + block]))
        except Exception as exc:
            if block == RETRY_FRAMES:  # the damage itself: stop; the first error says what is wrong
                return out, decoded, first_error or exc
            first_error = exc
            try:
                f.seek(decoded)
            except Exception:
                return out, decoded, exc
            block = RETRY_FRAMES
            continue
        if n == 0:
            return out, decoded, None
        decoded += n


def wav_data_shortfall(path: str | os.PathLike) -> tuple[int, int] | None:
    """(declared frames, present frames) when a RIFF/WAVE file's data chunk is cut short, else None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], "little")
        if chunk == b"data":
            present = size - (pos + 8)
            if length in (0, 0xFFFFFFFF) or not block_align or length <= present:
                return None  # 0 / 0xFFFFFFFF: written as a stream, length unknown
            return length // block_align, present // block_align
        pos += 8 + length + (length & 1)
    return None


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_page_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, initial value 0) of a page with a zeroed CRC field."""
    crc = 0
    for byte in page[:22] + b"\0\0\0\0" + page[26:]:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_ends_with_eos(path: str | os.PathLike) -> bool:
    """True when the file's last bytes are one complete Ogg page (valid CRC) with the end-of-stream flag."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - OGG_MAX_PAGE))
        tail = f.read()
    start = tail.rfind(b"OggS")
    while start >= 0:
        if start + 27 <= len(tail) and tail[start + 4] == 0:
            segments = tail[start + 26]
            table = tail[start + 27:start + 27 + segments]
            end = start + 27 + segments + sum(table)
            if len(table) == segments and end == len(tail):
                page = tail[start:end]
                if int.from_bytes(page[22:26], "little") == ogg_page_crc(page):
                    return bool(page[5] & 0x04)
        start = tail.rfind(b"OggS", 0, start)
    return False
