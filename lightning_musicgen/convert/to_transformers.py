"""Ours -> transformers: `MusicgenForConditionalGeneration`, `MusicgenMelodyForConditionalGeneration`
and `EncodecModel` folders (`export --format transformers`), the inverse of `convert --from-hf`.

Weights are renamed back (the self-attention qkv and cross-attention kv are split again) and the
configs are filled from ours. What transformers cannot express is refused with one line
(`NotExpressible`): a pattern other than delay (with delays 0..K-1, or the stereo pairs), RoPE or
other positions than sinusoidal with period 10000, biases, layer-norm eps other than 1e-5, a text
encoder outside transformers' text-encoding models, a projection where transformers has none (or
the reverse), a codec without weight norm, LSTM or an integral frame rate.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from lightning_musicgen.errors import UserError

DECODER = "decoder.model.decoder."
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_pytorch_tanh"}


class NotExpressible(UserError):
    """The target format (transformers, audiocraft) has no configuration for this model (the message
    says why, in one line). A UserError, hence also a ValueError."""


# ---- EnCodec ----------------------------------------------------------------------------------
def _bandwidth(k: int, frame_rate: int, nbits: int) -> float:
    """kbps that transformers maps back to exactly k codebooks."""
    return (k * frame_rate * nbits + 0.5) / 1000


def encodec_config(codec):
    """Our CodecConfig (+ the number of codebooks in use) -> transformers' EncodecConfig."""
    from transformers import EncodecConfig
    c = codec.config
    if c.norm != "weight_norm":
        raise NotExpressible(f"codec norm {c.norm!r}: transformers' EnCodec has weight_norm only here")
    if c.lstm_layers < 1:
        raise NotExpressible("codec without LSTM: transformers' EnCodec always has one")
    hop = math.prod(c.ratios)
    if c.sample_rate % hop:
        raise NotExpressible(f"codec frame rate {c.sample_rate}/{hop} is not an integer (transformers rounds it)")
    if c.card & (c.card - 1):
        raise NotExpressible(f"codebook size {c.card} is not a power of two (transformers' bandwidth arithmetic)")
    frame_rate, nbits = c.sample_rate // hop, int(math.log2(c.card))
    bandwidths = [_bandwidth(codec.n_q, frame_rate, nbits)]
    if codec.n_q != c.n_q:
        bandwidths.append(_bandwidth(c.n_q, frame_rate, nbits))
    return EncodecConfig(
        sampling_rate=c.sample_rate, audio_channels=c.channels, hidden_size=c.dimension, num_filters=c.n_filters,
        num_residual_layers=c.n_residual_layers, upsampling_ratios=list(c.ratios), norm_type="weight_norm",
        kernel_size=c.kernel_size, last_kernel_size=c.last_kernel_size, residual_kernel_size=c.residual_kernel_size,
        dilation_growth_rate=c.dilation_base, use_causal_conv=c.causal, pad_mode=c.pad_mode, compress=c.compress,
        num_lstm_layers=c.lstm_layers, trim_right_ratio=c.trim_right_ratio, codebook_size=c.card,
        codebook_dim=c.dimension, use_conv_shortcut=not c.true_skip, target_bandwidths=bandwidths,
        normalize=False, chunk_length_s=None, overlap=None)


def encodec_state(codec, hf_keys) -> dict[str, torch.Tensor]:
    """Our codec's weights under transformers' EncodecModel names."""
    from lightning_musicgen.convert.encodec import rename_transformers_key
    ours = codec.state_dict()
    convtr = {name for name, m in codec.named_modules() if hasattr(m, "convtr")}
    out = {}
    for key in hf_keys:
        src = rename_transformers_key(key, convtr)
        if src not in ours:
            raise NotExpressible(f"transformers' EnCodec weight {key} has no counterpart ({src})")
        out[key] = ours[src]
    return out


def codec_to_transformers(codec):
    """CompressionModel -> transformers EncodecModel with the same numbers."""
    from transformers import EncodecModel
    hf = EncodecModel(encodec_config(codec)).eval()
    _load_exact(hf, encodec_state(codec, hf.state_dict().keys()), "EnCodec")
    return hf


