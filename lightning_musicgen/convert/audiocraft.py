"""Ours <-> audiocraft: `export --format audiocraft` and `convert --from-audiocraft PATH`.

audiocraft's files are torch pickles of a dict {"best_state": state_dict, "xp.cfg": the experiment
config as an OmegaConf YAML string, "version", "exported": True}: `state_dict.bin` for the LM
(read by `audiocraft.models.loaders.load_lm_model`, built by `builders.get_lm_model(cfg)`) and
`compression_state_dict.bin` for the codec (`load_compression_model`, `get_compression_model`).
A solver checkpoint `checkpoint.th` holds {"best_state": {"model": ...}, "xp.cfg": DictConfig, ...}.
The official model repos' `compression_state_dict.bin` may only name a pretrained codec
({"pretrained": "facebook/encodec_32khz"}): convert that one with `convert --from-hf` and pass
it as `--codec`.

Weights map one to one (ours -> audiocraft): emb.k -> emb.k; transformer.layers.i.{norm_self,
norm_cross, norm_ffn} -> {norm1, norm_cross, norm2}; self_attn.qkv -> self_attn.in_proj_weight;
cross_attn.q + cross_attn.kv -> cross_attention.in_proj_weight; *.out -> *.out_proj; ffn.0/2 ->
linear1/2; heads.k -> linears.k; the text projection -> condition_provider.conditioners.description
.output_proj (audiocraft always projects: an identity when we do not); codec convs gain the
Streamable wrappers' level (`conv.conv`, `convtr.convtr`), weight norm is weight_g/weight_v,
codebooks live under quantizer.vq.layers.k._codebook.

Supported: text-to-music models (T5 text by cross-attention) with the delay or parallel pattern,
and EnCodec codecs with weight norm. audiocraft's cross-attention does not mask padded text
positions (they hold zero vectors); ours does, so logits agree where a batch's texts need no
padding. Melody (chroma_stem) models are refused with one line.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from lightning_musicgen.convert.to_transformers import NotExpressible
from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError, InputError

T5_NAMES = ("t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b", "google/flan-t5-small", "google/flan-t5-base",
            "google/flan-t5-large", "google/flan-t5-xl", "google/flan-t5-xxl")
LM_FILE, CODEC_FILE = "state_dict.bin", "compression_state_dict.bin"


# ---- codec ------------------------------------------------------------------------------------
def codec_key_to_audiocraft(key: str) -> str:
    key = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", key)
    key = re.sub(r"\.conv\.(bias|weight)$", r".conv.conv.\1", key)
    key = re.sub(r"\.convtr\.(bias|weight)$", r".convtr.convtr.\1", key)
    key = re.sub(r"\.conv\.parametrizations\.weight\.original([01])$",
                 lambda m: ".conv.conv.weight_" + "gv"[int(m.group(1))], key)
    key = re.sub(r"\.convtr\.parametrizations\.weight\.original([01])$",
                 lambda m: ".convtr.convtr.weight_" + "gv"[int(m.group(1))], key)
    return re.sub(r"^quantizer\.layers\.(\d+)\.", r"quantizer.vq.layers.\1._codebook.", key)


def codec_cfg(codec) -> dict:
    c = codec.config
    if c.norm != "weight_norm":
        raise NotExpressible(f"codec norm {c.norm!r}: only weight_norm codecs are exported to audiocraft")
    if c.sample_rate % codec.hop_length:
        raise NotExpressible(f"codec frame rate {c.sample_rate}/{codec.hop_length} is not an integer")
    seanet = dict(dimension=c.dimension, channels=c.channels, causal=c.causal, n_filters=c.n_filters,
                  n_residual_layers=c.n_residual_layers, ratios=list(c.ratios), activation="ELU",
                  activation_params={"alpha": 1.0}, norm="weight_norm", norm_params={}, kernel_size=c.kernel_size,
                  last_kernel_size=c.last_kernel_size, residual_kernel_size=c.residual_kernel_size,
                  dilation_base=c.dilation_base, pad_mode=c.pad_mode, true_skip=c.true_skip, compress=c.compress,
                  lstm=c.lstm_layers, disable_norm_outer_blocks=0, encoder={},
                  decoder={"trim_right_ratio": c.trim_right_ratio})
    rvq = dict(n_q=c.n_q, q_dropout=c.q_dropout, bins=c.card, decay=c.decay, kmeans_init=c.kmeans_init,
               kmeans_iters=c.kmeans_iters, threshold_ema_dead_code=c.threshold_ema_dead_code,
               orthogonal_reg_weight=0.0, orthogonal_reg_active_codes_only=False, orthogonal_reg_max_codes=None)
    return {"compression_model": "encodec", "sample_rate": c.sample_rate, "channels": c.channels,
            "device": "cpu", "dtype": "float32",
            "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": c.sample_rate,
                        "channels": c.channels, "causal": c.causal, "renormalize": False},
            "seanet": seanet, "rvq": rvq}


def codec_package(codec) -> dict:
    from omegaconf import OmegaConf
    state = {codec_key_to_audiocraft(k): v.detach().cpu().clone() for k, v in codec.state_dict().items()}
    return {"best_state": state, "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(codec_cfg(codec))),
            "version": "1.3.0", "exported": True}


def codec_from_audiocraft(cfg, state: dict, source: str):
    from lightning_musicgen.codec.model import CodecConfig, CompressionModel
    if cfg.get("compression_model") != "encodec":
        raise NotExpressible(f"{source}: compression_model {cfg.get('compression_model')!r} is not encodec")
    s, q, e = cfg["seanet"], cfg["rvq"], cfg["encodec"]
    if s.get("norm") != "weight_norm" or s.get("disable_norm_outer_blocks", 0) or e.get("renormalize", False) \
            or s.get("activation", "ELU") != "ELU":
        raise NotExpressible(f"{source}: only ELU + weight-norm EnCodec without renormalization is supported")
    config = CodecConfig(
        sample_rate=e["sample_rate"], channels=e["channels"], dimension=s["dimension"], n_filters=s["n_filters"],
        n_residual_layers=s["n_residual_layers"], ratios=tuple(s["ratios"]), kernel_size=s["kernel_size"],
        last_kernel_size=s["last_kernel_size"], residual_kernel_size=s["residual_kernel_size"],
        dilation_base=s["dilation_base"], compress=s["compress"], lstm_layers=s["lstm"], true_skip=s["true_skip"],
        causal=e.get("causal", s.get("causal", False)), norm="weight_norm", pad_mode=s["pad_mode"],
        trim_right_ratio=(s.get("decoder") or {}).get("trim_right_ratio", 1.0), n_q=q["n_q"], card=q["bins"],
        decay=q["decay"], kmeans_init=q["kmeans_init"], kmeans_iters=q["kmeans_iters"],
        threshold_ema_dead_code=q["threshold_ema_dead_code"], q_dropout=q.get("q_dropout", False))
    model = CompressionModel(config)
    mapping = {codec_key_to_audiocraft(k): k for k in model.state_dict()}
    _load_renamed(model, state, mapping, source)
    return model


def _load_renamed(model, state: dict, mapping: dict[str, str], source: str) -> None:
    """state (audiocraft names) -> model via mapping {audiocraft name: our name}; exact."""
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match the converted architecture (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.load_state_dict({ours: state[theirs] for theirs, ours in mapping.items()})


# ---- LM -----------------------------------------------------------------------------------------
def lm_state_to_audiocraft(lm, conditioner) -> dict:
    out = {_to_audiocraft(k): v for k, v in lm.state_dict().items()
           if ".cross_attn.q." not in k and ".cross_attn.kv." not in k}
    for i, layer in enumerate(lm.transformer.layers):
        if layer.cross_attn is not None:
            p = f"transformer.layers.{i}.cross_attention."
            out[p + "in_proj_weight"] = torch.cat([layer.cross_attn.q.weight, layer.cross_attn.kv.weight])
            if layer.cross_attn.q.bias is not None:
                out[p + "in_proj_bias"] = torch.cat([layer.cross_attn.q.bias, layer.cross_attn.kv.bias])
    text = conditioner.text
    proj = "condition_provider.conditioners.description.output_proj."
    if isinstance(text.proj, torch.nn.Linear):
        out[proj + "weight"], out[proj + "bias"] = text.proj.weight, text.proj.bias
    else:  # audiocraft always projects: the identity is exact
        out[proj + "weight"], out[proj + "bias"] = torch.eye(lm.dim), torch.zeros(lm.dim)
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def lm_cfg(lm, conditioner, max_duration: float) -> dict:
    c = lm.config
    text = conditioner.text
    if conditioner.melody is not None or text is None or conditioner.fuse != "cross":
        raise NotExpressible("only text-to-music models (T5 text by cross-attention) are exported to audiocraft; "
                             "this one has melody or prepended conditions")
    if text.encoder.config.model_type != "t5" or Path(str(text.name)).name not in {n.split("/")[-1] for n in T5_NAMES}:
        raise NotExpressible(f"text encoder {text.name!r}: audiocraft loads T5 by one of the names "
                             f"{', '.join(T5_NAMES)}")
    name = next(n for n in T5_NAMES if n.split("/")[-1] == Path(str(text.name)).name)
    if c.pattern == "delay":
        pattern = {"modeling": "delay", "delay": {"delays": list(lm.pattern.delays), "flatten_first": 0,
                                                  "empty_initial": 0}}
    elif c.pattern == "parallel":
        pattern = {"modeling": "parallel", "parallel": {"empty_initial": 0}}
    else:
        raise NotExpressible(f"pattern {c.pattern!r}: exported to audiocraft are delay and parallel")
    ffn = c.ffn_dim or 4 * c.dim
    if ffn % c.dim:
        raise NotExpressible(f"ffn_dim {ffn} is not a multiple of dim {c.dim} (audiocraft's hidden_scale)")
    if c.norm_eps != 1e-5:
        raise NotExpressible(f"layer-norm eps {c.norm_eps}: audiocraft uses 1e-5")
    if c.activation != "gelu":
        raise NotExpressible(f"activation {c.activation!r}: exported to audiocraft is gelu")
    transformer_lm = dict(
        dim=c.dim, num_heads=c.num_heads, num_layers=c.num_layers, hidden_scale=ffn // c.dim, n_q=c.n_q,
        card=c.card, dropout=c.dropout, emb_lr=None, activation="gelu", norm_first=True, bias_ff=c.bias,
        bias_attn=c.bias, bias_proj=False, past_context=None, causal=True, custom=True, memory_efficient=False,
        attention_as_float32=False, layer_scale=None, positional_embedding=c.positional, xpos=False,
        checkpointing="none", weight_init=None, depthwise_init=None, zero_bias_init=False, norm="layer_norm",
        cross_attention=True, qk_layer_norm=False, qk_layer_norm_cross=False, attention_dropout=None,
        kv_repeat=1, two_step_cfg=False, max_period=c.max_period, positional_scale=1.0)
    return {"lm_model": "transformer_lm", "device": "cpu", "dtype": "float32", "solver": "musicgen",
            "sample_rate": None, "channels": None, "transformer_lm": transformer_lm, "codebooks_pattern": pattern,
            "dataset": {"segment_duration": float(max_duration)},
            "classifier_free_guidance": {"training_dropout": conditioner.cfg_dropout, "inference_coef": 3.0},
            "attribute_dropout": {"text": {"description": conditioner.attribute_dropout.get("text", 0.0)}},
            "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                      "prepend": [], "cross": ["description"], "input_interpolate": []},
            "conditioners": {"description": {"model": "t5", "t5": {"name": name, "finetune": not text.freeze,
                                                                   "word_dropout": text.word_dropout,
                                                                   "normalize_text": False}}}}


def lm_package(lm, conditioner, max_duration: float = 30.0, sample_rate: int | None = None,
               channels: int | None = None) -> dict:
    from omegaconf import OmegaConf
    cfg = lm_cfg(lm, conditioner, max_duration)
    cfg["sample_rate"], cfg["channels"] = sample_rate, channels
    return {"best_state": lm_state_to_audiocraft(lm, conditioner), "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
            "version": "1.3.0", "exported": True}


def export_audiocraft(path, out, use_ema: bool = True) -> Path:
    """Our checkpoint/folder -> OUT/state_dict.bin (+ OUT/compression_state_dict.bin)."""
    from lightning_musicgen.model_files.codec import load_codec
    from lightning_musicgen.model_files.files import model_kind
    from lightning_musicgen.model_files.read import load_musicgen
    out = Path(out)
    if model_kind(path) == "codec":
        package = codec_package(load_codec(path, use_ema=use_ema))
        out.mkdir(parents=True, exist_ok=True)
        torch.save(package, out / CODEC_FILE)
        return out
    lm, conditioner, codec, info = load_musicgen(path, use_ema=use_ema)
    lm_pkg = lm_package(lm, conditioner, info["max_duration"], codec.sample_rate if codec else None,
                        codec.channels if codec else None)
    codec_pkg = codec_package(codec) if codec is not None else None
    out.mkdir(parents=True, exist_ok=True)
    torch.save(lm_pkg, out / LM_FILE)
    if codec_pkg is not None:
        torch.save(codec_pkg, out / CODEC_FILE)
    return out


# ---- import -----------------------------------------------------------------------------------
def read_package(path: Path) -> tuple[dict, dict]:
    """An audiocraft file -> (cfg as a plain dict, best_state)."""
    from omegaconf import DictConfig, OmegaConf
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=False)  # solver checkpoints pickle a DictConfig
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable audiocraft file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{path}: not an audiocraft package (a dict with 'best_state' and 'xp.cfg')")
    if "pretrained" in pkg:
        raise CheckpointError(f"{path}: names the pretrained codec {pkg['pretrained']!r} instead of holding it; "
                              "convert that one with `convert --from-hf` and pass it with --codec")
    if "xp.cfg" not in pkg or "best_state" not in pkg:
        raise CheckpointError(f"{path}: not an audiocraft package (keys {sorted(pkg)[:6]}; "
                              "expected best_state, xp.cfg)")
    cfg = pkg["xp.cfg"]
    cfg = OmegaConf.create(cfg) if isinstance(cfg, (str, dict)) else cfg
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    state = pkg["best_state"]
    if pkg.get("fsdp_best_state"):
        state = pkg["fsdp_best_state"]
    if isinstance(state, dict) and "model" in state and not torch.is_tensor(state["model"]):
        state = state["model"]  # a solver checkpoint
    return cfg, state


def lm_from_audiocraft(cfg: dict, state: dict, source: str, text_encoder: str | None = None):
    """audiocraft LM cfg + state -> (MusicGenLM, ConditionProvider, ConditionerConfig, max_duration)."""
    from lightning_musicgen.lm.conditioners import ConditionerConfig, TextConfig, build_condition_provider
    from lightning_musicgen.lm.model import LMConfig, MusicGenLM
    t = cfg["transformer_lm"]
    fuser, conds = cfg.get("fuser", {}), cfg.get("conditioners") or {}
    if set(conds) != {"description"} or conds["description"].get("model") != "t5" \
            or fuser.get("cross") != ["description"]:
        raise NotExpressible(f"{source}: only text-to-music models (T5 description by cross-attention) are "
                             f"converted; conditioners {sorted(conds)}")
    if fuser.get("cross_attention_pos_emb", False):
        raise NotExpressible(f"{source}: fuser.cross_attention_pos_emb=true is not supported")
    checks = {"norm_first": True, "bias_proj": False, "norm": "layer_norm", "layer_scale": None,
              "qk_layer_norm": False, "kv_repeat": 1, "positional_scale": 1.0}
    for key, want in checks.items():
        if t.get(key, want) != want:
            raise NotExpressible(f"{source}: transformer_lm.{key}={t.get(key)!r} is not supported (needs {want!r})")
    if t.get("bias_ff", True) != t.get("bias_attn", True):
        raise NotExpressible(f"{source}: bias_ff != bias_attn is not supported")
    pat = cfg["codebooks_pattern"]
    if pat["modeling"] == "delay":
        d = pat.get("delay") or {}
        if d.get("flatten_first", 0) or d.get("empty_initial", 0):
            raise NotExpressible(f"{source}: delay pattern with flatten_first/empty_initial is not supported")
        pattern, kwargs = "delay", {"delays": list(d.get("delays") or range(t["n_q"]))}
    elif pat["modeling"] == "parallel" and not (pat.get("parallel") or {}).get("empty_initial", 0):
        pattern, kwargs = "parallel", {}
    else:
        raise NotExpressible(f"{source}: pattern {pat['modeling']!r} is not supported (delay, parallel)")
    lm = MusicGenLM(LMConfig(n_q=t["n_q"], card=t["card"], dim=t["dim"], num_heads=t["num_heads"],
                             num_layers=t["num_layers"], ffn_dim=int(t.get("hidden_scale", 4) * t["dim"]),
                             activation=t.get("activation", "gelu"), bias=bool(t.get("bias_ff", True)),
                             dropout=float(t.get("dropout", 0.0)), positional=t.get("positional_embedding", "sin"),
                             max_period=float(t.get("max_period", 10000.0)), cross_attention=True,
                             pattern=pattern, pattern_kwargs=kwargs))
    t5 = conds["description"]["t5"]
    cfg_drop = (cfg.get("classifier_free_guidance") or {}).get("training_dropout", 0.3)
    att = ((cfg.get("attribute_dropout") or {}).get("text") or {}).get("description", 0.0)
    cond_cfg = ConditionerConfig(
        text=TextConfig(name=t5["name"], dim=t["dim"], freeze=not t5.get("finetune", False),
                        word_dropout=float(t5.get("word_dropout", 0.0)), project=True),
        fuse="cross", cfg_dropout=float(cfg_drop), attribute_dropout={"text": float(att)} if att else None)
    conditioner = build_condition_provider(cond_cfg, text_encoder_path=text_encoder)
    expected = lm_state_to_audiocraft(lm, conditioner)  # audiocraft's names for this architecture
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: LM weights do not match the converted architecture (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    lm_state = {k: state[_to_audiocraft(k)] for k in lm.state_dict() if ".cross_attn.q." not in k
                and ".cross_attn.kv." not in k}
    for i in range(len(lm.transformer.layers)):
        src, dst = f"transformer.layers.{i}.cross_attention.in_proj_", f"transformer.layers.{i}.cross_attn."
        for kind in ("weight", "bias"):
            if src + kind in state:
                lm_state[dst + "q." + kind], lm_state[dst + "kv." + kind] = state[src + kind].split(
                    [lm.dim, 2 * lm.dim])
    lm.load_state_dict(lm_state)
    proj = "condition_provider.conditioners.description.output_proj."
    conditioner.text.proj.load_state_dict({"weight": state[proj + "weight"], "bias": state[proj + "bias"]})
    max_duration = float((cfg.get("dataset") or {}).get("segment_duration") or 30.0)
    return lm, conditioner, cond_cfg, max_duration


def _to_audiocraft(k: str) -> str:
    """One MusicGenLM weight name -> audiocraft's LMModel name (the cross-attention q/kv are fused separately)."""
    for ours, theirs in ((".norm_self.", ".norm1."), (".norm_ffn.", ".norm2."), (".ffn.0.", ".linear1."),
                         (".ffn.2.", ".linear2."), (".self_attn.qkv.weight", ".self_attn.in_proj_weight"),
                         (".self_attn.qkv.bias", ".self_attn.in_proj_bias"),
                         (".self_attn.out.", ".self_attn.out_proj."), (".cross_attn.out.", ".cross_attention.out_proj.")):
        k = k.replace(ours, theirs)
    return re.sub(r"^heads\.", "linears.", k)


