"""Token shards: the tokenize writer (stand-in codec and a real tiny CompressionModel) and TokenDataModule."""
import io
import json
import math
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from conftest import run_cli
from lightning_musicgen.audio.io import load_audio
from lightning_musicgen.data import TokenDataModule, read_index
from lightning_musicgen.data.prepare import prepare
from lightning_musicgen.data.tokenize import encode_long, tokenize_shards
from lightning_musicgen.model_files.codec import save_codec


class StandInCodec(nn.Module):
    """The CompressionModel contract with a tiny strided conv encoder (receptive field 2 hops) and a
    scalar quantizer: codes depend on neighbouring frames, so chunk seams are exercised."""

    sample_rate, channels, frame_rate, card = 16000, 1, 50, 64

    def __init__(self, n_q=2):
        super().__init__()
        self.n_q = n_q
        self.hop = self.sample_rate // self.frame_rate
        self.conv = nn.Conv1d(1, n_q, kernel_size=3 * self.hop, stride=self.hop, padding=self.hop)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight, std=0.05)

    def encode(self, wav):
        frames = math.ceil(wav.shape[-1] / self.hop)
        wav = nn.functional.pad(wav, (0, frames * self.hop - wav.shape[-1]))
        z = self.conv(wav)[..., :frames]
        return ((torch.tanh(z) + 1) / 2 * (self.card - 1)).round().long()


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for i in range(5):
        x = 0.2 * rng.standard_normal(int(32000 * (2.5 + i)))
        sf.write(src / f"clip{i}.flac", x, 32000)
        (src / f"clip{i}.json").write_text(json.dumps({"description": f"clip {i}", "bpm": 100 + i}))
    out = tmp_path_factory.mktemp("shards")
    prepare(src, out, sample_rate=32000, shard_size=2, progress=False)
    return out


def test_chunked_encoding_equals_whole_file_encoding():
    codec = StandInCodec()
    wav = torch.randn(1, 16000 * 3 + 123)
    whole = codec.encode(wav[None])[0]
    assert torch.equal(encode_long(codec, wav, chunk_seconds=0.7, context_seconds=0.1), whole)
    # without context the seams differ: the context is what makes chunking exact
    assert not torch.equal(encode_long(codec, wav, chunk_seconds=0.7, context_seconds=0.0), whole)


def test_tokenize_writes_codes_and_metadata(audio_shards, tmp_path):
    codec = StandInCodec()
    index = tokenize_shards(codec, audio_shards, tmp_path / "tok", chunk_seconds=1.0, progress=False)
    assert index["kind"] == "tokens" and index["samples"] == 5 and index["frame_rate"] == 50
    assert index["n_q"] == 2 and index["card"] == 64
    with tarfile.open(tmp_path / "tok" / "shard-000001.tar") as tar:
        names = sorted(tar.getnames())
        codes = np.load(io.BytesIO(tar.extractfile(names[0]).read()))
        meta = json.loads(tar.extractfile(names[1]).read())
    with tarfile.open(audio_shards / "shard-000001.tar") as tar:
        wav, _ = load_audio(io.BytesIO(tar.extractfile(names[0].replace(".codes.npy", ".flac")).read()), 16000, 1)
    assert names[0].endswith(".codes.npy") and meta["description"] == "clip 2" and meta["bpm"] == 102
    assert torch.equal(torch.from_numpy(codes.astype(np.int64)), codec.encode(wav[None])[0])
    assert meta["frames"] == codes.shape[1] == math.ceil(wav.shape[-1] / 320)
    assert meta["duration"] == pytest.approx(4.5, abs=1e-3)
    # resume: finished shards are not rewritten
    before = (tmp_path / "tok" / "shard-000000.tar").stat().st_mtime_ns
    tokenize_shards(codec, audio_shards, tmp_path / "tok", progress=False)
    assert (tmp_path / "tok" / "shard-000000.tar").stat().st_mtime_ns == before


def test_shard_filename_of_paths_and_pipes():
    from lightning_musicgen.data.tokenize import shard_filename
    assert shard_filename("/d/shard-000003.tar") == "shard-000003.tar"
    assert shard_filename("pipe:aws s3 cp s3://b/train/shard-000001.tar -") == "shard-000001.tar"
    with pytest.raises(ValueError, match="no word ending in .tar"):
        shard_filename("pipe:cat something")