def _load_exact(hf, state: dict, what: str) -> None:
    expected = hf.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise NotExpressible(f"{what}: transformers expects weights we do not have, e.g. {missing[:3]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise NotExpressible(f"{what}: weight {k} has shape {list(v.shape)}, "
                                 f"transformers {list(expected[k].shape)}")
    hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)


# ---- MusicGen ---------------------------------------------------------------------------------
def lm_state_to_hf(state: dict, num_layers: int, n_q: int, cross_attention: bool) -> dict:
    """MusicGenLM weights -> transformers' decoder names (inverse of convert.musicgen.lm_state_from_hf)."""
    out = {}
    for k in range(n_q):
        out[f"{DECODER}embed_tokens.{k}.weight"] = state[f"emb.{k}.weight"]
        out[f"decoder.lm_heads.{k}.weight"] = state[f"heads.{k}.weight"]
    for i in range(num_layers):
        src, dst = f"transformer.layers.{i}.", f"{DECODER}layers.{i}."
        for p, w in zip("qkv", state[src + "self_attn.qkv.weight"].chunk(3)):
            out[dst + f"self_attn.{p}_proj.weight"] = w
        out[dst + "self_attn.out_proj.weight"] = state[src + "self_attn.out.weight"]
        pairs = {"self_attn_layer_norm": "norm_self", "final_layer_norm": "norm_ffn"}
        if cross_attention:
            pairs["encoder_attn_layer_norm"] = "norm_cross"
            out[dst + "encoder_attn.q_proj.weight"] = state[src + "cross_attn.q.weight"]
            k_w, v_w = state[src + "cross_attn.kv.weight"].chunk(2)
            out[dst + "encoder_attn.k_proj.weight"], out[dst + "encoder_attn.v_proj.weight"] = k_w, v_w
            out[dst + "encoder_attn.out_proj.weight"] = state[src + "cross_attn.out.weight"]
        for hf_name, ours in pairs.items():
            out[dst + f"{hf_name}.weight"], out[dst + f"{hf_name}.bias"] = \
                state[src + f"{ours}.weight"], state[src + f"{ours}.bias"]
        out[dst + "fc1.weight"] = state[src + "ffn.0.weight"]
        out[dst + "fc2.weight"] = state[src + "ffn.2.weight"]
    out[f"{DECODER}layer_norm.weight"], out[f"{DECODER}layer_norm.bias"] = state["out_norm.weight"], \
        state["out_norm.bias"]
    return out


