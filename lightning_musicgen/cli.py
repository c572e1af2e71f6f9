"""LightningCLI for fit / validate / test / predict (subclass mode, OmegaConf interpolation)."""
from __future__ import annotations

import warnings

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def bf16_supported() -> bool:
    """bf16 autocast works on every CPU torch build; on CUDA it needs Ampere or newer."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return True


class MusicGenCLI(LightningCLI):
    """`python -m lightning_musicgen fit --config configs/...yaml` and friends.

    - model and data are given as class_path + init_args (any LightningModule/DataModule);
    - configs are parsed in OmegaConf mode, so `${data.init_args.segment_duration}` works;
    - every option also reads an environment variable (see `fit --help`);
    - the resolved config is saved next to every run's logs.
    """

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # modules own their optimizers
        super().__init__(
            LightningModule, LightningDataModule,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": True, "exit_on_error": False},
            args=args, run=run, **kwargs)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        precision = str(cfg.trainer.get("precision") or "")
        if precision.startswith("bf16") and not bf16_supported():
            warnings.warn(f"precision={precision} is not supported on this GPU; using 32-true")
            cfg.trainer.precision = "32-true"
