"""Codebook patterns: round trips (property tests), step counts from the paper, causality facts."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_musicgen.lm.patterns import PATTERNS, get_pattern

SPECIAL = -1


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(PATTERNS), n_q=st.sampled_from([1, 2, 4, 8]), T=st.integers(0, 40),
       B=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_build_revert_round_trip(name, n_q, T, B, seed):
    p = get_pattern(name, n_q)
    codes = torch.randint(0, 1000, (B, n_q, T), generator=torch.Generator().manual_seed(seed))
    seq = p.build(codes, SPECIAL)
    assert seq.shape == (B, n_q, p.num_steps(T))
    values, mask = p.revert(seq, T)
    assert mask.all() and torch.equal(values, codes)
    assert p.revert(seq)[0].shape[-1] == T  # the frame count is recovered from the step count
    # every code appears exactly once; everything else is the special token
    assert int((seq != SPECIAL).sum()) == B * n_q * T


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(PATTERNS), T=st.integers(1, 20), extra=st.integers(1, 5), seed=st.integers(0, 999))
def test_revert_logits_and_partial_sequences(name, T, extra, seed):
    p = get_pattern(name, 4)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 50, (2, 4, T), generator=g)
    seq = p.build(codes, SPECIAL)
    logits = torch.randn(2, 4, seq.shape[-1], extra, generator=g)
    values, mask = p.revert(logits, T)
    steps = p.step_of(T)
    for k in range(4):  # logits of (k, t) come from the step that holds it
        for t in range(T):
            assert torch.equal(values[:, k, t], logits[:, k, steps[k, t]])
    cut = seq.shape[-1] // 2  # a partially generated sequence: later positions are not valid yet
    v, m = p.revert(seq[..., :cut], T)
    assert torch.equal(m, steps < cut)
    assert torch.equal(v[:, m], codes[:, m])


def test_step_counts_match_the_paper():
    counts = {name: get_pattern(name, 4).num_steps(1500) for name in PATTERNS}
    assert counts["parallel"] == 1500
    assert counts["delay"] == 1503 and counts["partial_delay"] == 1501  # "about 1500"
    assert counts["flatten"] == 6000 and counts["musiclm"] == 6000
    assert counts["partial_flatten"] == 3000
    assert counts["vall_e"] == 3000
    assert counts["coarse_first"] == 3002


def test_delay_layout_is_musicgens():
    codes = torch.arange(1, 13).view(1, 4, 3)
    seq = get_pattern("delay", 4).build(codes, 0)[0]
    assert seq.tolist() == [[1, 2, 3, 0, 0, 0], [0, 4, 5, 6, 0, 0], [0, 0, 7, 8, 9, 0], [0, 0, 0, 10, 11, 12]]


def test_orders():
    codes = torch.arange(8).view(1, 4, 2)
    # flatten: frame by frame, codebook by codebook
    assert get_pattern("flatten", 4).step_of(2).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # partial flatten: codebook 0 alone, then 1..3 together
    assert get_pattern("partial_flatten", 4).step_of(2).tolist() == [[0, 2], [1, 3], [1, 3], [1, 3]]
    # VALL-E: all of codebook 0 first, then the rest in parallel
    assert get_pattern("vall_e", 4).step_of(2).tolist() == [[0, 1], [2, 3], [2, 3], [2, 3]]
    # MusicLM: group (0, 1) flattened over all frames, then group (2, 3)
    assert get_pattern("musiclm", 4, group_by=2).step_of(2).tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert get_pattern("delay", 4, delays=[0, 2, 2, 5]).num_steps(10) == 15
    assert get_pattern("musiclm", 4).build(codes, -1).shape[-1] == 8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown pattern 'zigzag'"):
        get_pattern("zigzag", 4)
    with pytest.raises(ValueError, match="delays"):
        get_pattern("delay", 4, delays=[0, 1])
    with pytest.raises(ValueError, match="group_by"):
        get_pattern("musiclm", 4, group_by=3)
    with pytest.raises(ValueError, match="expected 4 codebooks"):
        get_pattern("delay", 4).build(torch.zeros(1, 3, 5, dtype=torch.long), 0)
