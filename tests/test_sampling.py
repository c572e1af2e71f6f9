"""lm/sampling.py against transformers' logits processors (the reference semantics)."""
import pytest
import torch
from transformers.generation.logits_process import (ClassifierFreeGuidanceLogitsProcessor,
                                                    LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from lightning_musicgen.lm.sampling import (SamplingParams, cfg_combine, make_generator,
                                            sample_next_token, top_k_filter, top_p_filter)


def _logits(rows=12, card=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, card, generator=g) * 3


@pytest.mark.parametrize("k", [1, 5, 50, 63])
def test_top_k_matches_transformers(k):
    x = _logits()
    assert torch.equal(top_k_filter(x, k), TopKLogitsWarper(k)(None, x))
    assert ((top_k_filter(x, k) > float("-inf")).sum(-1) == k).all()


def test_top_k_zero_and_full_are_identity():
    x = _logits()
    assert torch.equal(top_k_filter(x, 0), x) and torch.equal(top_k_filter(x, 64), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    x = _logits()
    ours = top_p_filter(x, p)
    assert torch.equal(ours, TopPLogitsWarper(p)(None, x))
    kept_mass = torch.where(ours > float("-inf"), x.softmax(-1), 0).sum(-1)
    assert (kept_mass >= p - 1e-6).all()  # the nucleus holds at least p of the mass


def test_cfg_matches_transformers():
    cond, uncond = _logits(seed=1), _logits(seed=2)
    ref = ClassifierFreeGuidanceLogitsProcessor(3.0)(torch.zeros(12, 1, dtype=torch.long),
                                                     torch.cat([cond, uncond]))
    assert torch.equal(cfg_combine(cond, uncond, 3.0), ref)
    assert torch.allclose(cfg_combine(cond, uncond, 1.0), cond, atol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 250, 0.0), (0.7, 10, 0.0), (1.3, 20, 0.8),
                                                     (1.0, 0, 0.9)])
def test_filter_chain_and_seeded_sampling_match_transformers(temperature, top_k, top_p):
    x = _logits(rows=16, card=300, seed=3)
    params = SamplingParams(top_k=top_k, top_p=top_p, temperature=temperature)
    chain = LogitsProcessorList()
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if 0 < top_p < 1:
        chain.append(TopPLogitsWarper(top_p))
    ref_scores = chain(None, x.clone())
    assert torch.equal(params.filter(x), ref_scores)
    # transformers: torch.manual_seed(seed) then multinomial(softmax(scores)) on [rows, card]
    torch.manual_seed(1234)
    ref_tokens = torch.multinomial(ref_scores.softmax(-1), 1).squeeze(1)
    ours = sample_next_token(x.view(4, 4, 300), params, make_generator(1234))
    assert ours.shape == (4, 4)
    assert torch.equal(ours.reshape(-1), ref_tokens)


def test_sampling_respects_top_k_support_and_seed():
    x = _logits(rows=8, card=100, seed=4)
    params = SamplingParams(top_k=3)
    allowed = torch.topk(x, 3).indices
    draws = torch.stack([sample_next_token(x, params, make_generator(s)) for s in range(50)])
    assert (draws[..., None] == allowed[None]).any(-1).all()
    assert len(set(map(tuple, draws.tolist()))) > 1  # different seeds, different draws
    assert torch.equal(sample_next_token(x, params, make_generator(7)), sample_next_token(x, params, make_generator(7)))


@pytest.mark.parametrize("params", [SamplingParams(top_k=1), SamplingParams(temperature=0.0)])
def test_greedy_is_argmax(params):
    x = _logits()
    assert params.greedy
    assert torch.equal(sample_next_token(x, params, make_generator(0)), x.argmax(-1))


def test_bf16_logits_are_sampled_in_float32():
    x = _logits().bfloat16()
    assert torch.equal(sample_next_token(x, SamplingParams(top_k=1)), x.float().argmax(-1))


@pytest.mark.parametrize("kw", [{"top_k": -1}, {"top_p": 1.5}, {"temperature": -0.1}])
def test_invalid_params_raise(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplingParams(**kw)
