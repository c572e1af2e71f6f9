"""The paper's codebook-pattern ablation (MusicGen, Table 3) at CPU scale, on one set of token shards.

Each pattern trains the same LM (text-conditioned through the packaged MiniLM, cross-attention) with
`python -m lightning_musicgen fit` on the same token shards with the same budget: `--steps` steps of
`--batch` crops of `--crop` seconds, so every pattern sees the same audio (flatten runs K times as many
transformer steps per second of audio, so it costs about K times the compute; its wall time is reported).
A checkpoint at half the budget shows whether the run has converged (its NLL close to the final one).

Score: validation NLL in nats per second of audio, summed over codebooks, on the validation shards cut
into consecutive `--crop`-second windows (the same windows for every pattern), each code scored under its
own validation caption (as `fit` validates), teacher-forced. Per second of audio (not per token) makes patterns of different sequence
lengths comparable; the paper's ordering in perplexity is flatten <= delay < parallel.

    python benchmarks/pattern_ablation.py --train data/demo/tokens/train --valid data/demo/tokens/valid \
        [--patterns parallel delay partial_delay vall_e flatten --steps 600 --batch 16 --crop 1.0 \
         --dim 64 --layers 2 --lr 3e-3 --out runs/pattern_ablation]

Prints a Markdown table (pattern, NLL/s at half and full budget, per-codebook NLL per code, fit seconds).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml


def fit_config(pattern: str, args, run: Path, n_q: int, card: int) -> dict:
    half = args.steps // 2
    return {
        "seed_everything": 1234,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": args.steps,
                    "val_check_interval": half, "limit_val_batches": 4, "log_every_n_steps": 50,
                    "gradient_clip_val": 1.0, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run), "save_last": True, "save_top_k": -1,
                                                 "every_n_train_steps": half,
                                                 "filename": "step{step}", "auto_insert_metric_name": False}}]},
        "model": {"class_path": "lightning_musicgen.lm.MusicGenModule",
                  "init_args": {"lm": {"n_q": n_q, "card": card, "dim": args.dim, "num_heads": args.heads,
                                       "num_layers": args.layers, "pattern": pattern, "cross_attention": True,
                                       "positional": "sin", "activation": "gelu", "dropout": 0.0},
                                "conditioner": {"fuse": "cross", "cfg_dropout": 0.1,
                                                "text": {"name": "minilm", "freeze": True, "word_dropout": 0.0}},
                                "codec_checkpoint": None, "lr": args.lr, "betas": [0.9, 0.95],
                                "weight_decay": 0.1, "warmup_steps": max(1, args.steps // 20),
                                "min_lr_ratio": 0.05}},
        "data": {"class_path": "lightning_musicgen.data.TokenDataModule",
                 "init_args": {"train_shards": str(args.train), "val_shards": str(args.valid),
                               "segment_duration": args.crop, "batch_size": args.batch, "num_workers": 1,
                               "epoch_steps": args.steps, "seed": 0}},
    }


def read_tokens(folder: Path) -> tuple[list[torch.Tensor], list[str], float]:
    """Every sample of a token-shard folder: (codes [K, F] each, captions, frame_rate)."""
    import webdataset as wds

    from lightning_musicgen.data.shards import expand_shards
    from lightning_musicgen.data.text import TextAugment
    index = json.loads((folder / "index.json").read_text())
    codes, texts = [], []
    for url in expand_shards(str(folder)):
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False).decode():
            codes.append(torch.as_tensor(sample["codes.npy"]).long())
            texts.append(TextAugment.deterministic(sample.get("json") or {}))  # the validation caption
    return codes, texts, float(index["frame_rate"])


def windows(codes: list[torch.Tensor], texts: list[str], frames: int) -> tuple[torch.Tensor, list[str]]:
    """Consecutive non-overlapping windows of `frames` frames (the remainder of each sample dropped)."""
    out, caps = [], []
    for c, t in zip(codes, texts):
        for s in range(0, c.shape[-1] - frames + 1, frames):
            out.append(c[:, s:s + frames])
            caps.append(t)
    return torch.stack(out), caps


@torch.no_grad()
def nll(ckpt: Path, x: torch.Tensor, captions: list[str], batch: int = 32) -> torch.Tensor:
    """Summed NLL (nats) per codebook [K] over all windows, and the count of scored codes per codebook."""
    from lightning_musicgen.model_files.read import load_musicgen
    lm, conditioner, _, _ = load_musicgen(ckpt, load_codec_model=False)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    count = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        logits, valid = lm.compute_logits(xb, conditioner(captions[i:i + batch]))
        logp = logits.float().log_softmax(-1).gather(-1, xb.unsqueeze(-1)).squeeze(-1)
        total -= (logp * valid).sum(dim=(0, 2)).double()
        count += valid.sum(dim=(0, 2)).double()
    return total, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, default=Path("data/demo/tokens/train"))
    p.add_argument("--valid", type=Path, default=Path("data/demo/tokens/valid"))
    p.add_argument("--patterns", nargs="+", default=["parallel", "delay", "partial_delay", "vall_e", "flatten"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=float, default=1.0, help="seconds per training crop and validation window")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", type=Path, default=Path("runs/pattern_ablation"))
    args = p.parse_args()
    codes, texts, frame_rate = read_tokens(args.valid)
    card = int(json.loads((args.valid / "index.json").read_text())["card"])
    frames = int(round(args.crop * frame_rate))
    x, captions = windows(codes, texts, frames)
    seconds = len(x) * frames / frame_rate
    print(f"validation: {len(x)} windows of {frames} frames ({seconds:.0f} s of audio), {x.shape[1]} codebooks, "
          f"frame rate {frame_rate:g} Hz; budget per pattern: {args.steps} steps x {args.batch} crops x "
          f"{args.crop:g} s", flush=True)
    rows = []
    for pattern in args.patterns:
        run = args.out / pattern
        run.mkdir(parents=True, exist_ok=True)
        config = run / "fit.yaml"
        config.write_text(yaml.safe_dump(fit_config(pattern, args, run, x.shape[1], card)))
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "lightning_musicgen", "fit", "--config", str(config)],
                             capture_output=True, text=True)
        took = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"{pattern}: fit failed ({res.returncode}): {res.stderr[-2000:]}")
        half_total, _ = nll(run / f"step{args.steps // 2}.ckpt", x, captions)
        total, count = nll(run / "last.ckpt", x, captions)
        per_code = (total / count).tolist()
        rows.append((pattern, float(half_total.sum()) / seconds, float(total.sum()) / seconds, per_code, took))
        print(f"{pattern}: {rows[-1][2]:.1f} nats/s (half budget {rows[-1][1]:.1f}), per code "
              f"{', '.join(f'{v:.3f}' for v in per_code)}, fit {took:.0f} s", flush=True)
    k = x.shape[1]
    print(f"\n| pattern | NLL nats/s (half budget) | NLL nats/s | " + " | ".join(f"q{i} nats/code" for i in range(k))
          + " | fit s |")
    print("|---|---|---|" + "---|" * k + "---|")
    for pattern, half, full, per_code, took in sorted(rows, key=lambda r: r[2]):
        print(f"| {pattern} | {half:.1f} | {full:.1f} | " + " | ".join(f"{v:.3f}" for v in per_code)
              + f" | {took:.0f} |")
    print(f"\nuniform: {k * math.log(card) * frame_rate:.1f} nats/s")


if __name__ == "__main__":
    main()
