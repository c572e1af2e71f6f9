"""Worker for tests/test_callbacks_ddp.py: trains the stand-in MusicGen for 2 steps with the
EvaluateGeneration callback on 1 process or on 2 ddp_spawn processes and prints the logged eval
row as JSON on the last line of stdout.

Run in its own interpreter: spawning DDP children from a pytest process that had already run
in-process W&B runs aborted a child now and then (SIGABRT).

    python tests/ddp_evaluate_generation_run.py OUT_DIR {single|ddp}
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from lightning_musicgen.training import EvaluateGeneration  # noqa: E402
from test_callbacks import StandInMusicGen, ToneData, _eval_row  # noqa: E402


def main(out_dir: str, mode: str) -> None:
    devices, strategy = (1, "auto") if mode == "single" else (2, "ddp_spawn")
    callback = EvaluateGeneration(every_n_steps=2, num_prompts=5, batch_size=2, duration=3.0,
                                  metrics=["chroma_cosine", "fad_musicnn_vgg", "kl_musicnn_vgg"],
                                  num_audio_samples=1)
    logger = CSVLogger(out_dir, name=mode, version="v0")  # fixed: ddp_spawn children create it
    trainer = Trainer(max_steps=2, logger=logger, callbacks=[callback], accelerator="cpu", devices=devices,
                      strategy=strategy, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(StandInMusicGen(), datamodule=ToneData())
    wavs = glob.glob(os.path.join(logger.log_dir, "media", "*", "*.wav"))
    print(json.dumps({"row": _eval_row(logger.log_dir), "wavs": len(wavs)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
