"""Melody conditioning from a separate file per sample (`melody_path`): prepare -> `KEY.melody.flac` ->
the same crop span in the streaming pipeline -> the chroma the LM is conditioned on."""
import io
import json
import math
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch import Trainer

from lightning_musicgen.audio.io import read_audio
from lightning_musicgen.data.pipeline import AudioCrops
from lightning_musicgen.data.prepare import prepare
from lightning_musicgen.data.shards import iter_tar_samples
from lightning_musicgen.lm.module import MusicGenModule

SR = 8000
A4, E4, C4, G4 = 440.0, 329.63, 261.63, 392.0
PITCH_CLASS = {A4: 9, E4: 4, C4: 0, G4: 7}


def tones(*freqs, seconds=2.0):
    """Consecutive sine tones, `seconds` each, mono float [T]."""
    t = np.arange(int(seconds * SR)) / SR
    return np.concatenate([0.5 * np.sin(2 * math.pi * f * t) for f in freqs]).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    """song_a (an A, then a G) with a hummed line in stems/ (E, then C); song_b (a G) without one."""
    root = tmp_path / "in"
    (root / "stems").mkdir(parents=True)
    sf.write(root / "song_a.wav", tones(A4, A4, G4, G4), SR)
    sf.write(root / "stems" / "hum_a.wav", tones(E4, E4, C4, C4), SR)
    (root / "song_a.json").write_text(json.dumps({"description": "a", "melody_path": "stems/hum_a.wav"}))
    sf.write(root / "song_b.wav", tones(G4, G4, G4, G4), SR)
    (root / "song_b.json").write_text(json.dumps({"description": "b"}))
    index = prepare(root, tmp_path / "shards", sample_rate=SR, channels=1, shard_size=10, progress=False)
    return root, tmp_path / "shards", index


def samples(shards):
    return list(iter_tar_samples(str(shards / "shard-000000.tar"), lambda exc: pytest.fail(str(exc))))


def test_prepare_writes_the_melody_member_and_not_the_stem_as_a_sample(dataset):
    root, shards, index = dataset
    assert index["samples"] == 2  # stems/hum_a.wav is song_a's conditioning file, not a training sample
    a, b = samples(shards)
    assert json.loads(a["json"])["melody_path"] == "stems/hum_a.wav" and "melody.flac" in a
    assert "melody.flac" not in b
    melody, sr = sf.read(io.BytesIO(a["melody.flac"]), dtype="float32")
    assert sr == SR and np.abs(melody - tones(E4, E4, C4, C4)).max() < 1e-4  # 16-bit FLAC of the stem


def test_changed_or_missing_melody_file(dataset, tmp_path):
    root, shards, _ = dataset
    before = (shards / "shard-000000.tar").stat().st_mtime_ns
    sf.write(root / "stems" / "hum_a.wav", tones(C4, C4, C4, C4), SR)  # a new take of the stem
    prepare(root, shards, sample_rate=SR, shard_size=10, progress=False)
    assert (shards / "shard-000000.tar").stat().st_mtime_ns != before  # the shard was rewritten
    melody, _ = sf.read(io.BytesIO(samples(shards)[0]["melody.flac"]), dtype="float32")
    assert np.abs(melody - tones(C4, C4, C4, C4)).max() < 1e-4
    (root / "stems" / "hum_a.wav").unlink()
    index = prepare(root, tmp_path / "shards2", sample_rate=SR, shard_size=10, progress=False)
    assert index["samples"] == 1 and index["skipped_by_reason"] == {"melody_unreadable": 1}
    manifest = tmp_path / "list.jsonl"  # manifests: relative to the manifest's folder
    manifest.write_text(json.dumps({"path": "in/song_b.wav", "melody_path": "in/song_a.wav"}) + "\n")
    index = prepare(manifest, tmp_path / "shards3", sample_rate=SR, progress=False)
    assert index["samples"] == 1 and "melody.flac" in samples(tmp_path / "shards3")[0]


