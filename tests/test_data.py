"""Data: prepare (folder/manifest -> shards, bad files, resume), streaming crops, datamodules, captions."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import ROOT, run_cli
from lightning_musicgen.data import AudioDataModule, TextAugment, expand_shards, read_index
from lightning_musicgen.data import pipeline
from lightning_musicgen.data.pipeline import AudioCrops, TrainStream, ValidStream
from lightning_musicgen.data.prepare import prepare
from lightning_musicgen.data.shards import AtomicShardWriter


def tone(seconds, sr=44100, freq=440.0, channels=2, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 - 0.3 * c) for c in range(channels)], 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 good stereo 44.1 kHz files with sidecars + one of each bad kind."""
    d = tmp_path_factory.mktemp("audio")
    (d / "sub").mkdir()
    for i in range(6):
        path = d / ("sub" if i % 2 else ".") / f"song{i}.wav"
        sf.write(path, tone(3 + i, freq=200 + 100 * i), 44100)
        path.with_suffix(".json").write_text(json.dumps(
            {"description": f"song number {i}", "genre": "test", "bpm": 90 + i, "key": "C major"}))
    sf.write(d / "short.wav", tone(0.2), 44100)
    sf.write(d / "silent.flac", np.zeros((44100 * 2, 2)), 44100)
    nan = tone(2).astype(np.float32)
    nan[1000, 0] = np.nan
    sf.write(d / "nan.wav", nan, 44100, subtype="FLOAT")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    (d / "empty.wav").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    prepare(folder, out, sample_rate=32000, channels=1, shard_size=3, workers=1, progress=False)
    return out


def test_prepare_writes_flac_shards_index_and_report(shards):
    index = read_index(shards)
    assert index["samples"] == 6 and index["sample_rate"] == 32000 and index["channels"] == 1
    assert index["duration"] == pytest.approx(sum(3 + i for i in range(6)), abs=0.01)
    assert index["skipped_by_reason"] == {"short": 1, "silent": 1, "non_finite": 1, "unreadable": 2}
    report = (shards / "report.tsv").read_text().splitlines()[1:]
    assert sorted(Path(line.split("\t")[0]).name for line in report) == \
        ["corrupt.wav", "empty.wav", "nan.wav", "short.wav", "silent.flac"]
    members = []
    for url in expand_shards(shards):
        with tarfile.open(url) as tar:
            members += tar.getnames()
    assert len(members) == 12 and sum(m.endswith(".flac") for m in members) == 6
    with tarfile.open(shards / "shard-000001.tar") as tar:
        names = tar.getnames()
        flac = tar.extractfile(next(n for n in names if n.endswith(".flac"))).read()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    data, sr = sf.read(io.BytesIO(flac))
    assert sr == 32000 and data.ndim == 1
    assert meta["duration"] == pytest.approx(len(data) / 32000) and meta["description"].startswith("song number")
    assert meta["bpm"] in range(90, 96) and meta["sample_rate"] == 32000


def test_manifest_input_and_one_line_errors(folder, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,caption,mood\n" + "".join(
        f"{folder}/{'sub/' if i % 2 else ''}song{i}.wav,caption {i},calm\n" for i in range(2)))
    index = prepare(manifest, tmp_path / "out", shard_size=10, progress=False)
    assert index["samples"] == 2
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".json")]
    assert [m["description"] for m in metas] == ["caption 0", "caption 1"] and metas[0]["mood"] == "calm"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "no path"}\n')
    out = run_cli("prepare", "--input", bad, "--output", tmp_path / "x")
    assert out.returncode == 2 and out.stderr.strip() == f"error: {bad}:1: no path column (one of path, audio, file, filepath)"
    out = run_cli("prepare", "--input", tmp_path / "missing", "--output", tmp_path / "x")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "missing" in out.stderr