def convert_audiocraft(path: str | Path, out: str | Path, codec: str | None = None,
                       text_encoder: str | None = None, text_encoder_weights: str = "auto") -> Path:
    """`convert --from-audiocraft PATH --out OUT`: PATH is a folder with state_dict.bin and/or
    compression_state_dict.bin (an official model repo), one of those files, or a solver
    checkpoint.th. Writes our model folder (MusicGen when there is an LM, else the codec).
    audiocraft's files hold no T5 weights, only its name: the T5 is read from `text_encoder` (a local
    folder) or by that name, and copied into the folder unless `text_encoder_weights="refer"`."""
    from lightning_musicgen.model_files.codec import load_codec, save_codec
    from lightning_musicgen.model_files.write import save_musicgen
    path = Path(path)
    if path.is_dir():
        lm_file, codec_file = path / LM_FILE, path / CODEC_FILE
        if not lm_file.is_file() and not codec_file.is_file():
            raise CheckpointNotFoundError(f"{path}: neither {LM_FILE} nor {CODEC_FILE} in it")
    elif path.is_file():
        lm_file, codec_file = path, None
    else:
        raise CheckpointNotFoundError(f"{path}: no such file or folder")
    codec_model = load_codec(codec) if codec else None
    if lm_file.is_file():
        cfg, state = read_package(lm_file)
        if "lm_model" not in cfg:  # a codec file or a compression solver checkpoint
            if "compression_model" not in cfg:
                raise CheckpointError(f"{lm_file}: neither an LM nor a compression model config")
            return save_codec(codec_from_audiocraft(cfg, state, str(lm_file)), out)
        if codec_model is None and codec_file is not None and codec_file.is_file():
            codec_model = codec_from_audiocraft(*read_package(codec_file), str(codec_file))
        if codec_model is None:
            raise InputError(f"{lm_file}: an LM needs its codec: pass --codec (a model folder or checkpoint), "
                             f"or put {CODEC_FILE} next to it")
        lm, conditioner, cond_cfg, max_duration = lm_from_audiocraft(cfg, state, str(lm_file), text_encoder)
        codec_model.n_q = lm.n_q if lm.n_q <= codec_model.max_n_q else codec_model.n_q
        return save_musicgen(out, lm, conditioner, cond_cfg, codec_model, max_duration=max_duration,
                             text_encoder_weights=text_encoder_weights,
                             meta={"source": str(path), "format": "audiocraft"})
    cfg, state = read_package(codec_file)
    return save_codec(codec_from_audiocraft(cfg, state, str(codec_file)), out)
