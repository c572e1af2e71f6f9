"""transformers' MusicgenForConditionalGeneration / MusicgenMelodyForConditionalGeneration -> our
MusicGen model folder (see `lightning_musicgen.model_files`).

Maps the decoder (embeddings, layers, final norm, heads), `enc_to_dec_proj`, the text encoder and
its tokenizer, the melody model's `audio_enc_to_dec_proj`, and the audio encoder (EnCodec, through
the EnCodec converter) into `MusicGenLM` + `ConditionProvider` + an embedded codec checkpoint.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from lightning_musicgen.errors import CheckpointError, InputError

DECODER = "decoder.model.decoder."


def lm_config_from_hf(dec, cross_attention: bool) -> dict:
    """transformers decoder config -> MusicGenLM kwargs."""
    if dec.pad_token_id != dec.vocab_size:
        raise CheckpointError(f"decoder pad_token_id {dec.pad_token_id} != vocab_size {dec.vocab_size}: "
                              "the special token must be the extra embedding row")
    K = dec.num_codebooks
    stereo = getattr(dec, "audio_channels", 1) == 2
    delays = [k // 2 for k in range(K)] if stereo else list(range(K))  # stereo: L/R pairs share a delay
    return dict(n_q=K, card=dec.vocab_size, dim=dec.hidden_size, num_heads=dec.num_attention_heads,
                num_layers=dec.num_hidden_layers, ffn_dim=dec.ffn_dim, activation=dec.activation_function,
                bias=False, dropout=0.0, positional="sin", max_period=10000.0, cross_attention=cross_attention,
                pattern="delay", pattern_kwargs={"delays": delays})


def lm_state_from_hf(sd: dict, num_layers: int, n_q: int, cross_attention: bool) -> dict:
    """Rename/fuse transformers' decoder weights into MusicGenLM's state dict."""
    out = {}
    for k in range(n_q):
        out[f"emb.{k}.weight"] = sd[f"{DECODER}embed_tokens.{k}.weight"]
        out[f"heads.{k}.weight"] = sd[f"decoder.lm_heads.{k}.weight"]
    for i in range(num_layers):
        src, dst = f"{DECODER}layers.{i}.", f"transformer.layers.{i}."
        out[dst + "self_attn.qkv.weight"] = torch.cat([sd[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[dst + "self_attn.out.weight"] = sd[src + "self_attn.out_proj.weight"]
        pairs = {"self_attn_layer_norm": "norm_self", "final_layer_norm": "norm_ffn"}
        if cross_attention:
            pairs["encoder_attn_layer_norm"] = "norm_cross"
            out[dst + "cross_attn.q.weight"] = sd[src + "encoder_attn.q_proj.weight"]
            out[dst + "cross_attn.kv.weight"] = torch.cat([sd[src + "encoder_attn.k_proj.weight"],
                                                           sd[src + "encoder_attn.v_proj.weight"]])
            out[dst + "cross_attn.out.weight"] = sd[src + "encoder_attn.out_proj.weight"]
        for a, b in pairs.items():
            out[dst + f"{b}.weight"], out[dst + f"{b}.bias"] = sd[src + f"{a}.weight"], sd[src + f"{a}.bias"]
        out[dst + "ffn.0.weight"] = sd[src + "fc1.weight"]
        out[dst + "ffn.2.weight"] = sd[src + "fc2.weight"]
    out["out_norm.weight"], out["out_norm.bias"] = sd[f"{DECODER}layer_norm.weight"], sd[f"{DECODER}layer_norm.bias"]
    return out


def _load_tokenizer(folder: Path, tokenizer: str | None):
    from transformers import AutoTokenizer
    where = Path(tokenizer) if tokenizer else folder
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as exc:
        raise InputError(f"{where}: no text tokenizer found ({type(exc).__name__}); "
                         "pass --tokenizer PATH (e.g. a t5-base folder)") from exc


def convert_musicgen(folder: Path, out: Path, tokenizer: str | None = None) -> Path:
    """Convert a `save_pretrained` folder of MusicGen or MusicGen-melody into `out`."""
    from lightning_musicgen.convert.encodec import encodec_from_transformers
    from lightning_musicgen.model_files.write import save_musicgen
    from lightning_musicgen.lm.conditioners import build_condition_provider
    from lightning_musicgen.lm.model import MusicGenLM
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    folder = Path(folder)
    kind = json.loads((folder / "config.json").read_text()).get("model_type")
    melody = kind == "musicgen_melody"
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    try:
        hf = cls.from_pretrained(str(folder), local_files_only=True).eval()
    except Exception as exc:
        raise InputError(f"{folder}: cannot load {cls.__name__} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    tok = _load_tokenizer(folder, tokenizer)
    dec = hf.config.decoder
    sd = hf.state_dict()
    lm = MusicGenLM(**lm_config_from_hf(dec, cross_attention=not melody))
    lm.load_state_dict(lm_state_from_hf(sd, dec.num_hidden_layers, dec.num_codebooks, not melody))

    text_cfg = hf.config.text_encoder
    text_hidden = getattr(text_cfg, "hidden_size", None) or text_cfg.d_model
    has_proj = "enc_to_dec_proj.weight" in sd
    conditioner_config = {
        "text": {"name": str(getattr(text_cfg, "_name_or_path", "") or text_cfg.model_type), "dim": dec.hidden_size,
                 "freeze": True, "word_dropout": 0.3, "project": has_proj},
        "melody": None, "fuse": "prepend" if melody else "cross", "cfg_dropout": 0.3,
    }
    if melody:
        conditioner_config["melody"] = {"dim": dec.hidden_size, "sample_rate": hf.config.audio_encoder.sampling_rate,
                                        "n_chroma": hf.config.num_chroma, "chroma_length": hf.config.chroma_length,
                                        "project": "audio_enc_to_dec_proj.weight" in sd}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok.save_pretrained(tmp / "tokenizer")
        files = {p.name: p.read_bytes() for p in (tmp / "tokenizer").iterdir() if p.is_file()}
        enc_cfg = text_cfg.to_diff_dict() | {"model_type": text_cfg.model_type}
        conditioner = build_condition_provider(conditioner_config, enc_cfg, files)
        cond_state = {f"text.encoder.{k}": v for k, v in hf.text_encoder.state_dict().items()}
        if has_proj:
            cond_state["text.proj.weight"], cond_state["text.proj.bias"] = sd["enc_to_dec_proj.weight"], sd["enc_to_dec_proj.bias"]
        if melody and "audio_enc_to_dec_proj.weight" in sd:
            cond_state["melody.proj.weight"] = sd["audio_enc_to_dec_proj.weight"]
            cond_state["melody.proj.bias"] = sd["audio_enc_to_dec_proj.bias"]
        conditioner.load_state_dict(cond_state)
        if text_hidden != dec.hidden_size and not has_proj:
            raise InputError(f"{folder}: text width {text_hidden} != decoder width {dec.hidden_size} "
                             "without enc_to_dec_proj")
        try:
            codec = encodec_from_transformers(hf.audio_encoder)
        except ValueError as exc:
            raise InputError(f"{folder}: audio encoder: {exc}") from exc
        stereo = getattr(dec, "audio_channels", 1) == 2
        codec.n_q = dec.num_codebooks // 2 if stereo else dec.num_codebooks  # what the LM models
        meta = {"source": str(folder), "model_type": kind, "sample_rate": hf.config.audio_encoder.sampling_rate,
                "frame_rate": getattr(hf.config.audio_encoder, "frame_rate", None),
                "audio_channels": getattr(dec, "audio_channels", 1),
                "max_duration": 30.0}  # the official models are trained on 30 s crops
        # the text encoder's weights come from this folder, so the model folder carries them
        return save_musicgen(out, lm, conditioner, conditioner_config, codec, text_encoder_carried=True,
                             max_duration=30.0, meta=meta)
