"""LightningCLI for fit / validate / test / predict (subclass mode, OmegaConf interpolation)."""
from __future__ import annotations

import warnings

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


# Lightning warnings that are expected with this package's modules and data, silenced so that real
# ones stand out: our IterableDatasets split shards per worker themselves (their __len__ is the
# per-rank epoch length); CodecModule checkpoints the post-step state on purpose (manual GAN
# optimisation); the LeafSpec deprecation comes from Lightning itself under torch 2.11.
EXPECTED_WARNINGS = (
    r"Your `IterableDataset` has `__len__` defined",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def silence_expected_warnings() -> None:
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


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
        silence_expected_warnings()
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
