"""What the demo LM's files hold: its training checkpoint against trainable parameters + optimizer
state, and the tensors of its exported model folder.

Builds `configs/demo/musicgen.yaml`'s MusicGenModule against a random codec of
`configs/demo/codec.yaml`'s shape (4 x 256 codes; sizes do not depend on training), trains it for
a few steps on random codes (batches of 8 x 4 x 500, the demo's 2 s crops), saves a Lightning
checkpoint, exports the model folder and prints: trainable / frozen parameter counts, checkpoint
bytes vs fp32 trainable weights + optimizer-state bytes + 1 MiB, and every file of the folder with
the tensor counts per prefix of its model.safetensors. Run from the repository root:

    python benchmarks/model_file_sizes.py --steps 4 --out /tmp/model_file_sizes
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open

from lightning_musicgen.codec.model import CodecConfig, CompressionModel
from lightning_musicgen.lm.module import MusicGenModule
from lightning_musicgen.model_files.codec import save_codec
from lightning_musicgen.model_files.export import export_model_folder

CROP_FRAMES, BATCH = 500, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the codec, run and model")
    args = parser.parse_args()
    init = yaml.safe_load(Path("configs/demo/musicgen.yaml").read_text())["model"]["init_args"]
    codec_cfg = yaml.safe_load(Path("configs/demo/codec.yaml").read_text())["model"]["init_args"]["codec"]
    save_codec(CompressionModel(CodecConfig.from_dict(codec_cfg)), args.out / "codec-model")
    init["codec_checkpoint"] = str(args.out / "codec-model")
    torch.manual_seed(0)
    module = MusicGenModule(**init)
    g = torch.Generator().manual_seed(0)
    batches = [{"codes": torch.randint(0, codec_cfg["card"], (BATCH, codec_cfg["n_q"], CROP_FRAMES), generator=g),
                "mask": torch.ones(BATCH, CROP_FRAMES, dtype=torch.bool),
                "text": ["a choir", "an organ"] * (BATCH // 2)} for _ in range(args.steps)]
    trainer = Trainer(default_root_dir=args.out, accelerator="cpu", max_steps=args.steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                      callbacks=[ModelCheckpoint(dirpath=args.out / "run", save_last=True)])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))

    ckpt_path = args.out / "run" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    lm_params = sum(p.numel() for p in module.lm.parameters())
    text_params = sum(p.numel() for p in module.conditioner.text.encoder.parameters())
    optimizer_bytes = sum(t.numel() * t.element_size() for opt in ckpt["optimizer_states"]
                          for state in opt["state"].values() for t in state.values() if torch.is_tensor(t))
    size = ckpt_path.stat().st_size
    bound = 4 * trainable + optimizer_bytes + 2**20
    embedded = any(k.startswith("conditioner.text.encoder.") for k in ckpt["state_dict"])
    print(f"trainable parameters {trainable:,} (LM {lm_params:,}); frozen text encoder {text_params:,} "
          f"(in the checkpoint: {embedded}; referenced: {sorted(ckpt.get('frozen', {}))})")
    print(f"checkpoint {size:,} B; fp32 trainable {4 * trainable:,} B + optimizer state {optimizer_bytes:,} B "
          f"+ 1 MiB = {bound:,} B; beyond weights + optimizer state: {size - 4 * trainable - optimizer_bytes:,} B")

    folder = export_model_folder(ckpt_path, args.out / "model")
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(f"  {f.relative_to(folder)}  {f.stat().st_size:,} B")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        shapes = {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}
    for prefix in sorted({k.split(".")[0] for k in shapes}):
        names = [k for k in shapes if k.startswith(prefix + ".")]
        print(f"model.safetensors {prefix}.*: {len(names)} tensors, {sum(shapes[k].numel() for k in names):,} values")
    print(f"module.lm: {len(module.lm.state_dict())} tensors, {lm_params:,} parameters")


if __name__ == "__main__":
    main()
