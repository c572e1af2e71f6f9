"""EvaluateGeneration under 2-process ddp_spawn equals the single-process values.

Kept in its own file, named to run first: spawning DDP children from a pytest process that has
already run in-process W&B runs aborted a child now and then (SIGABRT); from a fresh process it
does not.
"""
import glob
import os

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_musicgen.callbacks import EvaluateGeneration
from test_callbacks import StandInMusicGen, ToneData, _eval_row


def test_evaluate_generation_same_values_in_two_process_ddp(tmp_path):
    """Under 2-process DDP each rank generates for half of the prompts; the metric states are summed,
    so the logged values equal the single-process ones."""
    def run(devices, strategy, name):
        callback = EvaluateGeneration(every_n_steps=2, num_prompts=5, batch_size=2, duration=3.0,
                                      metrics=["chroma_cosine", "fad_musicnn_vgg", "kl_musicnn_vgg"],
                                      num_audio_samples=1)
        logger = CSVLogger(tmp_path, name=name, version="v0")  # fixed: ddp_spawn children create it
        trainer = Trainer(max_steps=2, logger=logger, callbacks=[callback], accelerator="cpu", devices=devices,
                          strategy=strategy, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(StandInMusicGen(), datamodule=ToneData())
        return _eval_row(logger.log_dir), logger.log_dir

    single, _ = run(1, "auto", "single")
    ddp, ddp_dir = run(2, "ddp_spawn", "ddp")
    assert single.keys() == ddp.keys() and len(single) == 5
    for key in single:
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key
    assert len(glob.glob(os.path.join(ddp_dir, "media", "*", "*.wav"))) == 2  # rank 0 only: 1 generated + 1 reference
