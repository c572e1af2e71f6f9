"""transformers' `EncodecModel` (e.g. facebook/encodec_32khz) -> CompressionModel.

The module trees match layer for layer, so the mapping is a renaming: codebooks lose their
`.codebook` level, the decoder's transposed convs are called `convtr`, and old-style weight-norm
tensors (`weight_g`/`weight_v`) become parametrizations (`original0`/`original1`).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from lightning_musicgen.codec.model import CodecConfig, CompressionModel
from lightning_musicgen.errors import CheckpointError, InputError
from lightning_musicgen.model_files.codec import save_codec


def codec_config_from_transformers(cfg) -> CodecConfig:
    """EncodecConfig -> CodecConfig (raises a one-line ValueError for what we do not support)."""
    if getattr(cfg, "norm_type", "weight_norm") != "weight_norm":
        raise CheckpointError(f"EnCodec norm_type {cfg.norm_type!r} is not supported (only weight_norm)")
    if getattr(cfg, "normalize", False) or getattr(cfg, "chunk_length_s", None):
        raise CheckpointError("EnCodec models with normalize=True or chunked encoding (the 48 kHz one) "
                              "are not supported")
    codebook_dim = getattr(cfg, "codebook_dim", None) or cfg.hidden_size
    if codebook_dim != cfg.hidden_size:
        raise CheckpointError(f"EnCodec codebook_dim {codebook_dim} != hidden_size {cfg.hidden_size} is not supported")
    return CodecConfig(
        sample_rate=cfg.sampling_rate, channels=cfg.audio_channels, dimension=cfg.hidden_size,
        n_filters=cfg.num_filters, n_residual_layers=cfg.num_residual_layers,
        ratios=tuple(cfg.upsampling_ratios), kernel_size=cfg.kernel_size, last_kernel_size=cfg.last_kernel_size,
        residual_kernel_size=cfg.residual_kernel_size, dilation_base=cfg.dilation_growth_rate,
        compress=cfg.compress, lstm_layers=cfg.num_lstm_layers, true_skip=not cfg.use_conv_shortcut,
        causal=cfg.use_causal_conv, norm="weight_norm", pad_mode=cfg.pad_mode,
        trim_right_ratio=cfg.trim_right_ratio, n_q=cfg.num_quantizers, card=cfg.codebook_size,
        kmeans_init=True)


def rename_transformers_key(key: str, convtr_prefixes: set[str]) -> str:
    key = key.replace(".codebook.", ".")
    key = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", key)
    key = re.sub(r"\.weight_v$", ".parametrizations.weight.original1", key)
    for prefix in convtr_prefixes:
        if key.startswith(prefix + ".conv."):
            return prefix + ".convtr." + key[len(prefix) + len(".conv."):]
    return key


def encodec_from_transformers(hf_model) -> CompressionModel:
    """A transformers EncodecModel (any weights) -> our CompressionModel with the same numbers."""
    config = codec_config_from_transformers(hf_model.config)
    model = CompressionModel(config)
    convtr = {name for name, m in model.named_modules() if hasattr(m, "convtr")}
    state = {rename_transformers_key(k, convtr): v.detach().clone()
             for k, v in hf_model.state_dict().items()}
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"EnCodec weights do not match the converted architecture: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != ours[k].shape:
            raise CheckpointError(f"EnCodec weight {k}: shape {list(v.shape)} != expected {list(ours[k].shape)}")
    model.load_state_dict(state)
    # transformers encodes at the first target bandwidth by default; so do we
    bandwidths = list(getattr(hf_model.config, "target_bandwidths", []) or [])
    if bandwidths:
        model.n_q = hf_model.quantizer.get_num_quantizers_for_bandwidth(bandwidths[0])
    return model.eval()


def convert_encodec(folder: Path, out: Path, tokenizer=None) -> Path:
    """`convert --from-hf FOLDER --out OUT` for model_type 'encodec' (tokenizer is unused)."""
    from transformers import EncodecModel
    try:
        hf_model = EncodecModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise InputError(f"{folder}: cannot load an EncodecModel ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    try:
        model = encodec_from_transformers(hf_model)
    except ValueError as exc:
        raise InputError(f"{folder}: {exc}") from exc
    with torch.no_grad():
        return save_codec(model, out)
