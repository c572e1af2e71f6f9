"""Callbacks: EvaluateGeneration and CodecReconstruction in short fits with stand-in modules that
expose the documented interface; W&B (offline run files), CSV and TensorBoard outputs."""
import csv
import glob
import json
import math
import os
import struct
import time
import warnings

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader

from lightning_musicgen.training import CodecReconstruction, EvaluateGeneration
from lightning_musicgen.codec.losses import si_snr
from test_metrics import build_tiny_clap
from lightning_musicgen.model_files.codec import save_codec

SR = 16000


def tone(midi: float, seconds: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 440.0 * 2 ** ((midi - 69) / 12) * t))[None]


class ToneData(LightningDataModule):
    """Validation items: tones with captions (one empty: an unconditional prompt)."""

    sample_rate = SR

    def __init__(self, n: int = 6, seconds: float = 3.5):
        super().__init__()
        texts = ["a calm C", "", "an E", "a G", "a B flat", "a D"]
        self.items = [{"wav": tone(60 + 2 * i, seconds), "text": texts[i % len(texts)]} for i in range(n)]

    def train_dataloader(self):
        return DataLoader(self.items, batch_size=2)

    def val_dataloader(self):
        return DataLoader(self.items, batch_size=4)


class ToneGenerator:
    """The `generator()` contract: generate(...) -> wav, sample_rate, has_melody."""

    sample_rate, has_melody = SR, True

    def __init__(self, module):
        self.module = module

    def generate(self, descriptions, duration, melody=None, seed=None, **sampling):
        self.module.calls.append({"texts": list(descriptions), "duration": duration, "seed": seed, **sampling})
        wav, sr = melody  # follows the melody exactly: chroma cosine must be 1
        assert sr == SR and wav.shape[0] == len(descriptions)
        return wav[..., :int(duration * SR)] * self.module.gain.detach()


