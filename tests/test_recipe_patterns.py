"""Every pattern and pattern option equals audiocraft 1.3.0's layout step for step.

audiocraft's layout has a leading empty step (the special-token column the LM input starts with);
our step s is its step s + 1. Checked: the set of (frame, codebook) at every step, the built
sequence, the reverted values, and the valid-step count behind `keep_only_valid_steps`.
"""
import itertools

import pytest
import torch

from audiocraft_ref import import_audiocraft
from lightning_musicgen.lm.patterns import get_pattern

SPECIAL = 99


@pytest.fixture(scope="module")
def ac():
    (mod,) = import_audiocraft("audiocraft.modules.codebooks_patterns", leaf_only=True)
    return mod


def _cases(ac):
    """(our name, our kwargs, audiocraft provider, n_q) for every option combination tested."""
    for K in (1, 2, 4):
        yield "parallel", {}, ac.ParallelPatternProvider(K), K
        yield "parallel", {"empty_initial": 2}, ac.ParallelPatternProvider(K, empty_initial=2), K
        delay_sets = [list(range(K)), [0] + [1] * (K - 1), [2 * d for d in range(K)], [1 + d for d in range(K)]]
        for delays, F, E in itertools.product(delay_sets, (0, 1, 3), (0, 2)):
            yield ("delay", {"delays": delays, "flatten_first": F, "empty_initial": E},
                   ac.DelayedPatternProvider(K, delays, flatten_first=F, empty_initial=E), K)
        for flattening in (list(range(K)), [0] + [1] * (K - 1), [0] * K):
            G = max(flattening) + 1
            for group_delays in ([0] * G, list(range(G)), [3 * g for g in range(G)], [1] * G):
                delays = [group_delays[g] for g in flattening]
                yield ("unroll", {"flattening": flattening, "delays": delays},
                       ac.UnrolledPatternProvider(K, flattening, delays), K)
        if K > 1:
            for delays in ([0] * (K - 1), list(range(K - 1)), [2 * d for d in range(K - 1)]):
                yield "coarse_first", {"delays": delays}, ac.CoarseFirstPattern(K, delays), K
        for group_by in [1] + ([2] if K % 2 == 0 else []):
            yield "musiclm", {"group_by": group_by}, ac.MusicLMPattern(K, group_by), K


def _our_layout(pattern, T):
    steps = pattern.step_of(T)
    layout = [[] for _ in range(pattern.num_steps(T))]
    for k, t in itertools.product(range(pattern.n_q), range(T)):
        layout[int(steps[k, t])].append((t, k))
    return [sorted(step) for step in layout]


def test_every_pattern_option_equals_audiocrafts_layout(ac):
    checked = 0
    for name, kw, provider, K in _cases(ac):
        for T in (1, 2, 3, 7):
            ours, theirs = get_pattern(name, K, **kw), provider.get_pattern(T)
            assert theirs.layout[0] == []
            expected = [sorted((c.t, c.q) for c in step if c.t < T) for step in theirs.layout[1:]]
            where = f"{name} {kw} n_q={K} T={T}"
            assert _our_layout(ours, T) == expected, where
            assert ours.valid_steps(T) == len(theirs.valid_layout) - 1, where

            codes = torch.randint(0, 50, (2, K, T), generator=torch.Generator().manual_seed(T))
            seq = ours.build(codes, SPECIAL)
            their_seq, _, _ = theirs.build_pattern_sequence(codes, SPECIAL)
            assert torch.equal(seq, their_seq[..., 1:]), where
            # audiocraft's training sequence (keep_only_valid_steps) is our prefix of valid steps
            valid_seq, _, _ = theirs.build_pattern_sequence(codes, SPECIAL, keep_only_valid_steps=True)
            assert torch.equal(seq[..., :ours.valid_steps(T)], valid_seq[..., 1:]), where
            values, mask = ours.revert(seq, T)
            their_values, _, their_mask = theirs.revert_pattern_sequence(their_seq, SPECIAL)
            assert torch.equal(values, their_values) and torch.equal(mask, their_mask), where
            checked += 1
    assert checked > 300


def test_valid_steps_drop_the_last_delayed_frames():
    """Under MusicGen's delay pattern the valid steps leave out the last d_k frames of codebook k."""
    p = get_pattern("delay", 4)
    T = 10
    kept = p.step_of(T) < p.valid_steps(T)
    assert kept.sum(dim=1).tolist() == [10, 9, 8, 7]
    assert get_pattern("parallel", 4).valid_steps(T) == T
    assert get_pattern("delay", 4, flatten_first=2).valid_steps(T) == 2 * 4 + (T - 2)


def test_invalid_pattern_options_are_refused():
    with pytest.raises(ValueError, match="flatten_first"):
        get_pattern("delay", 4, flatten_first=-1)
    with pytest.raises(ValueError, match="one delay"):
        get_pattern("unroll", 3, groups=[0, 1, 1], delays=[0, 1, 2])
