"""MusicGenLM, transformer, conditioners, MusicGenModule: KV cache, masking, CFG dropout, training."""
import math

import numpy as np
import pytest
import torch

from lightning_musicgen.lm.conditioners import (ChromaConditioner, ConditionProvider, LMConditions,
                                                TextConditioner, build_condition_provider)
from lightning_musicgen.lm.model import MusicGenLM
from lightning_musicgen.lm.patterns import PATTERNS

CARD, K, DIM = 16, 4, 32


def tiny_lm(**kw):
    torch.manual_seed(0)
    return MusicGenLM(**{"n_q": K, "card": CARD, "dim": DIM, "num_heads": 4, "num_layers": 2, **kw}).eval()


def conditions(B, prefix=False, Lc=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    if prefix == "summed":  # a prefix and a time-aligned (summed) chroma of 4 frames
        return LMConditions(prefix=torch.randn(B, 3, DIM, generator=g), summed=torch.randn(B, 4, DIM, generator=g))
    if prefix:
        return LMConditions(prefix=torch.randn(B, 3, DIM, generator=g))
    mask = torch.ones(B, Lc, dtype=torch.bool)
    mask[0, 2:] = False
    return LMConditions(torch.randn(B, Lc, DIM, generator=g) * mask[..., None], mask)


@pytest.mark.parametrize("prefix,positional,chunk", [(False, "sin", 1), (True, "sin", 1), (False, "rope", 3),
                                                     (True, "sin_rope", 2), ("summed", "sin", 1), ("summed", "sin", 4)])
def test_kv_cache_logits_equal_full_forward(prefix, positional, chunk):
    lm = tiny_lm(cross_attention=not prefix, positional=positional)
    B, T = 3, 9
    cond = conditions(B, prefix)
    codes = torch.randint(0, CARD, (B, K, T))
    seq = lm.shift_right(lm.pattern.build(codes, lm.special_token))
    with torch.no_grad():
        full = lm(seq, cond)
        cache = lm.make_cache(B, seq.shape[-1], cond)
        calls = []
        if not prefix:  # cross-attention K/V are projected once per generation
            attn = lm.transformer.layers[0].cross_attn
            original = attn.project_kv
            attn.project_kv = lambda c: (calls.append(1), original(c))[1]
        steps = [lm(seq[..., s:s + chunk], cond, cache) for s in range(0, seq.shape[-1], chunk)]
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-5, rtol=0)
    assert len(calls) == (0 if prefix else 1)
    with pytest.raises(RuntimeError, match="KV cache overflow"):
        lm(seq[..., :1], cond, cache)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_teacher_forced_logits_only_see_the_past(pattern):
    """compute_logits[b, k, t] must not change when a code at the same or a later step changes."""
    lm = tiny_lm(pattern=pattern)
    B, T = 1, 5
    cond = conditions(B)
    codes = torch.randint(0, CARD, (B, K, T))
    steps = lm.pattern.step_of(T)
    with torch.no_grad():
        base, valid = lm.compute_logits(codes, cond)
        assert valid.all() and base.shape == (B, K, T, CARD)
        k, t = 1, 2
        changed = codes.clone()
        changed[0, k, t] = (codes[0, k, t] + 1) % CARD
        other, _ = lm.compute_logits(changed, cond)
    same = steps <= steps[k, t]
    assert torch.equal(other[0][same], base[0][same])
    assert (other[0][~same] - base[0][~same]).abs().amax() > 0  # later steps do see it


