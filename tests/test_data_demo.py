"""demo-data: pieces from music21's corpus rendered with tinysoundfont; captions from real metadata; shards."""
import itertools
import json
import tarfile

import pytest
import soundfile as sf
import torch

from conftest import run_cli
from lightning_musicgen.audio.loudness import integrated_loudness
from lightning_musicgen.data import demo, demo_corpus, demo_render, read_index


def spec(tmp_path, path, number=None, collection="bach", seed=1, channels=1):
    return {"id": path.replace("/", "_") + (f"_{number}" if number else ""), "collection": collection,
            "path": path, "number": number, "seed": seed, "out_dir": str(tmp_path), "channels": channels,
            "soundfont": demo_render.default_soundfont(), "sample_rate": 32000, "max_seconds": 90.0}


def test_bach_chorale_caption_tempo_and_gain(tmp_path):
    from music21 import corpus
    meta = demo_render.render_piece(spec(tmp_path, "bach/bwv66.6.mxl"))
    assert "error" not in meta, meta
    text = meta["description"]
    verb = "singing" if meta["ensemble"] == "a choir" else "playing"
    assert text.endswith(f"{verb} a Baroque chorale by J.S. Bach in F sharp minor, 4/4, {meta['bpm']} BPM")
    assert text[0].isupper() and meta["ensemble"].lower() in text.lower()
    assert meta["key"] == "F sharp minor" and meta["time_signature"] == "4/4" and meta["artist"] == "Johann Sebastian Bach"
    wav, sr = sf.read(tmp_path / f"{meta['id']}.flac")
    assert sr == 32000 and wav.ndim == 1
    # the rendered length follows the caption's tempo: last note-off + 1.5 s release tail
    score = corpus.parse("bach/bwv66.6").stripTies()
    try:
        score = score.expandRepeats()
    except Exception:
        pass
    last_off = max(float(n.offset + n.quarterLength) for p in score.parts for n in p.flatten().notes)
    expected = (last_off - 0.04 * float(score.flatten().notes[-1].quarterLength)) * 60 / meta["bpm"] + 1.5
    assert len(wav) / sr == pytest.approx(expected, abs=0.05)
    peak = abs(wav).max()
    assert 0.05 < peak <= 0.8901  # gain-staged: loud enough, never clipping
    assert integrated_loudness(torch.from_numpy(wav[None]).float(), sr) == pytest.approx(-18.0, abs=0.6) or peak > 0.88


def test_folk_tune_caption_uses_title_and_tune_type(tmp_path):
    from music21 import corpus
    meta = demo_render.render_piece(spec(tmp_path, "ryansMammoth/SoldiersJoy.abc", collection="ryansMammoth", seed=3))
    assert "error" not in meta, meta
    score = corpus.parse("ryansMammoth/SoldiersJoy.abc")
    assert meta["title"] == "Soldiers' Joy" == demo_corpus.clean_title(score.metadata.title)
    assert meta["description"].endswith(
        f'playing a traditional fiddle tune, "Soldiers\' Joy", in D major, 2/4, {meta["bpm"]} BPM')
    assert meta["artist"] == "Traditional" and meta["instrument"]
    essen = demo_render.render_piece(spec(tmp_path, "essenFolksong/altdeu10.abc", 5, "essenFolksong", seed=2))
    assert "playing a German folk song in G major, 4/2," in essen["description"]
    assert essen["title"] == "Der Graf von Rom oder der Graf im Pfluge"
    stereo = demo_render.render_piece(spec(tmp_path / "st", "essenFolksong/altdeu10.abc", 5, "essenFolksong", seed=2,
                                    channels=2))
    wav, sr = sf.read(tmp_path / "st" / f"{stereo['id']}.flac")
    assert wav.shape[1] == 2 and stereo["description"] == essen["description"]


def test_catalogue_and_plan_are_deterministic():
    cat = demo_corpus.catalogue()
    assert len(cat["bach"]) > 300 and len(cat["essenFolksong"]) > 1000 and len(cat["oneills1850"]) > 1000
    first = list(itertools.islice(demo_corpus.plan_pieces(5), 30))
    assert first == list(itertools.islice(demo_corpus.plan_pieces(5), 30))
    assert first != list(itertools.islice(demo_corpus.plan_pieces(6), 30))
    assert len({p["id"] for p in first}) == 30 and len({p["collection"] for p in first}) >= 4


def test_build_demo_writes_disjoint_train_valid_shards(tmp_path):
    summary = demo.build_demo(tmp_path / "demo", minutes=1.0, valid_fraction=0.2, seed=0, workers=1,
                              max_piece_seconds=20.0, shard_size=2, progress=False)
    train, valid = read_index(tmp_path / "demo" / "train"), read_index(tmp_path / "demo" / "valid")
    assert train["duration"] >= 0.8 * 60 - 1e-6 and valid["duration"] >= 0.2 * 60 - 1e-6
    assert summary["train"]["samples"] == train["samples"] >= 2
    metas = {}
    for split in ("train", "valid"):
        metas[split] = []
        for shard in sorted((tmp_path / "demo" / split).glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                metas[split] += [json.loads(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".json")]
    assert not {m["corpus_path"] + str(m.get("work_number")) for m in metas["train"]} & \
        {m["corpus_path"] + str(m.get("work_number")) for m in metas["valid"]}
    for m in metas["train"] + metas["valid"]:
        assert m["description"].endswith(f"{m['bpm']} BPM") and m["duration"] <= 20.0 + 1e-6
        assert m["sample_rate"] == 32000 and m["channels"] == 1
    # re-running resumes: nothing is rendered or written again
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*.tar")}
    demo.build_demo(tmp_path / "demo", minutes=1.0, valid_fraction=0.2, seed=0, workers=1,
                    max_piece_seconds=20.0, shard_size=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*.tar")} == before


def test_bad_soundfont_is_a_one_line_error(tmp_path):
    bad = tmp_path / "x.sf2"
    bad.write_bytes(b"not a soundfont")
    out = run_cli("demo-data", "--output", tmp_path / "d", "--minutes", "1", "--soundfont", bad)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith(f"error: {bad}: not a loadable SoundFont")