class StandInMusicGen(LightningModule):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.8))  # generated = 0.8 x reference
        self.calls, self.ema_flags = [], []

    def generator(self, use_ema: bool = True):
        self.ema_flags.append(use_ema)
        return ToneGenerator(self)

    def training_step(self, batch, batch_idx):
        return 0 * self.gain + 0 * batch["wav"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def read_wandb_history(run_file: str, timeout: float = 30.0) -> list[dict]:
    """The logged rows of an offline W&B run, read from its run-*.wandb transaction log (LevelDB-style
    log of protobuf Records: 7-byte file header, 32 KiB blocks, chunks with crc32/length/type).
    wandb-core writes it from another process: wait for the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        rows, finished = _read_wandb_records(run_file)
        if finished or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _read_wandb_records(run_file: str) -> tuple[list[dict], bool]:
    from wandb.proto import wandb_internal_pb2 as pb2
    finished = False
    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B", run_file
    rows, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end it
            record = pb2.Record()
            record.ParseFromString(pending)
            kind_name = record.WhichOneof("record_type")
            finished |= kind_name == "exit"
            if kind_name == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows, finished


def _trainer(tmp_path, logger, callback, max_steps=4):
    return Trainer(max_steps=max_steps, logger=logger, callbacks=[callback], accelerator="cpu", devices=1,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)


def test_evaluate_generation_logs_to_offline_wandb_run(tmp_path):
    import wandb
    clap_dir = build_tiny_clap(tmp_path / "clap")
    callback = EvaluateGeneration(every_n_steps=2, num_prompts=5, batch_size=2, duration=3.0,
                                  metrics=["chroma_cosine", "fad_musicnn_vgg", "kl_musicnn_vgg", "clap", "fad_vggish",
                                           "kl_panns"],
                                  clap_path=str(clap_dir), cfg_coef=2.5, top_k=50, num_audio_samples=2)
    module = StandInMusicGen()
    logger = WandbLogger(project="eval-test", save_dir=str(tmp_path), offline=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, logger, callback).fit(module, datamodule=ToneData())
    wandb.finish()
    skip_warnings = [w for w in caught if "EvaluateGeneration: skipping" in str(w.message)]
    assert len(skip_warnings) == 1, [str(w.message) for w in caught]
    assert "fad_vggish, kl_panns" in str(skip_warnings[0].message)
    assert "vggish_checkpoint" in str(skip_warnings[0].message)

    # evaluated at steps 2 and 4, on 5 prompts in batches of 2, with the configured sampling
    assert len(module.calls) == 6 and module.ema_flags == [True, True]
    assert [c["texts"] for c in module.calls[:3]] == [["a calm C", None], ["an E", "a G"], ["a B flat"]]
    assert module.calls[0]["cfg_coef"] == 2.5 and module.calls[0]["top_k"] == 50
    assert module.calls[0]["duration"] == 3.0

    run_dir = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0]
    rows = read_wandb_history(glob.glob(os.path.join(run_dir, "run-*.wandb"))[0])
    scalars = [r for r in rows if "eval/chroma_cosine" in r]
    assert [r["trainer/global_step"] for r in scalars] == [2, 4]
    last = scalars[-1]
    assert last["eval/chroma_cosine"] == pytest.approx(1.0)  # the generator followed the melody
    # generated = 0.8 x reference: FAD and KL are small but not zero (pairs and statistics line up)
    assert 0 < last["eval/fad_musicnn_vgg"] < 5.0
    assert 0 < last["eval/kl_musicnn_vgg"] < 0.05
    assert last["eval/kl_musicnn_vgg_symmetric"] == pytest.approx(
        last["eval/kl_musicnn_vgg"] + last["eval/kl_musicnn_vgg_reverse"])
    assert -1.0 <= last["eval/clap"] <= 1.0 and last["eval/clap"] != 0.0
    assert not any(k.startswith(("eval/fad_vggish", "eval/kl_panns")) for r in rows for k in r)
    audio_rows = [r for r in rows if "eval/audio/_type" in r]
    assert len(audio_rows) == 2 and audio_rows[0]["eval/audio/captions"][:2] == ["0 generated: a calm C", "0 reference"]
    run_dir = os.path.join(run_dir, "files")
    wavs = glob.glob(os.path.join(run_dir, "media", "audio", "**", "*.wav"), recursive=True)
    assert len(wavs) == 2 * 4  # two evaluations x (2 generated + 2 reference clips)
    for name, height in (("mel", 80), ("chroma", 12 * 8)):  # one image per clip (W&B stores equal images once)
        image_rows = [r for r in rows if f"eval/{name}/_type" in r]
        assert len(image_rows) == 2 and all(r[f"eval/{name}/count"] == 4 for r in image_rows)
        assert image_rows[0][f"eval/{name}/height"] == height
        assert all(os.path.isfile(os.path.join(run_dir, f)) for r in image_rows for f in r[f"eval/{name}/filenames"])
    import soundfile as sf
    info = sf.info(wavs[0])
    assert info.samplerate == SR and info.frames == 3 * SR


def test_evaluate_generation_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown \['fad_vgish'\]"):
        EvaluateGeneration(every_n_steps=10, metrics=["fad_vgish"])
    with pytest.raises(ValueError, match="every_n_steps or every_n_epochs"):
        EvaluateGeneration(metrics=["chroma_cosine"])
    callback = EvaluateGeneration(every_n_epochs=1, metrics=["fad_vggish"],
                                  vggish_checkpoint=str(tmp_path / "vggish-missing.pth"))
    with pytest.raises(FileNotFoundError, match="vggish-missing.pth"):
        _trainer(tmp_path, False, callback).fit(StandInMusicGen(), datamodule=ToneData())


class QuantizingCodec(torch.nn.Module):
    """A stand-in CompressionModel: 6-bit uniform quantization as 'codes'."""

    sample_rate = SR

    def encode(self, wav):
        return torch.round(wav.clamp(-1, 1) * 31).long()[:, None, 0]  # [B, K=1, T]

    def decode(self, codes):
        return codes[:, :1].float() / 31


class StandInCodecModule(LightningModule):
    def __init__(self):
        super().__init__()
        self.codec = QuantizingCodec()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return self.w ** 2 + 0 * batch["wav"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_codec_reconstruction_csv_and_tensorboard(tmp_path):
    data = ToneData(n=5, seconds=1.0)
    codec = QuantizingCodec()
    expected_snr = sum(float(si_snr(codec.decode(codec.encode(x["wav"][None])), x["wav"][None]))
                       for x in data.items) / 5
    callback = CodecReconstruction(every_n_epochs=1, num_clips=5, batch_size=2, num_audio_samples=2)
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = Trainer(max_epochs=1, logger=loggers, callbacks=[callback], accelerator="cpu", devices=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(StandInCodecModule(), datamodule=data)
    assert float(trainer.callback_metrics["eval/codec_si_snr"]) == pytest.approx(expected_snr, rel=1e-4)
    assert 25 < expected_snr < 45  # 6-bit quantization of a -10 dB tone
    rows = list(csv.DictReader(open(os.path.join(loggers[0].log_dir, "metrics.csv"))))
    logged = [r for r in rows if r.get("eval/codec_si_snr")]
    assert len(logged) == 1 and float(logged[0]["eval/codec_si_snr"]) == pytest.approx(expected_snr, rel=1e-4)
    assert float(logged[0]["eval/codec_mel_distance"]) > 0
    media = glob.glob(os.path.join(loggers[0].log_dir, "media", "*", "*"))
    assert sum(m.endswith(".wav") for m in media) == 4 and sum(m.endswith(".png") for m in media) == 4
    assert glob.glob(os.path.join(loggers[1].log_dir, "events.out.tfevents.*"))


def test_evaluate_generation_with_the_real_musicgen_module(tmp_path):
    """No generator() method: the callback builds a MusicGen around MusicGenModule's live (EMA) LM,
    its conditioner and codec, and leaves the training weights and mode untouched."""
    from lightning_musicgen.codec import CodecConfig, CompressionModel
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    codec = CompressionModel(CodecConfig(sample_rate=SR, n_filters=4, ratios=(8, 8, 4), dimension=16, lstm_layers=0,
                                         n_q=2, card=16, kmeans_init=False))
    save_codec(codec, tmp_path / "codec.pt")
    module = MusicGenModule(lm=dict(n_q=2, card=16, dim=32, num_heads=2, num_layers=1, pattern="delay"),
                            conditioner={"text": {"name": "minilm"}, "fuse": "cross"},
                            codec_checkpoint=str(tmp_path / "codec.pt"), ema_decay=0.5, total_steps=4, warmup_steps=1)
    callback = EvaluateGeneration(every_n_steps=2, metrics=["chroma_cosine"], num_prompts=3, batch_size=2,
                                  duration=0.5, top_k=5, num_audio_samples=1)
    trainer = Trainer(max_steps=2, logger=CSVLogger(tmp_path, name="csv"), callbacks=[callback], accelerator="cpu",
                      devices=1, precision="32-true", enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    before = {k: v.clone() for k, v in module.lm.state_dict().items()}
    scalars = {}
    original = callback.evaluate

    def spy(trainer, pl_module):
        weights_at_eval = {k: v.clone() for k, v in pl_module.lm.state_dict().items()}
        modes = {name: m.training for name, m in pl_module.named_modules()}
        assert modes["lm"] and not modes["ema.module"]  # training LM, EMA copy kept in eval mode
        grads = {name: p.requires_grad for name, p in pl_module.named_parameters()}
        places = {name: (t.device, t.dtype) for name, t in pl_module.state_dict(keep_vars=True).items()}
        scalars.update(original(trainer, pl_module))
        assert pl_module.training  # train mode restored for the next step
        assert {name: m.training for name, m in pl_module.named_modules()} == modes  # every submodule's own flag
        assert {name: p.requires_grad for name, p in pl_module.named_parameters()} == grads
        assert {name: (t.device, t.dtype) for name, t in pl_module.state_dict(keep_vars=True).items()} == places
        for k, v in pl_module.lm.state_dict().items():  # generation neither casts nor changes the weights
            assert v.dtype == weights_at_eval[k].dtype and torch.equal(v, weights_at_eval[k]), k

    callback.evaluate = spy
    trainer.fit(module, datamodule=ToneData(n=4, seconds=1.0))
    assert set(scalars) == {"eval/chroma_cosine"} and 0.0 <= scalars["eval/chroma_cosine"] <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in module.lm.state_dict().items())  # it did train
    media = glob.glob(os.path.join(trainer.loggers[0].log_dir, "media", "*", "*.wav"))
    assert len(media) == 2  # one generated + its reference, 0.5 s at the codec's rate
    import soundfile as sf
    assert sf.info(sorted(media)[0]).samplerate == SR


def _eval_row(log_dir: str) -> dict:
    rows = [r for r in csv.DictReader(open(os.path.join(log_dir, "metrics.csv"))) if r.get("eval/chroma_cosine")]
    assert len(rows) == 1
    return {k: float(v) for k, v in rows[0].items() if k.startswith("eval/") and v}


def test_codec_reconstruction_with_the_real_codec_module(tmp_path):
    """CodecModule exposes eval_model() (its EMA codec): reconstructions of the fixed clips are scored
    with that model, and the codec's training mode is restored afterwards."""
    from lightning_musicgen.codec.module import CodecModule
    torch.manual_seed(0)
    module = CodecModule(codec=dict(sample_rate=SR, n_filters=4, ratios=[8, 8, 4], dimension=16, lstm_layers=0, n_q=2,
                                    card=16, kmeans_init=False),
                         discriminator_kwargs={"filters": 4, "n_ffts": [256, 128]}, ema_decay=0.9, total_steps=2)
    callback = CodecReconstruction(every_n_steps=2, num_clips=3, batch_size=2, num_audio_samples=1)
    seen = {}
    original = callback.evaluate

    def spy(trainer, pl_module):
        seen["scalars"] = original(trainer, pl_module)
        seen["codec_is"] = callback.codec_of(pl_module)
        seen["generator_training"] = pl_module.generator.training

    callback.evaluate = spy
    trainer = Trainer(max_steps=2, logger=CSVLogger(tmp_path, name="csv"), callbacks=[callback], accelerator="cpu",
                      devices=1, precision="32-true", enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    data = ToneData(n=3, seconds=0.5)
    trainer.fit(module, datamodule=data)
    assert seen["codec_is"] is module.generator_ema.module and seen["generator_training"]
    ema = module.generator_ema.module.eval()
    with torch.no_grad():
        expected = sum(float(si_snr(ema.decode(ema.encode(x["wav"][None]))[..., :x["wav"].shape[-1]], x["wav"][None]))
                       for x in data.items) / 3
    assert seen["scalars"]["eval/codec_si_snr"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert math.isfinite(seen["scalars"]["eval/codec_mel_distance"])


class TokenData(LightningDataModule):
    """Token-only validation batches (pre-tokenized shards): codes hold one MIDI pitch per clip."""

    def __init__(self):
        super().__init__()
        self.items = [{"codes": torch.full((1, 8), 60 + 3 * i, dtype=torch.long), "text": f"clip {i}"}
                      for i in range(3)]

    def train_dataloader(self):
        return DataLoader(self.items, batch_size=3)

    def val_dataloader(self):
        return DataLoader(self.items, batch_size=2)


class DecodingToneGenerator(ToneGenerator):
    def decode(self, codes):
        return torch.stack([tone(float(c[0, 0]), 2.0) for c in codes])


class StandInTokenMusicGen(StandInMusicGen):
    def generator(self, use_ema: bool = True):
        self.ema_flags.append(use_ema)
        return DecodingToneGenerator(self)

    def training_step(self, batch, batch_idx):
        return 0 * self.gain


def test_evaluate_generation_decodes_token_only_validation_batches(tmp_path):
    callback = EvaluateGeneration(every_n_steps=1, num_prompts=3, metrics=["chroma_cosine"], use_ema=False,
                                  num_audio_samples=0)
    module = StandInTokenMusicGen()
    trainer = _trainer(tmp_path, False, callback, max_steps=1)
    trainer.fit(module, datamodule=TokenData())
    assert [p.text for p in callback.prompts] == ["clip 0", "clip 1", "clip 2"]
    assert all(p.wav.shape == (1, 2 * SR) for p in callback.prompts)  # decoded with the generator's codec
    assert module.ema_flags == [False] and module.calls[0]["duration"] == pytest.approx(2.0)
    assert float(trainer.callback_metrics["eval/chroma_cosine"]) == pytest.approx(1.0)


def test_teardown_destroys_the_process_group_only_in_spawned_children(tmp_path):
    """ddp_spawn children exit right after fit: the evaluation callbacks destroy their process group at
    teardown (left to interpreter exit it aborted a child now and then). Elsewhere (the main process of
    `ddp`, which goes on) the group is left alone."""
    from types import SimpleNamespace
    import torch.distributed as dist
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
    callback = EvaluateGeneration(every_n_steps=1, metrics=["chroma_cosine"])
    spawn = _MultiProcessingLauncher.__new__(_MultiProcessingLauncher)
    script = _SubprocessScriptLauncher.__new__(_SubprocessScriptLauncher)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        callback.teardown(SimpleNamespace(strategy=SimpleNamespace(launcher=script)), None, "fit")
        assert dist.is_initialized()
        callback.teardown(SimpleNamespace(strategy=SimpleNamespace(launcher=spawn)), None, "fit")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