def test_killed_prepare_resumes_without_duplicate_or_truncated_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        sf.write(src / f"f{i:02d}.wav", tone(4, freq=150 + 20 * i), 44100)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lightning_musicgen", "prepare", "--input", str(src),
                             "--output", str(out), "--shard-size", "2", "--workers", "1", "--no-progress"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shard-000002.stats.json").exists():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "prepare finished before it was killed: test is void"
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert done_before, "no shard finished before the kill"
    leftover = out / "shard-000011.tar.tmp-99999"   # what a kill mid-write leaves behind
    leftover.write_bytes(b"partial")
    index = prepare(src, out, shard_size=2, workers=1, progress=False)
    assert index["samples"] == 24 and len(index["shards"]) == 12
    assert not list(out.glob("*.tmp-*"))
    for name, mtime in done_before.items():  # finished shards were kept, not rewritten
        if (out / name.replace(".tar", ".stats.json")).exists():
            assert (out / name).stat().st_mtime_ns == mtime
    keys = []
    for url in expand_shards(out):
        with tarfile.open(url) as tar:  # raises on a truncated tar
            keys += [n.split(".")[0] for n in tar.getnames() if n.endswith(".flac")]
    assert len(keys) == len(set(keys)) == 24
    # a changed input rewrites only its own shard
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    sf.write(src / "f05.wav", tone(2, freq=900), 44100)
    index = prepare(src, out, shard_size=2, workers=1, progress=False)
    changed = {p.name for p in out.glob("shard-*.tar") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"shard-000002.tar"} and index["duration"] == pytest.approx(23 * 4 + 2, abs=0.01)


def test_expand_shards_patterns(shards, tmp_path):
    urls = expand_shards(shards)
    assert [Path(u).name for u in urls] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert expand_shards(str(shards / "shard-{000001..000002}.tar")) == urls[1:3]
    assert expand_shards(str(shards / "shard-*.tar")) == urls
    assert expand_shards(shards / "index.json") == urls
    assert expand_shards("pipe:cat /x/a-{0..1}.tar") == ["pipe:cat /x/a-0.tar", "pipe:cat /x/a-1.tar"]
    with pytest.raises(FileNotFoundError, match="shard-000004.tar: shard not found"):
        expand_shards(str(shards / "shard-{000003..000004}.tar"))