def test_the_melody_file_is_cropped_at_the_audio_crop_span(dataset):
    _, shards, _ = dataset
    a, b = samples(shards)
    crops = AudioCrops(sample_rate=SR, channels=1, segment_duration=2.0, min_segment_ratio=1.0)
    plan_a = {**crops.plan(a, None), "u": 0.75}  # start = 0.75 * (8 s - 2 s) = 4.5 s: G in the song, C in the stem
    items = [crops.load(a, plan_a), crops.load(b, crops.plan(b, None))]
    batch = crops.collate(items)
    assert items[0]["meta"]["start"] == pytest.approx(4.5)
    expected, _ = read_audio(io.BytesIO(a["melody.flac"]), start=4.5, duration=2.0)
    assert batch["melody"].shape == batch["wav"].shape == (2, 1, 2 * SR)
    assert torch.equal(batch["melody"][0], expected)
    assert torch.equal(batch["melody"][1], batch["wav"][1])  # no melody file: its own crop
    short = crops._melody_crop(a, 7.0, 2 * SR)  # past the melody file's end: zero-padded to the crop's length
    assert short.shape == (1, 2 * SR) and short[:, SR:].abs().max() == 0 and short[:, :SR].abs().max() > 0.4
    assert torch.equal(crops._melody_crop(a, 9.0, 2 * SR), torch.zeros(1, 2 * SR))  # entirely past its end
    resampling = AudioCrops(sample_rate=SR * 2, channels=2, segment_duration=2.0, min_segment_ratio=1.0)
    assert torch.equal(resampling._melody_crop(a, 9.0, 4 * SR), torch.zeros(2, 4 * SR))


def test_the_lm_is_conditioned_on_the_melody_file_chroma(dataset, tmp_path):
    _, shards, _ = dataset
    torch.manual_seed(0)
    module = MusicGenModule(lm={"n_q": 4, "card": 32, "dim": 32, "num_heads": 4, "num_layers": 2,
                                "cross_attention": False},
                            conditioner={"text": {"name": "minilm"}, "fuse": "prepend", "cfg_dropout": 0.0,
                                         "melody": {"sample_rate": SR, "chroma_length": 6, "n_fft": 1024,
                                                    "hop_length": 256}},
                            lr=1e-3, warmup_steps=1)
    crops = AudioCrops(sample_rate=SR, channels=1, segment_duration=2.0, min_segment_ratio=1.0)
    a, b = samples(shards)
    batch = crops.collate([crops.load(a, {**crops.plan(a, None), "u": 0.75}), crops.load(b, crops.plan(b, None))])
    batch["codes"] = torch.randint(0, 32, (2, 4, 10))  # tokens given: no codec needed for this check
    batch["mask"] = torch.ones(2, 10, dtype=torch.bool)
    seen = []
    loss = module.lm.loss
    module.lm.loss = lambda codes, conditions, mask, **kw: seen.append(conditions) or loss(codes, conditions, mask, **kw)
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    (cond,) = seen
    melody = module.conditioner.melody
    with torch.no_grad():
        from_file = melody(melody.chroma(batch["melody"][:1]))
        from_crop = melody(melody.chroma(batch["wav"][:1]))
    assert melody.chroma(batch["melody"][:1])[0].argmax(-1).mode().values == PITCH_CLASS[C4]  # the hummed C
    assert melody.chroma(batch["wav"][:1])[0].argmax(-1).mode().values == PITCH_CLASS[G4]  # the song's G
    prefix = cond.prefix[:, :6].detach()
    assert torch.allclose(prefix[:1], from_file, atol=1e-6) and not torch.allclose(prefix[:1], from_crop, atol=1e-3)
    with torch.no_grad():  # the sample without a melody file keeps today's behaviour: its crop's chroma
        assert torch.allclose(prefix[1:], melody(melody.chroma(batch["wav"][1:])), atol=1e-6)


def test_tokenize_reports_the_melody_files_it_cannot_carry(dataset, tmp_path):
    """Token shards hold no audio: a sample's melody file is listed as ignored (report and index), not
    silently lost, and the codes of both samples are written."""
    from test_data_tokens import StandInCodec

    from lightning_musicgen.data.tokenize import tokenize_shards
    _, shards, _ = dataset
    index = tokenize_shards(StandInCodec(), shards, tmp_path / "tok", progress=False)
    assert index["samples"] == 2 and index["skipped"] == 0
    assert index["ignored"] == 1 and index["ignored_by_reason"] == {"melody file not carried": 1}
    report = (tmp_path / "tok" / "report.tsv").read_text()
    assert "song_a" in report and "melody file not carried" in report and "song_b" not in report


