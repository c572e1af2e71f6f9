"""`python -m lightning_musicgen lora extract|merge`: LoRA adapters out of a fine-tuning checkpoint,
and a merged model file (adapters folded into the base weights) for generation and export.

    lora extract --ckpt runs/ft/last.ckpt --out adapters.safetensors
    lora merge --ckpt runs/ft/last.ckpt --out musicgen-ft.pt
    lora merge --base musicgen-small.pt --adapters adapters.safetensors --out musicgen-ft.pt

The merged file is the single-file format of `convert --from-hf` (see `lm.checkpoint`), with the
base model's codec embedded: `MusicGen.from_checkpoint`, `generate --ckpt` and `export` read it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def extract(ckpt_path: str | Path, out: str | Path) -> Path:
    """The adapters (and trained projections) of a LoRA MusicGenModule checkpoint -> safetensors."""
    import json

    from safetensors.torch import save_file

    from lightning_musicgen.lm.lora import ADAPTERS_FORMAT, LoRASettings
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    info = ckpt.get("musicgen") if isinstance(ckpt, dict) else None
    if not info or not info.get("lora"):
        raise ValueError(f"{ckpt_path}: not a LoRA fine-tuning checkpoint (no musicgen.lora entry)")
    settings = LoRASettings.from_any(info["lora"])
    state = ckpt["state_dict"]
    tensors = {k: v for k, v in state.items() if k.startswith("lm.") and "lora_" in k}
    if settings.train_condition_projection:
        tensors |= {k: v for k, v in state.items() if k.startswith(("conditioner.text.proj.", "conditioner.melody.proj."))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"format": ADAPTERS_FORMAT, "lora": json.dumps(settings.to_dict()),
                        "meta": json.dumps({"checkpoint": str(ckpt_path), "init_from": info.get("init_from"),
                                            "global_step": ckpt.get("global_step")})})
    tmp.replace(out)
    return out


def merge(out: str | Path, ckpt: str | Path | None = None, base: str | Path | None = None,
          adapters: str | Path | None = None) -> Path:
    """Fold LoRA adapters into the base weights and write the single-file model format."""
    from lightning_musicgen.lm.checkpoint import load_musicgen, save_musicgen
    from lightning_musicgen.lm.lora import load_adapters, merge_lora
    if ckpt is not None:
        lm, conditioner, codec, cfg = load_musicgen(ckpt, use_ema=False)  # LoRA checkpoints load merged
        source = {"merged_from": str(ckpt)}
    elif base is not None and adapters is not None:
        lm, conditioner, codec, cfg = load_musicgen(base)
        load_adapters(adapters, lm, conditioner)
        merge_lora(lm)
        source = {"merged_from": str(base), "adapters": str(adapters)}
    else:
        raise ValueError("lora merge: pass --ckpt, or --base and --adapters")
    meta = dict(cfg.get("meta") or {}) | source
    return save_musicgen(out, lm.float(), conditioner, cfg["conditioner"], codec, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_musicgen lora",
                                     description="LoRA adapters: extract them, or merge them into the base model.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="adapters of a LoRA fine-tuning checkpoint -> a small safetensors file")
    ex.add_argument("--ckpt", required=True, help="MusicGenModule checkpoint of a LoRA fine-tuning run")
    ex.add_argument("--out", required=True, help="adapters file to write (.safetensors)")
    mg = sub.add_parser("merge", help="fold adapters into the base weights -> a model file for generate/export")
    mg.add_argument("--ckpt", help="MusicGenModule checkpoint of a LoRA fine-tuning run")
    mg.add_argument("--base", help="the base model (converted file or checkpoint) the adapters were trained on")
    mg.add_argument("--adapters", help="adapters file (lora extract, or MusicGenModule.save_adapters)")
    mg.add_argument("--out", required=True, help="merged model file to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "extract":
            out = extract(args.ckpt, args.out)
        else:
            out = merge(args.out, args.ckpt, args.base, args.adapters)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
