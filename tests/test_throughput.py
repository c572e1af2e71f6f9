"""AudioThroughputMonitor: audio seconds from the frame rate the token batches carry (not an assumed
50 Hz), tokens per second, and logging through public Lightning APIs only."""
import csv

import pytest

import lightning as L
import torch

from lightning_musicgen.training import AudioThroughputMonitor


class CodeBatches(torch.utils.data.Dataset):
    def __init__(self, frames: int, frame_rate: float):
        self.frames, self.frame_rate = frames, frame_rate

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.randint(0, 8, (4, self.frames))


def collate(items, frame_rate):
    return {"codes": torch.stack(items), "meta": [{"frame_rate": frame_rate}] * len(items)}


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(8, 4)

    def training_step(self, batch, batch_idx):
        return self.emb(batch["codes"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_token_batches_use_their_frame_rate(tmp_path):
    frames, frame_rate, batch = 500, 250.0, 2
    loader = torch.utils.data.DataLoader(CodeBatches(frames, frame_rate), batch_size=batch,
                                         collate_fn=lambda items: collate(items, frame_rate))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version=0)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=logger, log_every_n_steps=2,
                        callbacks=[AudioThroughputMonitor(window_size=3)], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), loader)
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv"))
            if r.get("train/samples_per_sec")]
    assert rows, "no throughput logged"
    last = rows[-1]
    samples = float(last["train/samples_per_sec"])
    # each sample holds frames / frame_rate = 2 s of audio and 4 x frames codes
    assert float(last["train/audio_sec_per_sec"]) == pytest.approx(samples * frames / frame_rate, rel=1e-3)
    assert float(last["lm/tokens_per_sec"]) == pytest.approx(samples * 4 * frames, rel=1e-6)
    assert float(last["train/grad_norm"]) > 0
