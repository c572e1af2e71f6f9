"""The autoregressive decoding loop of one LM window: KV cache, classifier-free guidance, sampling.

    codes = decode_window(lm, cond, null, num_frames, prompt, SamplingParams(top_k=250), cfg_coef=3.0)

Codes are LongTensors `[B, K, frames]`; `UNKNOWN` (-1) marks a code still to be generated in a
pattern-built sequence `[B, K, S]`. Decoding runs over the LM's pattern steps with a KV cache
(self-attention keys and values appended per step, cross-attention keys/values computed once).
CFG runs the conditional and the null condition as one doubled batch (or as two passes with
`two_pass_cfg=True`) and mixes the logits as `uncond + (cond - uncond) * cfg_coef`; the next token
is picked by `lm.sampling` (temperature, top-k, top-p, or greedy for `top_k=1`).

Token-exact with transformers' `MusicgenForConditionalGeneration.generate` for converted weights:
the first step's input is the special token on every codebook, positions a pattern leaves empty
hold the special token, and the prompt's known codes are kept where they fall.

The LM is only read (its parameters give the device and compute dtype); putting it in eval mode
is the caller's business (`MusicGen` does it with `modes.eval_mode`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_musicgen.generation.long_form import Window
from lightning_musicgen.lm.conditioners import LMConditions
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.lm.sampling import SamplingParams, cfg_combine, sample_next_token

UNKNOWN = -1  # a code still to be generated, in a pattern-built sequence


@torch.inference_mode()
def decode_window(lm: MusicGenLM, cond: LMConditions, null: LMConditions | None, num_frames: int,
                  prompt: torch.Tensor | None = None, sampling: SamplingParams = SamplingParams(),
                  cfg_coef: float = 3.0, generator: torch.Generator | None = None, two_pass_cfg: bool = False,
                  progress: "StepProgress | None" = None) -> torch.Tensor:
    """One LM call: codes [B, K, num_frames] whose first frames are `prompt` [B, K, P].

    CFG is on when `cfg_coef != 1` and `null` is given. The conditions must already be on the
    LM's device and in its dtype."""
    weight = next(lm.parameters())
    device, dtype = weight.device, weight.dtype
    pattern, special = lm.pattern, lm.special_token
    B, K = cond.batch_size, lm.n_q
    codes = torch.full((B, K, num_frames), UNKNOWN, dtype=torch.long, device=device)
    if prompt is not None:
        codes[..., : prompt.shape[-1]] = prompt.to(device)
    seq = pattern.build(codes, special)  # [B, K, S]: prompt codes, UNKNOWN, or special
    S = seq.shape[-1]
    todo = (seq == UNKNOWN).any(dim=1).any(dim=0).nonzero()
    if len(todo) == 0:
        return codes
    first = int(todo[0])
    use_cfg = null is not None and cfg_coef != 1.0
    passes = [cond] if not use_cfg else ([cond, null] if two_pass_cfg else [cond.cat(null)])
    caches = [lm.make_cache(c.batch_size, S, c, device=device, dtype=dtype) for c in passes]
    # prefill: the special start column and every fully known step before the first unknown
    inputs = lm.shift_right(seq)[..., : first + 1]
    for step in range(first, S):
        outs = []
        for c, cache in zip(passes, caches):
            x = inputs if c.batch_size == B else inputs.repeat(c.batch_size // B, 1, 1)
            outs.append(lm(x, c, cache=cache)[:, :, -1])
        logits = outs[0] if len(outs) == 1 else torch.cat(outs)
        if use_cfg:
            logits = cfg_combine(*logits.float().split(B), cfg_coef)
        tokens = sample_next_token(logits, sampling, generator)  # [B, K]
        column = seq[:, :, step]
        column = torch.where(column == UNKNOWN, tokens, column)
        seq[:, :, step] = column
        inputs = column[..., None]
        if progress is not None:
            progress.update(1)
    values, valid = pattern.revert(seq, num_frames)
    if not bool(valid.all()) or bool((values == UNKNOWN).any()):
        raise RuntimeError("generation left codes unfilled (pattern/step bookkeeping error)")
    return values


def window_steps(lm: MusicGenLM, window: Window) -> int:
    """Number of LM decoding steps (sampled tokens) of one window."""
    pattern = lm.pattern
    if window.prompt_frames == 0:
        return pattern.num_steps(window.num_frames)
    first = int(pattern.step_of(window.num_frames)[:, window.prompt_frames:].min())
    return pattern.num_steps(window.num_frames) - first


class StepProgress:
    """A tqdm bar (when `show`) plus a `callback(done, total)` after every decoding step."""

    def __init__(self, total: int, show: bool, callback: Callable[[int, int], None] | None):
        from tqdm.auto import tqdm
        self.total, self.done, self.callback = total, 0, callback
        self.bar = tqdm(total=total, desc="generate", unit="step", disable=not show, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        self.bar.close()