def check_lm(lm, codec) -> int:
    """Refuse what transformers' MusicGen decoder cannot express; returns its audio_channels."""
    c = lm.config
    stereo = codec is not None and codec.channels == 1 and lm.n_q == 2 * codec.n_q
    delays = [k // 2 for k in range(lm.n_q)] if stereo else list(range(lm.n_q))
    if c.pattern != "delay" or lm.pattern.delays != delays:
        raise NotExpressible(f"pattern {c.pattern!r} {c.pattern_kwargs or ''}: transformers' MusicGen has only the "
                             f"delay pattern with delays {delays}")
    if c.positional != "sin" or c.max_period != 10000.0:
        raise NotExpressible(f"positions {c.positional!r} (max_period {c.max_period}): transformers' MusicGen "
                             "has sinusoidal positions with period 10000 only")
    if c.bias:
        raise NotExpressible("attention/FFN biases: transformers' MusicGen decoder has none")
    if c.norm_eps != 1e-5:
        raise NotExpressible(f"layer-norm eps {c.norm_eps}: transformers' MusicGen uses 1e-5")
    if c.activation not in ACTIVATIONS:
        raise NotExpressible(f"activation {c.activation!r} has no transformers name")
    if codec is None:
        raise NotExpressible("no codec recorded: transformers' MusicGen needs its audio encoder")
    if codec.card != lm.card:
        raise NotExpressible(f"codec card {codec.card} != LM card {lm.card}")
    return 2 if stereo else 1


def musicgen_to_transformers(lm, conditioner, codec):
    """Our LM + conditioner + codec -> transformers MusicGen (or MusicGen-melody) with equal numbers."""
    from transformers import (GenerationConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration)
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES
    channels = check_lm(lm, codec)
    text, melody = conditioner.text, conditioner.melody
    if text is None:
        raise NotExpressible("no text conditioner: transformers' MusicGen always has a text encoder")
    melody_model = melody is not None
    if melody_model != (conditioner.fuse == "prepend"):
        raise NotExpressible("transformers has text by cross-attention (MusicGen) or text + chroma prepended "
                             f"(MusicGen-melody); this model has fuse={conditioner.fuse!r}, melody={melody_model}")
    if melody_model and melody.fuse != "prepend":
        raise NotExpressible(f"melody fuse {melody.fuse!r}: transformers' MusicGen-melody prepends the chroma")
    text_cfg = text.encoder.config
    if text_cfg.model_type not in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:
        raise NotExpressible(f"text encoder type {text_cfg.model_type!r} is not a transformers text-encoding model")
    hidden = getattr(text_cfg, "hidden_size", None) or text_cfg.d_model
    has_proj = isinstance(text.proj, torch.nn.Linear)
    if has_proj != (hidden != lm.dim):
        raise NotExpressible(f"text projection {'present' if has_proj else 'absent'} with encoder width {hidden} "
                             f"and LM width {lm.dim}: transformers projects exactly when they differ")
    c = lm.config
    dec_kw = dict(vocab_size=lm.card, hidden_size=lm.dim, num_hidden_layers=c.num_layers,
                  num_attention_heads=c.num_heads, ffn_dim=c.ffn_dim or 4 * lm.dim,
                  activation_function=ACTIVATIONS[c.activation], dropout=c.dropout, attention_dropout=c.dropout,
                  activation_dropout=c.dropout, num_codebooks=lm.n_q, audio_channels=channels,
                  pad_token_id=lm.card, bos_token_id=lm.card, decoder_start_token_id=lm.card,
                  max_position_embeddings=2048, tie_word_embeddings=False)
    parts = dict(text_encoder=text_cfg.to_dict(), audio_encoder=encodec_config(codec).to_dict())
    if melody_model:
        m = melody
        if isinstance(m.proj, torch.nn.Linear) != (m.n_chroma != lm.dim):
            raise NotExpressible("chroma projection: transformers projects exactly when n_chroma != LM width")
        config = MusicgenMelodyConfig(**parts, decoder=MusicgenMelodyDecoderConfig(**dec_kw).to_dict(),
                                      num_chroma=m.n_chroma, chroma_length=m.chroma_length)
        hf = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(**parts, decoder=MusicgenDecoderConfig(**dec_kw).to_dict())
        hf = MusicgenForConditionalGeneration(config)
    hf.eval()
    state = lm_state_to_hf(lm.state_dict(), c.num_layers, lm.n_q, not melody_model)
    state.update({f"text_encoder.{k}": v for k, v in text.encoder.state_dict().items()})
    if has_proj:
        state["enc_to_dec_proj.weight"], state["enc_to_dec_proj.bias"] = text.proj.weight, text.proj.bias
    if melody_model and isinstance(melody.proj, torch.nn.Linear):
        state["audio_enc_to_dec_proj.weight"] = melody.proj.weight
        state["audio_enc_to_dec_proj.bias"] = melody.proj.bias
    state.update({f"audio_encoder.{k}": v for k, v in
                  encodec_state(codec, [k[len("audio_encoder."):] for k in hf.state_dict()
                                        if k.startswith("audio_encoder.")]).items()})
    _load_exact(hf, state, "MusicGen")
    hf.generation_config = GenerationConfig(decoder_start_token_id=lm.card, pad_token_id=lm.card,
                                            bos_token_id=lm.card, do_sample=True, top_k=250, guidance_scale=3.0,
                                            max_length=1500)
    return hf


def export_transformers(path: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Any of our checkpoints/folders -> a transformers `save_pretrained` folder (+ tokenizer)."""
    from lightning_musicgen.model_files.codec import load_codec
    from lightning_musicgen.model_files.files import model_kind
    from lightning_musicgen.model_files.read import load_musicgen
    out = Path(out)
    if model_kind(path) == "codec":
        hf = codec_to_transformers(load_codec(path, use_ema=use_ema))
        hf.save_pretrained(str(out))
        return out
    lm, conditioner, codec, _ = load_musicgen(path, use_ema=use_ema)
    hf = musicgen_to_transformers(lm, conditioner, codec)
    hf.save_pretrained(str(out))
    conditioner.text.tokenizer.save_pretrained(str(out))
    return out
