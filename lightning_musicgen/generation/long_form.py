"""Long-form generation: durations beyond the LM's window, by a sliding window.

Like audiocraft's `extend_stride`: windows of at most `window_frames` start every `stride_frames`;
each window after the first is prompted with the previous window's last `window - stride` frames
(the overlap) and only its new frames are kept. Codes are `[B, K, frames]` LongTensors.

    windows = plan_windows(total_frames=2500, window_frames=1500, stride_frames=900)
    codes = generate_long(generate_window, windows, prompt=None)   # [B, K, 2500]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_musicgen.errors import InputError


@dataclass(frozen=True)
class Window:
    """One LM call of a long generation: output frames [offset, offset + num_frames), the first
    `prompt_frames` of which are given (the previous window's overlap, or the user's prompt)."""
    offset: int
    num_frames: int
    prompt_frames: int


def plan_windows(total_frames: int, window_frames: int, stride_frames: int, prompt_frames: int = 0) -> list[Window]:
    """Split a generation of `total_frames` (including a prompt of `prompt_frames`) into windows
    of at most `window_frames`, each starting `stride_frames` after the previous one."""
    if total_frames <= 0:
        raise InputError(f"nothing to generate: {total_frames} frames")
    if not 0 < stride_frames <= window_frames:
        raise InputError(f"stride ({stride_frames} frames) must be in (0, window = {window_frames} frames]")
    if prompt_frames >= min(window_frames, total_frames):
        raise InputError(f"the prompt ({prompt_frames} frames) must be shorter than the window ({window_frames}) "
                         f"and than the requested length ({total_frames})")
    windows = [Window(0, min(window_frames, total_frames), prompt_frames)]
    while windows[-1].offset + windows[-1].num_frames < total_frames:
        prev = windows[-1]
        offset = prev.offset + stride_frames
        windows.append(Window(offset, min(window_frames, total_frames - offset), prev.offset + prev.num_frames - offset))
    return windows


def generate_long(generate_window: Callable[[Window, torch.Tensor | None], torch.Tensor], windows: Sequence[Window],
                  prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Run `generate_window(window, window_prompt) -> codes[B, K, window.num_frames]` over `windows`,
    prompting each window with the overlap of the previous one; return codes[B, K, total]."""
    pieces, window_prompt = [], prompt
    if prompt is not None:
        pieces.append(prompt)
    for i, window in enumerate(windows):
        have = 0 if window_prompt is None else window_prompt.shape[-1]
        if have != window.prompt_frames:
            raise ValueError(f"window {i}: prompt of {have} frames, planned {window.prompt_frames}")
        codes = generate_window(window, window_prompt)
        if codes.shape[-1] != window.num_frames:
            raise RuntimeError(f"window {i}: got {codes.shape[-1]} frames, expected {window.num_frames}")
        pieces.append(codes[..., have:])
        if i + 1 < len(windows):
            window_prompt = codes[..., windows[i + 1].offset - window.offset:]
    return torch.cat(pieces, dim=-1)
