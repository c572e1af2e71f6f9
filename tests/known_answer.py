"""Known-answer learning: a random, sharpened teacher MusicGenLM whose true entropies are computable.

The teacher is a `MusicGenModule` (LM + the packaged MiniLM text conditioner) whose output heads are
scaled by `sharpen` (lower entropy than the near-uniform random init) and whose text projection is
scaled by `caption_gain` (so the caption changes the distribution). It is conditioned on one of a
few fixed `CAPTIONS`, drawn uniformly.

- `sample` draws codes [N, K, T] from the teacher with the generation loop (`decode_window`) at
  temperature 1, no top-k / top-p, no CFG: exact draws from p_T(x | c) under the teacher's pattern.
- `write_shards` writes them as token shards in the format `tokenize` writes (`token_sample`,
  `AtomicShardWriter`, `write_index`), the caption as each sample's `description`.
- `sequence_log_probs` is log p(x | c) per sequence by teacher forcing (`compute_logits`); every
  (k, t) of a complete clip is a real code under every pattern, so a clip counts K * T tokens
  (the delay pattern's empty steps are never counted).

True entropies on held-out draws (x, c), in nats per token:
    H(X|C) ~ mean -log p_T(x | c) / (K T)
    H(X)   ~ mean -log p_T(x) / (K T),  p_T(x) = mean over the equiprobable captions of p_T(x | c')
The caption information I(X;C) = H(X) - H(X|C) is at most log(len(CAPTIONS)) per clip, so gaps are
compared per clip (nats), not per token. A student's conditional NLL (its caption) estimates
H(X|C) from above; its NLL with the null condition (what CFG dropout trains) estimates H(X).

Used by tests/test_known_answer.py (fast) and benchmarks/known_answer.py (full).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

CAPTIONS = ("a calm solo piano ballad", "fast heavy metal drums and distorted guitars",
            "a choir singing in a cathedral", "bright electronic dance music with synth bass")
FRAME_RATE = 50.0


@dataclass
class TeacherSpec:
    pattern: str = "delay"
    n_q: int = 2
    card: int = 16
    dim: int = 32
    num_heads: int = 2
    num_layers: int = 2
    sharpen: float = 2.0
    caption_gain: float = 4.0
    seed: int = 0

    def lm(self) -> dict:
        return {"n_q": self.n_q, "card": self.card, "dim": self.dim, "num_heads": self.num_heads,
                "num_layers": self.num_layers, "pattern": self.pattern, "cross_attention": True}


CONDITIONER = {"fuse": "cross", "cfg_dropout": 0.0, "text": {"name": "minilm", "freeze": True, "word_dropout": 0.0}}


def make_teacher(spec: TeacherSpec):
    """The teacher MusicGenModule (eval mode), sharpened and made caption-dependent."""
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(spec.seed)
    teacher = MusicGenModule(lm=spec.lm(), conditioner=CONDITIONER)
    with torch.no_grad():
        for head in teacher.lm.heads:
            head.weight.mul_(spec.sharpen)
        teacher.conditioner.text.proj.weight.mul_(spec.caption_gain)
    return teacher.eval().requires_grad_(False)


def caption_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(len(CAPTIONS), (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(teacher, n: int, frames: int, seed: int, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [n, K, frames], caption ids [n]): exact draws from the teacher (temperature 1, no filter, no CFG)."""
    from lightning_musicgen.generation.loop import decode_window
    from lightning_musicgen.lm.sampling import SamplingParams, make_generator
    ids = caption_ids(n, seed)
    gen = make_generator(seed)
    plain = SamplingParams(top_k=0, top_p=0.0, temperature=1.0)
    out = []
    for i in range(0, n, batch):
        cond = teacher.conditioner([CAPTIONS[j] for j in ids[i:i + batch]])
        out.append(decode_window(teacher.lm, cond, None, frames, sampling=plain, cfg_coef=1.0, generator=gen))
    return torch.cat(out), ids


def write_shards(folder: str | Path, codes: torch.Tensor, ids: torch.Tensor, card: int,
                 shard_size: int = 512) -> dict:
    """Token shards of teacher draws, as `tokenize` writes them (index.json, stats, KEY.codes.npy + KEY.json)."""
    from lightning_musicgen.data.shards import AtomicShardWriter, atomic_write_json, shard_name, write_index
    from lightning_musicgen.data.tokenize import token_sample
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"frame_rate": FRAME_RATE, "n_q": int(codes.shape[1]), "card": int(card),
            "codec_sample_rate": int(FRAME_RATE * 640), "codec_channels": 1}
    seconds = codes.shape[-1] / FRAME_RATE
    shards = []
    for s, start in enumerate(range(0, len(codes), shard_size)):
        name = shard_name(s)
        with AtomicShardWriter(folder / name) as writer:
            for i in range(start, min(len(codes), start + shard_size)):
                writer.write(f"teacher{i:06d}", token_sample(codes[i], {"description": CAPTIONS[int(ids[i])]},
                                                              info, seconds))
        stats = {"name": name, "samples": min(len(codes), start + shard_size) - start,
                 "duration": round((min(len(codes), start + shard_size) - start) * seconds, 6),
                 "skipped": [], "codec": info}
        atomic_write_json(folder / name.replace(".tar", ".stats.json"), stats)
        shards.append(stats)
    return write_index(folder, shards, [], kind="tokens", **info)


