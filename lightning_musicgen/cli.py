"""LightningCLI for fit / validate / test / predict (subclass mode, OmegaConf interpolation)."""
from __future__ import annotations

import warnings
from typing import Literal, Optional, Union, get_type_hints

import lightning.pytorch as pl
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_musicgen.precision import training_precision


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


# Lightning's own accepted precision values, plus "auto".
PrecisionInput = Optional[Union[Literal["auto"], get_type_hints(pl.Trainer.__init__)["precision"]]]


class Trainer(pl.Trainer):
    """Lightning's Trainer whose `precision` defaults to "auto": bf16-mixed where bf16 is fast (CUDA
    with native bf16, a CPU with AVX512-BF16/AMX), 32-true elsewhere; one log line says which and
    why (`lightning_musicgen.precision.training_precision`). Any other value works as in Lightning."""

    def __init__(self, *args, precision: PrecisionInput = "auto", **kwargs):
        accelerator = str(kwargs.get("accelerator") or "auto")
        device_type = "cpu" if accelerator == "cpu" else ("cuda" if accelerator in ("cuda", "gpu") else None)
        precision, reason = training_precision(precision, device_type)
        rank_zero_info(reason)
        super().__init__(*args, precision=precision, **kwargs)


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
            LightningModule, LightningDataModule, trainer_class=Trainer,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": True, "exit_on_error": False},
            args=args, run=run, **kwargs)