def test_tokenize_chroma_carries_the_melody_file_to_the_lm(dataset, tmp_path):
    """`tokenize --chroma`: each token sample keeps the argmax chroma of its melody file (else of its
    audio), `CodeCrops` cuts it at the codes' crop span, and the LM's melody prefix is built from it."""
    from test_data_tokens import StandInCodec

    from lightning_musicgen.audio.chroma import ChromaExtractor
    from lightning_musicgen.data.pipeline import CodeCrops
    from lightning_musicgen.data.tokenize import tokenize_shards
    from lightning_musicgen.errors import ConfigError
    _, shards, _ = dataset
    extractor = ChromaExtractor(SR, n_fft=1024, hop_length=256, argmax=True)
    index = tokenize_shards(StandInCodec(), shards, tmp_path / "tok", progress=False, chroma=extractor)
    assert index["samples"] == 2 and index["ignored"] == 0  # the melody file is carried, as chroma
    assert index["chroma"] == {"sample_rate": SR, "n_chroma": 12, "n_fft": 1024, "hop_length": 256}
    a, b = samples(tmp_path / "tok")
    bins_a = np.load(io.BytesIO(a["chroma.npy"]))
    assert json.loads(a["json"])["chroma"]["source"] == "melody" and json.loads(b["json"])["chroma"]["source"] == "audio"
    assert len(bins_a) == 8 * SR // 256 + 1 and bins_a.dtype == np.uint8
    rate = SR / 256
    assert (bins_a[4: int(3.8 * rate)] == PITCH_CLASS[E4]).all()  # the hummed E, not the song's A
    assert (bins_a[int(4.2 * rate): -4] == PITCH_CLASS[C4]).all()  # then the hummed C, not the song's G
    crops = CodeCrops(segment_duration=2.0, min_segment_ratio=1.0)
    items = [crops.load(a, {**crops.plan(a, None), "u": 0.75}), crops.load(b, crops.plan(b, None))]
    batch = crops.collate(items)
    assert items[0]["meta"]["start"] == pytest.approx(4.5)
    frames = 2 * SR // 256 + 1  # what the extractor makes of a 2 s crop
    assert batch["chroma"].shape == (2, frames, 12) and batch["codes"].shape == (2, 2, 100)
    assert not {"melody.flac", "flac", "wav"} & set(a)  # token shards keep no audio: the chroma is carried
    first = round(4.5 * rate)
    assert torch.equal(batch["chroma"][0].argmax(-1), torch.from_numpy(bins_a[first:first + frames].astype(np.int64)))
    assert (batch["chroma"][0].argmax(-1)[:-4] == PITCH_CLASS[C4]).all()
    assert (batch["chroma"][1].argmax(-1)[4:-4] == PITCH_CLASS[G4]).all()  # song_b: its own audio's chroma
    tail = crops.chroma_crop(a, json.loads(a["json"]), 7.0)  # past the end of the piece: the null bin 0
    assert tail.shape == (frames,) and (tail[int(1.2 * rate):] == 0).all()

    def module(hop):
        torch.manual_seed(0)
        return MusicGenModule(lm={"n_q": 2, "card": 64, "dim": 32, "num_heads": 4, "num_layers": 1,
                                  "cross_attention": False},
                              conditioner={"text": {"name": "minilm"}, "fuse": "prepend", "cfg_dropout": 0.0,
                                           "melody": {"sample_rate": SR, "chroma_length": frames, "n_fft": 1024,
                                                      "hop_length": hop}}, lr=1e-3, warmup_steps=1)
    lm = module(256).eval()
    with torch.no_grad():
        prefix = lm.conditions(batch).prefix[:, :frames]
        assert torch.allclose(prefix, lm.conditioner.melody(batch["chroma"]), atol=1e-6)
        assert not torch.allclose(prefix[0], prefix[1], atol=1e-3)  # C and G crops give different prefixes
    with pytest.raises(ConfigError, match="hop_length=256.*melody.hop_length=512"):
        module(512).conditions(batch)