def test_loss_ignores_padding_and_invalid_pattern_positions():
    lm = tiny_lm()
    B, T = 2, 8
    cond = conditions(B)
    codes = torch.randint(0, CARD, (B, K, T))
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, 5:] = False
    loss, per_cb = lm.loss(codes, cond, pad)
    garbage = codes.clone()
    garbage[1, :, 5:] = torch.randint(0, CARD, (K, 3))
    loss2, _ = lm.loss(garbage, cond, pad)
    assert torch.equal(loss, loss2)  # padded codes are neither targets nor inputs
    # gradients reach only the logits at steps that hold a real code
    captured = {}
    def keep(module, inputs, out):
        out.retain_grad()
        captured["logits"] = out

    hook = lm.register_forward_hook(keep)
    lm.loss(codes, cond, pad)[0].backward()
    hook.remove()
    grad = captured["logits"].grad.abs().sum(-1)  # [B, K, S]
    holds = torch.zeros_like(grad, dtype=torch.bool)
    steps = lm.pattern.step_of(T)
    for b in range(B):
        for k in range(K):
            holds[b, k, steps[k][pad[b]]] = True
    assert (grad[~holds] == 0).all() and (grad[holds] > 0).all()
    # per-codebook CE is the mean over valid positions, computed independently here
    logits, valid = lm.compute_logits(codes, cond, pad)
    for k in range(K):
        ce = torch.nn.functional.cross_entropy(logits[:, k][valid[:, k]], codes[:, k][valid[:, k]])
        assert per_cb[k].item() == pytest.approx(ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(per_cb.mean().item())


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        lm = tiny_lm(gradient_checkpointing=ckpt).train()
        codes = torch.randint(0, CARD, (2, K, 6), generator=torch.Generator().manual_seed(3))
        lm.loss(codes, conditions(2))[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in lm.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def minilm_text():
    return TextConditioner("minilm", dim=DIM, word_dropout=0.3)


def test_text_conditioner_masks_padding_and_empty_text(minilm_text):
    minilm_text.eval()
    emb, mask = minilm_text(["a short one", "a much longer description of some music", ""])
    assert emb.shape[:2] == mask.shape and emb.shape[-1] == DIM
    assert mask[0].sum() < mask[1].sum() and not mask[2].any()
    assert (emb[~mask] == 0).all() and (emb[mask].abs().sum(-1) > 0).all()
    assert not any(p.requires_grad for p in minilm_text.encoder.parameters())  # frozen by default
    assert minilm_text.proj.weight.requires_grad


def test_word_dropout_rate(minilm_text):
    import random
    random.seed(0)
    minilm_text.train()
    words = [f"w{i}" for i in range(4000)]
    kept = len(minilm_text.drop_words(" ".join(words)).split())
    assert abs(kept / len(words) - 0.7) < 0.03
    minilm_text.eval()


def test_word_dropout_is_the_data_layers_and_follows_the_torch_seed(minilm_text):
    from lightning_musicgen.data.text import word_dropout
    text = " ".join(f"w{i}" for i in range(200))
    ours = minilm_text.drop_words(text, np.random.default_rng(5))
    assert ours == word_dropout(text, minilm_text.word_dropout, np.random.default_rng(5)) != text
    torch.manual_seed(3)
    first = minilm_text.drop_words(text)
    torch.manual_seed(3)
    assert minilm_text.drop_words(text) == first
    assert minilm_text.drop_words(text) != first


def test_cfg_dropout_rates_and_null_conditions(minilm_text):
    import random
    random.seed(0)
    torch.manual_seed(0)
    provider = ConditionProvider(minilm_text, ChromaConditioner(DIM, chroma_length=4), fuse="prepend",
                                 cfg_dropout=0.3, attribute_dropout={"melody": 0.5}).train()
    n = 2000
    per_batch = [provider.drop_masks(4) for _ in range(n)]
    batch_rate = sum(bool(d["text"].all()) for d in per_batch) / n
    assert all(d["text"].all() or not d["text"].any() for d in per_batch)  # whole batch at once
    assert abs(batch_rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    melody_rate = torch.stack([d["melody"] for d in per_batch]).float().mean().item()
    assert abs(melody_rate - (0.3 + 0.7 * 0.5)) < 0.03  # CFG drop or its own dropout
    provider.cfg_per_sample, provider.attribute_dropout = True, {}
    masks = torch.stack([provider.drop_masks(8)["text"] for _ in range(500)])
    assert abs(masks.float().mean().item() - 0.3) < 0.03
    assert 0 < masks.float().mean(dim=1).std()  # per sample: batches are mixed
    # dropped samples get exactly the null conditions
    provider.eval()
    texts = ["jazzy piano", "loud drums and guitars"]
    wav = torch.randn(2, 1, 32000)
    drop = {"text": torch.tensor([True, False]), "melody": torch.tensor([True, False])}
    mixed = provider(texts, melody=wav, drop=drop)
    null = provider.null(texts)
    full = provider(texts, melody=wav)
    assert torch.equal(mixed.prefix[0], null.prefix[0]) and torch.equal(mixed.prefix[1], full.prefix[1])
    assert not torch.equal(full.prefix[0], null.prefix[0])
    assert (null.prefix[:, 4:] == 0).all()  # null text = zeros after the chroma frames


def test_time_aligned_melody_is_summed_not_prepended(minilm_text):
    """melody fuse input_interpolate: the chroma reaches the LM as `summed` (no prefix), dropped melodies
    as the null chroma; MelodyConfig names a bad fuse in one line."""
    from lightning_musicgen.errors import ConfigError
    from lightning_musicgen.lm.conditioners import MelodyConfig
    minilm_text.eval()
    provider = ConditionProvider(minilm_text, ChromaConditioner(DIM, chroma_length=4, fuse="input_interpolate"),
                                 fuse="cross").eval()
    wav = torch.randn(2, 1, 32000)
    full = provider(["a", "b"], melody=wav)
    assert full.prefix is None and full.summed.shape == (2, 4, DIM) and full.prefix_len == 0
    null = provider.null(["a", "b"])
    assert (provider.melody.null_chroma(2) == 0).all()  # no melody, not the note C (bin 0)
    assert torch.equal(null.summed, provider.melody(torch.zeros(2, 1, 12)))
    assert not torch.equal(full.summed, null.summed) and full.cat(null).summed.shape == (4, 4, DIM)
    with pytest.raises(ConfigError, match="melody.fuse 'sum'") as err:
        MelodyConfig(fuse="sum")
    assert "\n" not in str(err.value)


def test_cross_null_condition_zeroes_cross_attention(minilm_text):
    minilm_text.eval()
    provider = ConditionProvider(minilm_text, fuse="cross").eval()
    lm = tiny_lm()
    null = provider.null(["anything at all", "x"])
    assert not null.cross_mask.any() and (null.cross == 0).all()
    seq = torch.full((2, K, 4), CARD)
    with torch.no_grad():
        for layer in lm.transformer.layers:  # a null condition must add exactly nothing
            out = layer.cross_attn(torch.randn(2, 4, DIM), null.cross, null.cross_mask)
            assert (out == 0).all()
        both = provider(["anything at all", "x"]).cat(null)
        assert both.batch_size == 4 and lm(torch.cat([seq, seq]), both).shape == (4, K, 4, CARD)


def test_configs_from_dicts_name_the_unknown_key_in_one_line():
    from lightning_musicgen.codec.model import CodecConfig
    from lightning_musicgen.errors import ConfigError
    from lightning_musicgen.lm.model import LMConfig
    for build, what in ((LMConfig.from_dict, "lm config"), (CodecConfig.from_dict, "codec config")):
        with pytest.raises(ConfigError, match=rf"^{what}: unknown key\(s\) \['dimm'\] \(known: \[") as err:
            build({"dimm": 8})
        assert "\n" not in str(err.value)
    assert LMConfig.from_dict({"dim": 64, "num_heads": 4}).dim == 64


def test_build_condition_provider_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \[.txt.\]"):
        build_condition_provider({"txt": {}})


def test_t5_folder_text_encoder_and_missing_folder(tmp_path, minilm_text):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=30522, d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=1)).eval()
    t5.save_pretrained(tmp_path / "t5")
    minilm_text.tokenizer.save_pretrained(tmp_path / "t5")
    cond = TextConditioner(str(tmp_path / "t5"), dim=DIM).eval()
    assert isinstance(cond.encoder, T5EncoderModel) and isinstance(cond.proj, torch.nn.Linear)
    tokens = cond.tokenize(["hello world", "a longer text here"])
    emb, mask = cond(["hello world", "a longer text here"])
    with torch.no_grad():
        ref = cond.proj(t5(**tokens).last_hidden_state) * tokens["attention_mask"][..., None]
    torch.testing.assert_close(emb, ref)
    with pytest.raises(FileNotFoundError, match="text encoder './nowhere'"):
        TextConditioner("./nowhere", dim=DIM)
