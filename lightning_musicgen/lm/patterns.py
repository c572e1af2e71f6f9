"""Codebook interleaving patterns (MusicGen paper, section 2.2).

A pattern decides at which sequence step the LM predicts each code `codes[k, t]` (codebook k,
frame t). Every pattern here is a map `step_of[k, t]` with at most one frame per (codebook, step),
so a pattern-built sequence keeps the codebook axis: `seq[B, K, S]`, where `seq[:, k, s]` is the
code of codebook k assigned to step s, or the special token where step s holds nothing for k.

Conventions shared with `MusicGenLM`:
- `build(codes[B,K,T], special) -> seq[B,K,S]` with `S = num_steps(T)`;
- the LM input is `seq` shifted right by one step with a special-token column in front, so the
  logits at step s are the prediction of `seq[:, :, s]` (see `MusicGenLM.shift_right`);
- `revert(seq_or_logits[B,K,S,...]) -> (values[B,K,T,...], mask[K,T])` gathers every (k, t) back
  from its step; it is the exact inverse of `build` and works on logits the same way. For a
  partial sequence (fewer than `num_steps(T)` steps) pass `num_frames=T`: `mask` is then False
  where the step of (k, t) is not in the sequence yet.

Step counts for 1500 frames x 4 codebooks: parallel 1500, delay 1503, partial_delay 1501,
flatten 6000, partial_flatten 3000, vall_e 3000, coarse_first 3002, musiclm 6000.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_musicgen.errors import ConfigError


class Pattern:
    """Base class: subclasses define `step_of(T) -> LongTensor[K, T]` and `num_steps(T)`."""

    name = "pattern"

    def __init__(self, n_q: int):
        if n_q < 1:
            raise ConfigError(f"{self.name} pattern: n_q must be >= 1, got {n_q}")
        self.n_q = n_q

    def num_steps(self, num_frames: int) -> int:
        raise NotImplementedError

    def step_of(self, num_frames: int) -> torch.Tensor:
        raise NotImplementedError

    def valid_steps(self, num_frames: int) -> int:
        """Leading steps audiocraft trains on (its `valid_layout`, `keep_only_valid_steps`): all
        steps but the last `overhang(T)`, which exist to complete delayed codebooks."""
        return max(0, self.num_steps(num_frames) - self.overhang(num_frames))

    def overhang(self, num_frames: int) -> int:
        """audiocraft's `max_delay` for T frames: how many frames past T - 1 its layout reaches
        (it removes that many steps from the end, also for unrolled patterns)."""
        return 0

    def num_frames(self, num_steps: int) -> int:
        """Largest T whose whole pattern fits in `num_steps` steps (inverse of `num_steps`)."""
        lo, hi = 0, max(1, num_steps)
        while self.num_steps(hi) <= num_steps:
            hi *= 2
        while lo < hi:  # largest T with num_steps(T) <= num_steps
            mid = (lo + hi + 1) // 2
            if self.num_steps(mid) <= num_steps:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def build(self, codes: torch.Tensor, special: int) -> torch.Tensor:
        """codes [B, K, T] -> seq [B, K, num_steps(T)], `special` where a step holds no code."""
        B, K, T = codes.shape
        if K != self.n_q:
            raise ValueError(f"{self.name} pattern: expected {self.n_q} codebooks, got codes of shape {tuple(codes.shape)}")
        seq = codes.new_full((B, K, self.num_steps(T)), special)
        index = self.step_of(T).to(codes.device).unsqueeze(0).expand(B, K, T)
        return seq.scatter(2, index, codes)

    def revert(self, seq: torch.Tensor, num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """seq or logits [B, K, S, ...] -> (values [B, K, T, ...], mask [K, T] of valid positions)."""
        B, K, S = seq.shape[:3]
        if K != self.n_q:
            raise ValueError(f"{self.name} pattern: expected {self.n_q} codebooks, got shape {tuple(seq.shape)}")
        T = self.num_frames(S) if num_frames is None else num_frames
        steps = self.step_of(T).to(seq.device)
        mask = steps < S
        index = steps.clamp(max=max(S - 1, 0))
        extra = seq.shape[3:]
        index = index.view(1, K, T, *([1] * len(extra))).expand(B, K, T, *extra)
        if S == 0:
            return seq.new_zeros(B, K, T, *extra), mask
        return seq.gather(2, index), mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q})"


class DelayPattern(Pattern):
    """Codebook k at frame t is predicted at step t + delays[k] (parallel: all delays 0).

    MusicGen's default is delays [0, 1, 2, 3]: about T steps instead of K*T. audiocraft's two
    extras: `flatten_first` F predicts the first F frames one codebook per step (K*F steps), the
    delays apply from frame F on; `empty_initial` E puts E empty steps before everything."""

    name = "delay"

    def __init__(self, n_q: int, delays: Sequence[int] | None = None, flatten_first: int = 0,
                 empty_initial: int = 0):
        super().__init__(n_q)
        self.delays = list(range(n_q)) if delays is None else [int(d) for d in delays]
        if len(self.delays) != n_q or min(self.delays) < 0:
            raise ConfigError(f"{self.name} pattern: need {n_q} non-negative delays, got {self.delays}")
        if flatten_first < 0 or empty_initial < 0:
            raise ConfigError(f"{self.name} pattern: flatten_first ({flatten_first}) and empty_initial "
                              f"({empty_initial}) must be >= 0")
        self.flatten_first, self.empty_initial = int(flatten_first), int(empty_initial)

    def num_steps(self, num_frames: int) -> int:
        if num_frames <= 0:
            return 0
        flat = min(num_frames, self.flatten_first)
        return self.empty_initial + flat * self.n_q + max(0, num_frames + max(self.delays) - self.flatten_first)

    def step_of(self, num_frames: int) -> torch.Tensor:
        t = torch.arange(num_frames)
        F, E = self.flatten_first, self.empty_initial
        flat_end = E + min(num_frames, F) * self.n_q
        return torch.stack([torch.where(t < F, E + t * self.n_q + k, flat_end + t - F + d)
                            for k, d in enumerate(self.delays)])

    def overhang(self, num_frames: int) -> int:
        last = num_frames + max(self.delays) - min(self.delays)  # 1 + the last frame index in the layout
        if num_frames <= 0 or last - 1 < self.flatten_first:
            return 0
        return last - num_frames

    def __repr__(self) -> str:
        extra = "".join(f", {n}={getattr(self, n)}" for n in ("flatten_first", "empty_initial") if getattr(self, n))
        return f"{type(self).__name__}(n_q={self.n_q}, delays={self.delays}{extra})"


class UnrolledPattern(Pattern):
    """Each frame takes `max(groups) + 1` steps; codebook k is predicted at sub-step groups[k].

    Flatten: groups [0, 1, ..., K-1] (K*T steps). Partial flatten: groups [0, 1, 1, ...]: the
    first codebook alone, then the others in parallel (2T steps). `delays` (audiocraft's unroll
    delays; one value per codebook, equal within a group) move group g's sub-step of frame t to
    the place of frame t + delays[k] in the unrolled order, the way audiocraft orders its layout."""

    name = "unrolled"

    def __init__(self, n_q: int, groups: Sequence[int] | None = None, delays: Sequence[int] | None = None):
        super().__init__(n_q)
        self.groups = list(range(n_q)) if groups is None else [int(g) for g in groups]
        if len(self.groups) != n_q or min(self.groups) < 0:
            raise ConfigError(f"{self.name} pattern: need {n_q} non-negative groups, got {self.groups}")
        if sorted(set(self.groups)) != list(range(max(self.groups) + 1)):
            raise ConfigError(f"{self.name} pattern: groups must use every sub-step 0..G-1, got {self.groups}")
        self.steps_per_frame = max(self.groups) + 1
        self.delays = [0] * n_q if delays is None else [int(d) for d in delays]
        if len(self.delays) != n_q or min(self.delays) < 0:
            raise ConfigError(f"{self.name} pattern: need {n_q} non-negative delays, got {self.delays}")
        self.group_delay = [0] * self.steps_per_frame
        for g, d in zip(self.groups, self.delays):
            self.group_delay[g] = d
        if any(self.group_delay[g] != d for g, d in zip(self.groups, self.delays)):
            raise ConfigError(f"{self.name} pattern: codebooks of one group need one delay, got groups "
                              f"{self.groups} and delays {self.delays}")

    def num_steps(self, num_frames: int) -> int:
        if num_frames <= 0:
            return 0
        padded = num_frames + max(self.delays)
        return self.steps_per_frame * padded - sum(self.group_delay)

    def step_of(self, num_frames: int) -> torch.Tensor:
        G, padded = self.steps_per_frame, num_frames + max(self.delays)
        if not any(self.delays):
            return torch.stack([torch.arange(num_frames) * G + g for g in self.groups])
        # entry (frame t, group g) sits at position t + delay[g]; ties: earlier frame, then lower codebook
        t = torch.arange(padded)[:, None].expand(padded, G)
        g = torch.arange(G)[None, :].expand(padded, G)
        first_q = torch.tensor([self.groups.index(i) for i in range(G)])
        position = t + torch.tensor(self.group_delay)[None, :]
        kept = position < padded
        order = (position * padded + t) * self.n_q + first_q[g]
        rank = torch.full((padded, G), -1, dtype=torch.long)
        rank[kept] = torch.argsort(torch.argsort(order[kept]))
        return torch.stack([rank[:num_frames, gk] for gk in self.groups])

    def overhang(self, num_frames: int) -> int:
        return max(self.delays) - min(self.delays) if num_frames > 0 else 0

    def __repr__(self) -> str:
        extra = f", delays={self.delays}" if any(self.delays) else ""
        return f"{type(self).__name__}(n_q={self.n_q}, groups={self.groups}{extra})"


class CoarseFirstPattern(Pattern):
    """The first (coarsest) codebook for all T frames, then the finer codebooks over the next
    T steps with `delays` among them. VALL-E: delays all 0 (2T steps); coarse-first ("valley")
    with delays [0, 1, ...] (2T + K - 2 steps)."""

    name = "coarse_first"

    def __init__(self, n_q: int, delays: Sequence[int] | None = None):
        super().__init__(n_q)
        self.delays = list(range(n_q - 1)) if delays is None else [int(d) for d in delays]
        if len(self.delays) != n_q - 1 or (self.delays and min(self.delays) < 0):
            raise ConfigError(f"{self.name} pattern: need {n_q - 1} non-negative delays, got {self.delays}")

    def num_steps(self, num_frames: int) -> int:
        if num_frames == 0:
            return 0
        return num_frames + (num_frames + max(self.delays) if self.delays else 0)

    def step_of(self, num_frames: int) -> torch.Tensor:
        t = torch.arange(num_frames)
        return torch.stack([t] + [num_frames + t + d for d in self.delays])

    def overhang(self, num_frames: int) -> int:
        return max(self.delays) - min(self.delays) if num_frames > 0 and self.delays else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q}, delays={self.delays})"


class MusicLMPattern(Pattern):
    """MusicLM-style grouped flattening: codebooks in groups of `group_by`; each group is
    flattened over all frames before the next group starts (K*T steps). Default group_by: 2
    (1 for an odd number of codebooks)."""

    name = "musiclm"

    def __init__(self, n_q: int, group_by: int | None = None):
        super().__init__(n_q)
        group_by = (2 if n_q % 2 == 0 else 1) if group_by is None else group_by
        if group_by < 1 or n_q % group_by:
            raise ConfigError(f"{self.name} pattern: group_by={group_by} must divide n_q={n_q}")
        self.group_by = group_by

    def num_steps(self, num_frames: int) -> int:
        return num_frames * self.n_q

    def step_of(self, num_frames: int) -> torch.Tensor:
        t, g = torch.arange(num_frames), self.group_by
        return torch.stack([(k // g) * g * num_frames + t * g + k % g for k in range(self.n_q)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q}, group_by={self.group_by})"


PATTERNS = ("parallel", "delay", "partial_delay", "flatten", "partial_flatten", "vall_e", "coarse_first",
            "musiclm")


def get_pattern(name: str, n_q: int, **kw) -> Pattern:
    """Pattern by name: parallel(empty_initial), delay(delays, flatten_first, empty_initial),
    partial_delay, flatten(delays), partial_flatten(groups, delays), vall_e, coarse_first(delays),
    musiclm(group_by); "unroll" (groups, delays) is the unrolled pattern under audiocraft's name.

    audiocraft's keyword names are accepted too: `flattening` for `groups`."""
    if "flattening" in kw:
        kw["groups"] = kw.pop("flattening")
    if name == "parallel":
        return DelayPattern(n_q, delays=[0] * n_q, **kw)
    if name == "delay":
        return DelayPattern(n_q, **kw)
    if name == "partial_delay":  # first codebook, then the rest in parallel one step later
        kw.setdefault("delays", [0] + [1] * (n_q - 1))
        return DelayPattern(n_q, **kw)
    if name == "flatten":
        return UnrolledPattern(n_q, groups=list(range(n_q)), **kw)
    if name == "unroll":  # audiocraft's name for the general unrolled pattern
        return UnrolledPattern(n_q, **kw)
    if name == "partial_flatten":
        kw.setdefault("groups", [0] + [1] * (n_q - 1))
        return UnrolledPattern(n_q, **kw)
    if name == "vall_e":
        kw.setdefault("delays", [0] * (n_q - 1))
        return CoarseFirstPattern(n_q, **kw)
    if name == "coarse_first":
        return CoarseFirstPattern(n_q, **kw)
    if name == "musiclm":
        return MusicLMPattern(n_q, **kw)
    raise ConfigError(f"unknown pattern {name!r}; choose one of {', '.join(PATTERNS)}")
