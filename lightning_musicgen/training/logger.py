"""A W&B logger whose run id survives SLURM requeues and restarts."""
from __future__ import annotations

import os
import secrets
from typing import Optional

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_musicgen.distributed import slurm_run_id


def stable_run_id(explicit: Optional[str] = None, environ: Optional[dict] = None) -> str:
    """The W&B run id of this job: `explicit`, else `$WANDB_RUN_ID`, else one derived from the
    SLURM job (array-aware; a requeued job keeps its id), else a fresh random id.

    Checkpoints go to `save_dir/project/<id>/checkpoints`, so a stable id also lets
    `--ckpt_path last` find the previous attempt's `last.ckpt`."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("WANDB_RUN_ID"):
        return env["WANDB_RUN_ID"]
    return slurm_run_id(env) or secrets.token_hex(4)


class ResumableWandbLogger(WandbLogger):
    """`WandbLogger` with a run id fixed when the logger is built (see `stable_run_id`) and
    `resume="allow"`: a requeued or restarted job continues the same W&B run and its checkpoint
    folder. Offline runs are uploaded later with `wandb sync runs/wandb/offline-run-*`.
    Every other argument is WandbLogger's."""

    def __init__(self, id: Optional[str] = None, version: Optional[str] = None, **kwargs):
        kwargs.pop("resume", None)
        super().__init__(id=stable_run_id(version or id), resume="allow", **kwargs)


class LogConfig(Callback):
    """Logs the full resolved LightningCLI config (trainer, model, data: every default filled in) to
    the experiment loggers as hyperparameters under `config`, next to the `config.yaml` LightningCLI
    saves in the run folder. Runs on rank 0 at fit start; a run without LightningCLI logs nothing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        saver = next((cb for cb in trainer.callbacks if isinstance(cb, SaveConfigCallback)), None)
        if saver is None:
            return
        config = yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))
        config.pop("config", None)   # the list of --config paths, not settings
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
