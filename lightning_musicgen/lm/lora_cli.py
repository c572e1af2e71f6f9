"""`python -m lightning_musicgen lora extract|merge`: LoRA adapters out of a fine-tuning checkpoint,
and a merged model file (adapters folded into the base weights) for generation and export.

    lora extract --ckpt runs/ft/last.ckpt --out adapters.safetensors
    lora merge --ckpt runs/ft/last.ckpt --out musicgen-ft/
    lora merge --base musicgen-small/ --adapters adapters.safetensors --out musicgen-ft/

The merged model is a model folder (see `model_files`), with the base model's codec:
`MusicGen.from_pretrained`, `generate --model` and `export` read it. `export` of a LoRA
checkpoint merges too (`lora merge --ckpt` is the same with a LoRA-specific name).
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
    if not Path(ckpt_path).is_file():
        raise ValueError(f"{ckpt_path}: not a LoRA fine-tuning checkpoint (not a file)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    info = (ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    if not info.get("lora"):
        raise ValueError(f"{ckpt_path}: not a LoRA fine-tuning checkpoint (no lora in its hyper_parameters)")
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
    """Fold LoRA adapters into the base weights and write a model folder."""
    from lightning_musicgen.lm.lora import load_adapters, merge_lora
    from lightning_musicgen.model_files import load_musicgen, save_musicgen
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
    return save_musicgen(out, lm.float(), conditioner, cfg["conditioner"], codec, meta=meta,
                         max_duration=cfg.get("max_duration", 30.0),
                         copy_text_encoder=_text_encoder_copied(ckpt if ckpt is not None else base))


def _text_encoder_copied(path: str | Path) -> bool:
    """Whether the base model carries its text encoder's weights (then the merged folder does too):
    a model folder says so in its config; a checkpoint asks its init_from; older files embed it."""
    import json

    from lightning_musicgen.model_files import CONFIG
    path = Path(path)
    if path.is_dir():
        info = json.loads((path / CONFIG).read_text()).get("text_encoder") or {}
        return bool(info.get("copied"))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    init_from = (ckpt.get("hyper_parameters") or {}).get("init_from") if isinstance(ckpt, dict) else None
    return _text_encoder_copied(init_from) if init_from and Path(init_from).exists() else "format" in ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_musicgen lora",
                                     description="LoRA adapters: extract them, or merge them into the base model.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="adapters of a LoRA fine-tuning checkpoint -> a small safetensors file")
    ex.add_argument("--ckpt", required=True, help="MusicGenModule checkpoint of a LoRA fine-tuning run")
    ex.add_argument("--out", required=True, help="adapters file to write (.safetensors)")
    mg = sub.add_parser("merge", help="fold adapters into the base weights -> a model folder for generate/export")
    mg.add_argument("--ckpt", help="MusicGenModule checkpoint of a LoRA fine-tuning run")
    mg.add_argument("--base", help="the base model (model folder, converted file or checkpoint) the adapters were trained on")
    mg.add_argument("--adapters", help="adapters file (lora extract, or MusicGenModule.save_adapters)")
    mg.add_argument("--out", required=True, help="merged model folder to write")
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
