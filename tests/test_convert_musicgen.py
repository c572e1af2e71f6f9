"""convert --from-hf for MusicGen and MusicGen-melody: our logits equal transformers' (fp32, eval)."""
import pytest
import torch

from conftest import run_cli
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.lm.conditioners import packaged_minilm_path

transformers = pytest.importorskip("transformers")
TEXTS = ["80s pop track with bassy drums and synth", "calm piano", "a very long description of a rock "
         "song with loud guitars, heavy drums and a screaming singer"]
CARD, K, DIM = 16, 4, 32


def _configs(melody: bool):
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenMelodyConfig,
                              MusicgenMelodyDecoderConfig, T5Config)
    t5 = T5Config(vocab_size=30522, d_model=24, d_kv=8, num_heads=3, d_ff=48, num_layers=1, num_decoder_layers=1)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, num_residual_layers=1,
                        upsampling_ratios=[8, 5, 4, 4], codebook_size=CARD, hidden_size=8, num_lstm_layers=1,
                        target_bandwidths=[0.8], codebook_dim=8)
    dec_kw = dict(vocab_size=CARD, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                  num_codebooks=K, pad_token_id=CARD, bos_token_id=CARD, decoder_start_token_id=CARD)
    if melody:
        return MusicgenMelodyConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                                    decoder=MusicgenMelodyDecoderConfig(**dec_kw).to_dict(), num_chroma=12,
                                    chroma_length=20)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(),
                          decoder=MusicgenDecoderConfig(**dec_kw).to_dict())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True)


def _save(tmp_path, melody, tokenizer):
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    torch.manual_seed(0)
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    hf = cls(_configs(melody)).eval()
    with torch.no_grad():  # random init leaves some norms at 1/0: perturb everything
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path / ("hf_melody" if melody else "hf")
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf, folder


def _decoder_input(B, S):
    torch.manual_seed(1)
    from lightning_musicgen.lm.patterns import get_pattern
    codes = torch.randint(0, CARD, (B, K, S))
    seq = get_pattern("delay", K).build(codes, CARD)
    return torch.cat([torch.full((B, K, 1), CARD), seq[..., :-1]], dim=-1)


def test_musicgen_logits_match_transformers(tmp_path, tokenizer):
    from lightning_musicgen.convert.musicgen import convert_musicgen
    hf, folder = _save(tmp_path, False, tokenizer)
    out = convert_musicgen(folder, tmp_path / "musicgen.pt")
    lm, cond, codec, cfg = load_musicgen(out)
    assert (codec.n_q, codec.card, codec.sample_rate) == (K, CARD, 32000)
    wav = torch.randn(1, 1, 3200)
    with torch.no_grad():  # the embedded codec is transformers' audio encoder
        ref_codes = hf.audio_encoder.encode(wav, bandwidth=0.8).audio_codes[0]
        assert torch.equal(codec.encode(wav), ref_codes)
    assert cfg["conditioner"].fuse == "cross" and cfg["lm"].pattern_kwargs["delays"] == [0, 1, 2, 3]
    seq_in = _decoder_input(len(TEXTS), 12)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (tokens["attention_mask"] == 0).any()  # padding is exercised
    with torch.no_grad():
        ref = hf(**tokens, decoder_input_ids=seq_in.flatten(0, 1)).logits.view(len(TEXTS), K, -1, CARD)
        ours = lm(seq_in, cond(TEXTS))
        null = lm(seq_in, cond.null(TEXTS))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert (null - ours).abs().max() > 1e-3  # the null condition really is different


def test_musicgen_melody_logits_match_transformers(tmp_path, tokenizer):
    from lightning_musicgen.audio import ChromaExtractor
    hf, folder = _save(tmp_path, True, tokenizer)
    out = tmp_path / "melody.pt"
    res = run_cli("convert", "--from-hf", folder, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    lm, cond, _, cfg = load_musicgen(out, load_codec_model=False)
    assert cfg["conditioner"].fuse == "prepend" and not lm.cross_attention
    B = len(TEXTS)
    seq_in = _decoder_input(B, 10)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(2)
    wav = torch.randn(B, 1, 32000 * 2)
    chroma = ChromaExtractor(32000)(wav)
    with torch.no_grad():
        ref = hf(**tokens, input_features=chroma, decoder_input_ids=seq_in.flatten(0, 1)).logits
        ref = ref.view(B, K, -1, CARD)[:, :, -seq_in.shape[-1]:]
        ours = lm(seq_in, cond(TEXTS, melody=wav))
        # no melody: transformers' default chroma (one-hot on bin 0) equals our null melody
        ref_nomel = hf(**tokens, decoder_input_ids=seq_in.flatten(0, 1)).logits.view(B, K, -1, CARD)
        ours_nomel = lm(seq_in, cond(TEXTS))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_nomel, ref_nomel[:, :, -seq_in.shape[-1]:], atol=1e-4, rtol=0)


def test_converted_model_exports_to_a_folder_that_loads_offline_anywhere(tmp_path, own_tmp, tokenizer, one_thread):
    """A transformers MusicGen with its own random T5 -> convert -> export -> moved to another folder, the
    rest deleted: it loads with the hub offline and gives the converted model's logits (export keeps the
    T5 weights the source carried; neither folder refers outside itself, and neither says it does)."""
    import shutil
    from test_model_files import OFFLINE, offline_logits, reference_logits
    _, folder = _save(tmp_path, False, tokenizer)
    for verb, source, out in (("convert", "--from-hf", "converted"), ("export", "--ckpt", "model")):
        res = run_cli(verb, source, folder if verb == "convert" else tmp_path / "converted", "--out", tmp_path / out,
                      env=OFFLINE)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "refers outside itself" not in res.stdout + res.stderr
    assert (tmp_path / "model" / "text_encoder" / "model.safetensors").is_file()
    ref = reference_logits(tmp_path / "converted")
    moved = own_tmp / "elsewhere" / "model"
    shutil.move(tmp_path / "model", moved)
    shutil.rmtree(tmp_path / "converted"), shutil.rmtree(folder)
    got, res = offline_logits(moved, own_tmp / "logits.pt")
    assert "refers outside itself" not in res.stderr
    assert got.shape == (2, K, 12, CARD) and got.abs().max() > 0.1
    assert torch.equal(got, ref)


def test_convert_errors_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "musicgen"}')
    res = run_cli("convert", "--from-hf", tmp_path, "--out", tmp_path / "x.pt")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