def test_token_datamodule_batches(audio_shards, tmp_path):
    tokenize_shards(StandInCodec(n_q=3), audio_shards, tmp_path / "tok", progress=False)
    dm = TokenDataModule(tmp_path / "tok", tmp_path / "tok", segment_duration=3.0, min_segment_ratio=0.5,
                         batch_size=2, num_workers=0, epoch_steps=3, merge_text_p=0.0, seed=0)
    for batch in dm.train_dataloader():
        assert set(batch) == {"codes", "mask", "text", "meta"}
        assert batch["codes"].shape == (2, 3, 150) and batch["codes"].dtype == torch.long
        assert batch["mask"].shape == (2, 150)
        for i, meta in enumerate(batch["meta"]):
            real = int(batch["mask"][i].sum())
            assert real == min(150, meta["frames"] - round(meta["start"] * 50))
            assert real >= 75 or meta["frames"] < 75
            assert (batch["codes"][i, :, real:] == 0).all()
            assert batch["text"][i] == meta["description"]
    val = [m["description"] for b in dm.val_dataloader() for m in b["meta"]]
    assert sorted(val) == [f"clip {i}" for i in range(5)]


def test_tokenize_cli_with_a_real_compression_model(audio_shards, tmp_path):
    from lightning_musicgen.codec import CompressionModel
    codec = CompressionModel(sample_rate=16000, n_filters=4, dimension=8, ratios=(8, 4), n_q=2, card=32,
                             lstm_layers=0, kmeans_init=False).eval()
    ckpt = save_codec(codec, tmp_path / "codec.pt")
    out = run_cli("tokenize", "--codec", ckpt, "--input", audio_shards, "--output", tmp_path / "tok",
                  "--chunk-seconds", "1.5", "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    index = read_index(tmp_path / "tok")
    assert index["samples"] == 5 and index["n_q"] == 2 and index["frame_rate"] == 500
    with tarfile.open(tmp_path / "tok" / "shard-000000.tar") as tar:
        name = sorted(tar.getnames())[0]
        codes = np.load(io.BytesIO(tar.extractfile(name).read()))
    with tarfile.open(audio_shards / "shard-000000.tar") as tar:
        wav, _ = load_audio(io.BytesIO(tar.extractfile(name.replace(".codes.npy", ".flac")).read()), 16000, 1)
    with torch.no_grad():
        whole = codec.encode(wav[None])[0].numpy()
    assert codes.shape == whole.shape and (codes == whole).mean() > 0.99
    bad = run_cli("tokenize", "--codec", tmp_path / "missing.pt", "--input", audio_shards, "--output", tmp_path / "x")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'missing.pt'}: codec checkpoint not found"


def test_token_shards_written_before_the_rename_read_with_the_current_names():
    """A token sample's metadata with audiocraft's keys (`cardinality`, `num_codebooks`) reaches the batch as
    `card` / `n_q`; disagreeing old and new keys make the sample unreadable (skipped), not a crash."""
    from lightning_musicgen.data.pipeline import CodeCrops, CorruptSample
    buf = io.BytesIO()
    np.save(buf, np.arange(2 * 50, dtype=np.int16).reshape(2, 50))
    crops = CodeCrops(segment_duration=None)
    old = {"frame_rate": 50.0, "cardinality": 64, "num_codebooks": 2, "description": "old shard"}
    sample = {"__key__": "a", "json": json.dumps(old).encode(), "codes.npy": buf.getvalue()}
    item = crops.load(sample, crops.plan(sample, None))
    assert (item["meta"]["card"], item["meta"]["n_q"]) == (64, 2)
    assert "cardinality" not in item["meta"] and "num_codebooks" not in item["meta"]
    assert item["x"].shape == (2, 50)
    both = dict(old, card=32)
    sample["json"] = json.dumps(both).encode()
    with pytest.raises(CorruptSample, match="both card=32 and its old name cardinality=64"):
        crops.load(sample, crops.plan(sample, None))