def test_batches_shapes_rates_masks_and_captions(shards):
    dm = AudioDataModule(shards, shards, sample_rate=16000, channels=2, segment_duration=4.0, batch_size=3,
                         num_workers=0, epoch_steps=4, shuffle_buffer=4, merge_text_p=0.0, seed=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for b in batches:
        assert b["wav"].shape == (3, 2, 64000) and b["wav"].dtype == torch.float32
        assert b["mask"].shape == (3, 64000) and b["mask"].dtype == torch.bool
        for i, meta in enumerate(b["meta"]):
            real = int(b["mask"][i].sum())
            expected = min(64000, round((meta["duration"] - meta["start"]) * 16000))
            assert abs(real - expected) <= 2
            assert meta["start"] <= max(0.0, meta["duration"] - 4.0 * 0.8) + 1e-6
            assert (b["wav"][i, :, real:] == 0).all() and b["wav"][i, :, :real].abs().max() > 0.05
            assert b["text"][i] == meta["description"]
    val = list(dm.val_dataloader())
    assert sum(len(b["text"]) for b in val) == 6
    assert sorted(t for b in val for t in b["text"]) == [f"song number {i}" for i in range(6)]
    assert all(m["start"] == 0.0 for b in val for m in b["meta"])


def test_pipe_urls_ranks_and_loudness_option(shards):
    """`pipe:` shards stream like local ones; node ranks get different streams; loudness option applies."""
    from lightning_musicgen.audio.loudness import integrated_loudness
    urls = f"pipe:cat {shards}/shard-{{000001..000003}}.tar"
    dm = AudioDataModule(urls, urls, segment_duration=2.0, batch_size=2, num_workers=0, epoch_steps=2,
                         normalize_loudness=True, loudness_target=-20.0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["meta"][0]["shard"].startswith("pipe:cat ")
    for b in batches:
        for i in range(2):
            real = int(b["mask"][i].sum())
            assert integrated_loudness(b["wav"][i, :, :real], 32000) == pytest.approx(-20.0, abs=0.5)
    assert sum(len(b["text"]) for b in dm.val_dataloader()) == 6
    decoder = AudioCrops(32000, 1, 0.5)
    rank0 = [m["key"] for b in TrainStream(expand_shards(shards), decoder, 2, 6, seed=0, shuffle_buffer=2)
             for m in b["meta"]]
    rank1 = [m["key"] for b in TrainStream(expand_shards(shards), decoder, 2, 6, seed=0, shuffle_buffer=2,
                                           rank=1, world_size=2) for m in b["meta"]]
    assert rank0 != rank1


def test_frequency_survives_resampling(shards):
    """The FLAC at 32 kHz read back at 16 kHz still holds the source tone (song0 = 200 Hz)."""
    dm = AudioDataModule(None, shards, sample_rate=16000, segment_duration=2.0, batch_size=6, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    i = [m["description"] for m in batch["meta"]].index("song number 0")
    spectrum = torch.fft.rfft(batch["wav"][i, 0]).abs()
    assert abs(float(spectrum.argmax()) * 16000 / 32000 - 200) < 1.0


def test_validation_is_deterministic_and_split_covers_each_sample_once(shards, monkeypatch):
    decoder = AudioCrops(32000, 1, 1.0)
    urls = expand_shards(shards)
    reference = [m["key"] for b in ValidStream(urls, decoder, 4) for m in b["meta"]]
    assert len(reference) == 6 and reference == [m["key"] for b in ValidStream(urls, decoder, 4) for m in b["meta"]]
    for world, workers in [(2, 2), (2, 1), (3, 3)]:  # 4 shards: split by shard, then by sample index
        seen = []
        for rank in range(world):
            for w in range(workers):
                monkeypatch.setattr(pipeline, "_worker", lambda w=w: (w, workers))
                seen += [m["key"] for b in ValidStream(urls, decoder, 2, rank=rank, world_size=world)
                         for m in b["meta"]]
        assert sorted(seen) == sorted(reference), (world, workers)


class _KeyDecoder:
    """A decoder that returns sample keys: isolates the stream's splitting logic from audio decoding."""

    def plan(self, sample, rng):
        return {}

    def load(self, sample, plan):
        return {"meta": {"key": sample["__key__"]}}

    def collate(self, items):
        return {"meta": [it["meta"] for it in items]}


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    urls = []
    for s, count in enumerate([3, 0, 2, 5, 1, 4, 2]):
        with AtomicShardWriter(d / f"s{s}.tar") as w:
            for i in range(count):
                w.write(f"s{s}_{i}", {"json": b"{}"})
        urls.append(str(d / f"s{s}.tar"))
    return urls


def test_split_property_every_sample_exactly_once(tiny_shards, monkeypatch):
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.permutations(range(7)), st.integers(1, 7), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3))
    def check(order, n_shards, world, workers, batch):
        urls = [tiny_shards[i] for i in order[:n_shards]]
        expected = sorted(f"{Path(u).stem}_{i}" for u in urls for i in range([3, 0, 2, 5, 1, 4, 2][int(Path(u).stem[1:])]))
        seen = []
        for rank in range(world):
            for w in range(workers):
                monkeypatch.setattr(pipeline, "_worker", lambda w=w: (w, workers))
                seen += [m["key"] for b in ValidStream(urls, _KeyDecoder(), batch, rank=rank, world_size=world)
                         for m in b["meta"]]
        assert sorted(seen) == expected

    check()


def _keys(batches):
    return [(m["key"], m["start"], t) for b in batches for m, t in zip(b["meta"], b["text"])]


def test_train_stream_same_seed_same_batches_and_exact_resume(shards):
    kw = dict(segment_duration=1.0, batch_size=2, num_workers=2, epoch_steps=5, shuffle_buffer=3,
              merge_text_p=0.5, word_dropout=0.2)
    dm = AudioDataModule(shards, **kw, seed=3)
    run = [_keys(dm.train_dataloader()) for _ in range(2)]  # epochs 0 and 1
    assert run[0] != run[1]
    again = AudioDataModule(shards, **kw, seed=3)
    assert [_keys(again.train_dataloader()) for _ in range(2)] == run
    assert _keys(AudioDataModule(shards, **kw, seed=4).train_dataloader()) != run[0]
    # interrupted after 3 batches of epoch 1: the resumed run sees exactly the remaining batches
    first = AudioDataModule(shards, **kw, seed=3)
    list(first.train_dataloader())
    it = iter(first.train_dataloader())
    [next(it) for _ in range(3)]
    state = first.state_dict()
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 3)
    resumed = AudioDataModule(shards, **kw, seed=3)
    resumed.load_state_dict(state)
    assert _keys(resumed.train_dataloader()) == run[1][6:]
    assert _keys(resumed.train_dataloader()) == _keys(dm.train_dataloader())  # and epoch 2 continues alike


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_inside_lightning_fit(shards, tmp_path, workers):
    """Checkpoint mid-epoch, resume: the batches after the checkpoint equal the uninterrupted run's."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(tuple((m["key"], m["start"]) for m in batch["meta"]))
            return (self.w - batch["wav"].mean()).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(max_steps, ckpt=None, callbacks=()):
        dm = AudioDataModule(shards, segment_duration=0.5, batch_size=2, num_workers=workers, epoch_steps=4,
                             seed=7, shuffle_buffer=3)
        model = Recorder()
        trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=list(callbacks), default_root_dir=tmp_path,
                            enable_checkpointing=bool(callbacks), num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model.seen

    full = fit(10)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1)
    assert fit(6, callbacks=[ck]) == full[:6]
    mid_epoch, epoch_end = tmp_path / "ck" / "epoch=1-step=6.ckpt", next((tmp_path / "ck").glob("*step=4.ckpt"))
    state = torch.load(mid_epoch, weights_only=False)["AudioDataModule"]
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 2)
    assert fit(10, ckpt=str(mid_epoch)) == full[6:]
    state = torch.load(epoch_end, weights_only=False)["AudioDataModule"]
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 0)
    assert fit(10, ckpt=str(epoch_end)) == full[4:]


def _corrupt_shard(path, good_wav):
    with AtomicShardWriter(path) as w:
        buf = io.BytesIO()
        sf.write(buf, good_wav, 32000, format="FLAC")
        meta = json.dumps({"duration": len(good_wav) / 32000, "description": "good"}).encode()
        w.write("a_good", {"flac": buf.getvalue(), "json": meta})
        w.write("b_garbage", {"flac": b"fLaC not really", "json": meta})
        nan = io.BytesIO()
        bad = good_wav.astype(np.float32).copy()
        bad[5:] = np.nan
        sf.write(nan, bad, 32000, format="WAV", subtype="FLOAT")
        w.write("c_nan", {"wav": nan.getvalue(), "json": meta})
        w.write("d_nojson", {"flac": buf.getvalue()})
        w.write("e_badjson", {"flac": buf.getvalue(), "json": b"{not json"})


def test_corrupt_samples_in_shards_are_skipped_and_counted(tmp_path):
    _corrupt_shard(tmp_path / "shard-000000.tar", tone(1.0, sr=32000, channels=1)[:, 0])
    dm = AudioDataModule(str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000000.tar"),
                         segment_duration=0.5, batch_size=2, num_workers=0, epoch_steps=3, shuffle_buffer=1)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(t == "good" for b in batches for t in b["text"])
    # per pass over the shard: 1 good, 4 bad; 6 good samples need 6 passes (the 6th can stop after 'a')
    assert dm.skipped_samples == 20
    assert batches[-1]["meta"][-1]["skipped_samples"] == 20
    val = list(dm.val_dataloader())
    assert [m["key"] for b in val for m in b["meta"]] == ["a_good"] and val[0]["meta"][0]["skipped_samples"] == 4
    # a truncated shard keeps the samples before the damage and counts the error
    data = (tmp_path / "shard-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        cut = tar.getmember("c_nan.wav").offset_data + 100
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    stream = ValidStream([str(tmp_path / "cut.tar")], AudioCrops(32000, 1, 0.5), 4)
    got = list(stream)
    assert [m["key"] for b in got for m in b["meta"]] == ["a_good"]
    assert got[0]["meta"][0]["skipped_samples"] == 2  # b_garbage + the tar error that ends the shard
    


def test_skipped_samples_logger_logs_metric(tmp_path):
    import lightning as L
    from lightning_musicgen.training import SkippedSamplesLogger
    _corrupt_shard(tmp_path / "s.tar", tone(1.0, sr=32000, channels=1)[:, 0])

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch["wav"].mean()).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = AudioDataModule(str(tmp_path / "s.tar"), segment_duration=0.5, batch_size=2, num_workers=0,
                         epoch_steps=2, shuffle_buffer=1)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[SkippedSamplesLogger(every_n_steps=1)],
                        default_root_dir=tmp_path)
    trainer.fit(M(), datamodule=dm)
    assert trainer.callback_metrics["train/skipped_samples"] == dm.skipped_samples > 0


def test_text_augmentation_semantics():
    meta = {"description": "A calm piano piece.", "key": "C major", "bpm": 90.0, "genre": "classical",
            "moods": ["calm", "soft"], "title": "ignored"}
    rng = np.random.default_rng(0)
    assert TextAugment(0.0, 1.0, 1.0).sample(meta, rng) == "A calm piano piece"
    all_fields = TextAugment(1.0, 0.0, 0.0).sample(meta, rng)
    assert all_fields.startswith("A calm piano piece. ") and sorted(all_fields.split(". ")[1:]) == \
        ["bpm: 90", "genre: classical", "key: C major", "moods: calm, soft"]
    assert TextAugment(1.0, 1.0, 0.0).sample(meta, rng).count(": ") == 4
    assert TextAugment(1.0, 1.0, 1.0).sample(meta, rng) == ""
    texts = [TextAugment(0.0, 0.0, 0.0, word_dropout=0.5).sample(meta, np.random.default_rng(i)) for i in range(200)]
    kept = np.mean([len(t.split()) for t in texts]) / 4
    assert 0.4 < kept < 0.6
    assert TextAugment.deterministic(meta) == "A calm piano piece"
    assert TextAugment.deterministic({"key": "D minor", "bpm": 120}) == "key: D minor. bpm: 120"
    with pytest.raises(ValueError, match="merge_text_p=1.5"):
        TextAugment(1.5)


def test_loudness_normalisation_hits_target_without_clipping():
    from lightning_musicgen.audio.loudness import integrated_loudness, normalize_loudness
    x = torch.from_numpy(tone(3.0, sr=32000, channels=1, amp=0.01).T.copy()).float()
    y = normalize_loudness(x, 32000, target_lufs=-20.0)
    assert integrated_loudness(y, 32000) == pytest.approx(-20.0, abs=0.1)
    assert float(normalize_loudness(x, 32000, target_lufs=0.0).abs().max()) == pytest.approx(0.01 * 10 ** 1.5, rel=1e-3)
    loud = normalize_loudness(x, 32000, target_lufs=0.0, max_gain_db=60.0, peak=0.5)
    assert float(loud.abs().max()) == pytest.approx(0.5, rel=1e-4)
    silence = torch.zeros(1, 32000)
    assert torch.equal(normalize_loudness(silence, 32000), silence)