@torch.no_grad()
def sequence_log_probs(lm, conditioner, codes: torch.Tensor, captions: list[str | None], null: bool = False,
                       batch: int = 256) -> torch.Tensor:
    """log p(x | c) [N] of whole clips (nats), teacher-forced; `null=True`: under the null condition."""
    out = []
    for i in range(0, len(codes), batch):
        x, texts = codes[i:i + batch], list(captions[i:i + batch])
        cond = conditioner.null(texts) if null else conditioner(texts)
        logits, valid = lm.compute_logits(x, cond)
        logp = logits.float().log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        out.append((logp * valid).sum(dim=(1, 2)))
    return torch.cat(out)


@dataclass
class Entropies:
    """Per-token entropies (nats) and per-clip caption information of held-out draws."""
    cond: float          # H(X|C) per token
    uncond: float        # H(X) per token
    tokens: int          # tokens per clip (K * T)

    @property
    def gap_per_clip(self) -> float:
        return (self.uncond - self.cond) * self.tokens


@torch.no_grad()
def teacher_entropies(teacher, codes: torch.Tensor, ids: torch.Tensor) -> Entropies:
    tokens = codes.shape[1] * codes.shape[2]
    per_caption = torch.stack([sequence_log_probs(teacher.lm, teacher.conditioner, codes, [c] * len(codes))
                               for c in CAPTIONS], dim=1)  # [N, C]
    cond = -per_caption.gather(1, ids[:, None]).squeeze(1)
    uncond = -(torch.logsumexp(per_caption, dim=1) - math.log(len(CAPTIONS)))
    return Entropies(float(cond.mean()) / tokens, float(uncond.mean()) / tokens, tokens)


@torch.no_grad()
def student_nlls(lm, conditioner, codes: torch.Tensor, ids: torch.Tensor) -> Entropies:
    """The student's conditional and null-condition NLL per token on held-out draws (same fields as the teacher's)."""
    tokens = codes.shape[1] * codes.shape[2]
    captions = [CAPTIONS[int(i)] for i in ids]
    cond = -sequence_log_probs(lm, conditioner, codes, captions)
    uncond = -sequence_log_probs(lm, conditioner, codes, captions, null=True)
    return Entropies(float(cond.mean()) / tokens, float(uncond.mean()) / tokens, tokens)


def student_config(spec: TeacherSpec, train: Path, valid: Path, run: Path, steps: int, frames: int,
                   batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.0) -> dict:
    """A `fit` config: the teacher's architecture, AdamW with warmup + cosine (no weight decay by default:
    the sharpened heads are large weights) and CFG dropout 0.3;
    captions exactly as written (no metadata merging, no word dropout: the teacher never saw any)."""
    return {
        "seed_everything": 1234,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps,
                    "val_check_interval": steps, "limit_val_batches": 2, "log_every_n_steps": 50,
                    "gradient_clip_val": 1.0, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run), "save_last": True,
                                                 "every_n_train_steps": steps}}]},
        "model": {"class_path": "lightning_musicgen.lm.MusicGenModule",
                  "init_args": {"lm": spec.lm(), "conditioner": {**CONDITIONER, "cfg_dropout": 0.3},
                                "lr": lr, "betas": [0.9, 0.95], "weight_decay": weight_decay,
                                "warmup_steps": max(1, steps // 10), "min_lr_ratio": 0.05}},
        "data": {"class_path": "lightning_musicgen.data.TokenDataModule",
                 "init_args": {"train_shards": str(train), "val_shards": str(valid),
                               "segment_duration": frames / FRAME_RATE, "batch_size": batch_size,
                               "num_workers": 0, "epoch_steps": steps, "merge_text_p": 0.0,
                               "drop_desc_p": 0.0, "drop_other_p": 0.0, "word_dropout": 0.0}},
    }


@dataclass
class Outcome:
    truth: Entropies       # the teacher's, on held-out draws
    untrained: Entropies   # a fresh student of the same architecture
    student: Entropies     # after `fit`
    fit_seconds: float
    stderr: str


def run(spec: TeacherSpec, workdir: Path, frames: int, train: int, held_out: int, steps: int, batch_size: int,
        lr: float, weight_decay: float = 0.0) -> Outcome:
    """Teacher shards -> `python -m lightning_musicgen fit` (a subprocess) -> the student's NLLs on held-out draws."""
    import subprocess
    import sys
    import time

    import yaml

    from lightning_musicgen.lm.module import MusicGenModule
    from lightning_musicgen.model_files.read import load_musicgen
    workdir = Path(workdir)
    teacher = make_teacher(spec)
    write_shards(workdir / "train", *sample(teacher, train, frames, seed=spec.seed + 1), spec.card)
    write_shards(workdir / "valid", *sample(teacher, 64, frames, seed=spec.seed + 2), spec.card)
    held = sample(teacher, held_out, frames, seed=spec.seed + 3)
    truth = teacher_entropies(teacher, *held)
    torch.manual_seed(spec.seed + 4)
    fresh = MusicGenModule(lm=spec.lm(), conditioner={**CONDITIONER, "cfg_dropout": 0.3}).eval()
    untrained = student_nlls(fresh.lm, fresh.conditioner, *held)
    config = workdir / "student.yaml"
    config.write_text(yaml.safe_dump(student_config(spec, workdir / "train", workdir / "valid", workdir / "run",
                                                    steps, frames, batch_size, lr, weight_decay)))
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lightning_musicgen", "fit", "--config", str(config)],
                         capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"fit failed ({res.returncode}): {res.stderr[-3000:]}")
    lm, conditioner, _, _ = load_musicgen(workdir / "run" / "last.ckpt", load_codec_model=False)
    return Outcome(truth, untrained, student_nlls(lm, conditioner, *held), seconds, res.stderr)
