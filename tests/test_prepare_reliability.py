"""`prepare` never loses or silently truncates data (issue 13, cases 7-11).

7  the output folder: another dataset's shards, a file, a concurrent run
8  truncated WAV / OGG / MP3 / FLAC: detected, kept (or skipped by a flag), always reported
9  surround downmix with ITU-R BS.775 coefficients, and the silence check after it
10 bad sidecars, ignored paths, escaped report, one sidecar per audio file
11 adding, removing or changing one file rewrites only its shard
"""
import hashlib
import io
import json
import os
import shutil
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
from lightning_musicgen.audio.channels import downmix_matrix, to_channels
from lightning_musicgen.data.prepare import prepare
from lightning_musicgen.data.shards import read_index, read_report
from lightning_musicgen.errors import InputError

SR = 16000


def signal_(seconds=1.5, freq=440.0, channels=1, seed=0, sr=SR):
    """A tone plus a little noise (noise keeps lossy encoders busy, so truncation cuts real audio)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, 1).astype(np.float32)


def write_tones(folder: Path, names, seconds=1.5):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sf.write(folder / name, signal_(seconds, 200 + 40 * i, seed=i), SR)


def shard_bytes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


def members(tar_path: Path) -> dict[str, dict]:
    """sample key -> {"meta": dict, "wav": float array [T, C]}."""
    out = {}
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        for n in names:
            if n.endswith(".json"):
                key = n[:-5]
                data, _ = sf.read(io.BytesIO(tar.extractfile(f"{key}.flac").read()), always_2d=True)
                out[key] = {"meta": json.loads(tar.extractfile(n).read()), "wav": data}
    return out


def all_samples(out: Path) -> dict[str, dict]:
    """source name -> sample, over every shard of the index."""
    samples = {}
    for shard in read_index(out)["shards"]:
        for sample in members(out / shard["name"]).values():
            samples[sample["meta"]["source"]] = sample
    return samples


# ---- 7 ------------------------------------------------------------------------------------------------

def test_7_output_folder_of_another_dataset_a_file_or_a_running_prepare_is_refused(tmp_path, capsys):
    write_tones(tmp_path / "a", [f"a{i}.wav" for i in range(3)])
    write_tones(tmp_path / "b", [f"b{i}.wav" for i in range(3)])
    theirs = tmp_path / "theirs"
    prepare(tmp_path / "a", theirs, sample_rate=SR, shard_size=2, min_duration=0.1, progress=False)
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}

    # another input into their folder: refused in one line, nothing of theirs touched (the CLI's entry
    # point in this process; the concurrent case below runs real processes)
    from lightning_musicgen.__main__ import main
    code = main(["prepare", "--input", str(tmp_path / "b"), "--output", str(theirs), "--sample-rate", str(SR),
                 "--min-duration", "0.1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --output {theirs}: holds files")
    assert "--overwrite" in err
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before

    # --output naming a file: one line, the file untouched
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    code = main(["prepare", "--input", str(tmp_path / "a"), "--output", str(a_file), "--no-progress"])
    assert code == 2 and capsys.readouterr().err == f"error: --output {a_file}: is a file; give a folder (new, " \
                                                    "empty, or prepared from this input)\n"
    assert a_file.read_text() == "keep me"

    # a folder with the user's own files: refused; --overwrite writes, and still deletes nothing of theirs
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "README.md").write_text("mine")
    with pytest.raises(InputError, match="README.md"):
        prepare(tmp_path / "a", mixed, sample_rate=SR, min_duration=0.1, progress=False)
    index = prepare(tmp_path / "a", mixed, sample_rate=SR, min_duration=0.1, progress=False, overwrite=True)
    assert index["samples"] == 3 and (mixed / "README.md").read_text() == "mine"
    # the same input again: no --overwrite needed (the folder is prepare's now)
    assert prepare(tmp_path / "a", mixed, sample_rate=SR, min_duration=0.1, progress=False)["samples"] == 3

    # folders without prepare.json (older versions, other tools): judged by their records
    (theirs / "prepare.json").unlink()
    assert prepare(tmp_path / "a", theirs, sample_rate=SR, shard_size=2, min_duration=0.1,
                   progress=False)["samples"] == 3                      # its stats list only files of this input
    tokens = tmp_path / "tokens"                                        # token shards written by `tokenize`
    tokens.mkdir()
    (tokens / "shard-000000.tar").write_bytes(b"tokens")
    (tokens / "shard-000000.stats.json").write_text(json.dumps({"name": "shard-000000.tar", "codec": {}}))
    (tokens / "index.json").write_text(json.dumps({"kind": "tokens"}))
    with pytest.raises(InputError, match="holds files this prepare did not write"):
        prepare(tmp_path / "a", tokens, sample_rate=SR, min_duration=0.1, progress=False)
    assert (tokens / "shard-000000.tar").read_bytes() == b"tokens" and not (tokens / ".prepare.lock").exists()

    # a second prepare while one is writing: refused by the lock; the first completes intact
    write_tones(tmp_path / "big", [f"c{i:02d}.wav" for i in range(8)], seconds=1.0)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "lightning_musicgen", "prepare", "--input", str(tmp_path / "big"),
                              "--output", str(out), "--shard-size", "1", "--workers", "1", "--min-duration", "0.1",
                              "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "shard-000000.stats.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken
        assert not (out / "index.json").exists(), "the first prepare finished before the check: test is void"
        second = run_cli("prepare", "--input", tmp_path / "big", "--output", out, "--no-progress")
        assert second.returncode == 2
        assert second.stderr == f"error: --output {out}: another prepare (pid {first.pid}) is writing to this " \
                                "folder; wait for it to finish\n"
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=240) == 0, first.stderr.read()
    assert read_index(out)["samples"] == 8 and not list(out.glob("*.tmp-*"))


# ---- 8 ------------------------------------------------------------------------------------------------

def _encode(fmt: str, subtype: str, data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, SR, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_8_truncated_files_are_detected_kept_or_skipped_and_always_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    kinds = {"wav": ("WAV", "PCM_16"), "ogg": ("OGG", "VORBIS"), "flac": ("FLAC", "PCM_16")}
    if "MP3" in sf.available_formats():  # libsndfile >= 1.1
        kinds["mp3"] = ("MP3", "MPEG_LAYER_III")
    for ext, (fmt, subtype) in kinds.items():
        data = _encode(fmt, subtype, signal_(4.0, seed=len(ext)))
        (src / f"whole.{ext}").write_bytes(data)
        (src / f"cut.{ext}").write_bytes(data[: int(len(data) * 0.6)])

    out = tmp_path / "kept"
    index = prepare(src, out, sample_rate=SR, min_duration=0.5, progress=False)
    report = read_report(out)
    assert sorted(Path(e["path"]).name for e in report) == sorted(f"cut.{ext}" for ext in kinds)
    assert {(e["action"], e["reason"]) for e in report} == {("kept", "truncated")}
    assert index["samples"] == 2 * len(kinds) and index["kept_by_reason"] == {"truncated": len(kinds)}
    samples = all_samples(out)
    for ext in kinds:
        whole, cut = samples[f"whole.{ext}"], samples[f"cut.{ext}"]
        assert "truncated" not in whole["meta"] and whole["meta"]["duration"] == pytest.approx(4.0, abs=0.06)
        assert cut["meta"]["truncated"] and 0.5 < cut["meta"]["duration"] < 3.0, ext
    details = {Path(e["path"]).suffix: e["detail"] for e in report}
    assert details[".wav"].startswith("data chunk declares 64000 frames, the file holds")
    assert details[".ogg"].startswith("no complete end-of-stream Ogg page")
    assert details[".flac"].startswith("decoding failed after")
    if "mp3" in kinds:
        assert details[".mp3"].startswith("decoded ") and "of the 64000 frames its header announces" in details[".mp3"]

    # the flag: truncated files are skipped, and still in the report
    res = run_cli("prepare", "--input", src, "--output", tmp_path / "skipped", "--sample-rate", SR,
                  "--min-duration", 0.5, "--skip-truncated", "--workers", 1, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"skipped {len(kinds)} {{'truncated': {len(kinds)}}}" in res.stdout
    report = read_report(tmp_path / "skipped")
    assert sorted((Path(e["path"]).name, e["action"], e["reason"]) for e in report) == \
        sorted((f"cut.{ext}", "skipped", "truncated") for ext in kinds)
    assert set(all_samples(tmp_path / "skipped")) == {f"whole.{ext}" for ext in kinds}


# ---- 9 ------------------------------------------------------------------------------------------------

G = 0.70710678


def test_9_surround_is_downmixed_with_bs775_coefficients_before_the_silence_check(tmp_path):
    # BS.775 "Lo/Ro": L + .7071 C + .7071 Ls, R + .7071 C + .7071 Rs; LFE dropped (WAV order L R C LFE Ls Rs)
    bs775 = torch.tensor([[1, 0, G, 0, G, 0], [0, 1, G, 0, 0, G]])
    torch.testing.assert_close(downmix_matrix(6, 2, "wav"), bs775)
    # mono: BS.775's mono equation (.7071 L + .7071 R + C + .5 Ls + .5 Rs) at -3 dB, like the stereo average
    torch.testing.assert_close(downmix_matrix(6, 1, "wav"), torch.tensor([[G, G, 1, 0, .5, .5]]) * G)
    # Vorbis order (L C R Ls Rs LFE) gives the same mix of the same loudspeakers
    torch.testing.assert_close(downmix_matrix(6, 2, "vorbis"), bs775[:, [0, 2, 1, 4, 5, 3]])
    x = torch.randn(2, 6, 50)
    torch.testing.assert_close(to_channels(x, 2), torch.einsum("oc,bct->bot", bs775, x))

    src = tmp_path / "src"
    src.mkdir()
    tone = signal_(1.5, 330)[:, 0]
    six = np.zeros((tone.size, 6), np.float32)
    centre = six.copy()
    centre[:, 2] = tone                                          # centre-only (dialogue, a solo voice)
    sf.write(src / "centre.wav", centre, SR)
    surround = six.copy()
    surround[:, 4] = tone                                        # left surround only
    sf.write(src / "surround.wav", surround, SR)
    lfe = six.copy()
    lfe[:, 3] = tone                                             # LFE only: silent once downmixed
    sf.write(src / "lfe.wav", lfe, SR)
    vorbis = six.copy()
    vorbis[:, 1] = tone                                          # channel 1 of an Ogg Vorbis file is the centre
    sf.write(src / "centre_vorbis.ogg", vorbis, SR, format="OGG", subtype="VORBIS")
    rng = np.random.default_rng(0)
    mixed = (0.05 * rng.standard_normal((tone.size, 6))).astype(np.float32)
    sf.write(src / "mixed.wav", mixed, SR, subtype="FLOAT")

    index = prepare(src, tmp_path / "stereo", sample_rate=SR, channels=2, min_duration=0.5, progress=False)
    assert [(Path(e["path"]).name, e["reason"]) for e in read_report(tmp_path / "stereo")] == [("lfe.wav", "silent")]
    assert index["samples"] == 4
    got = all_samples(tmp_path / "stereo")
    q = 2 / 32768  # the shards hold 16-bit FLAC
    np.testing.assert_allclose(got["centre.wav"]["wav"], np.stack([G * tone, G * tone], 1), atol=q)
    np.testing.assert_allclose(got["surround.wav"]["wav"], np.stack([G * tone, 0 * tone], 1), atol=q)
    np.testing.assert_allclose(got["mixed.wav"]["wav"], mixed @ bs775.numpy().T, atol=q)
    vorbis_out = got["centre_vorbis.ogg"]["wav"]              # lossy: compare levels, not samples
    left, right = np.sqrt((vorbis_out ** 2).mean(0))
    assert left == pytest.approx(right, rel=0.02) and left == pytest.approx(G * np.sqrt((tone ** 2).mean()), rel=0.05)

    prepare(src, tmp_path / "mono", sample_rate=SR, channels=1, min_duration=0.5, progress=False)
    got = all_samples(tmp_path / "mono")
    np.testing.assert_allclose(got["centre.wav"]["wav"][:, 0], G * tone, atol=q)
    np.testing.assert_allclose(got["surround.wav"]["wav"][:, 0], G / 2 * tone, atol=q)


# ---- 10 -----------------------------------------------------------------------------------------------

def test_10_bad_sidecars_ignored_paths_odd_names_and_sidecar_ownership_are_reported(tmp_path):
    src = tmp_path / "src"
    write_tones(src, ["good.wav", "bad.wav", "listed.wav", "dup.wav", "pair.wav", "pair.flac"])
    write_tones(src / "sub1", ["dup.flac"])
    write_tones(src / "locked", ["hidden.wav"])
    (src / "good.json").write_text(json.dumps({"description": "good"}))
    (src / "bad.json").write_text('{"description": "oops",}')
    (src / "listed.json").write_text("[1, 2]")
    (src / "dup.json").write_text(json.dumps({"description": "the wav"}))
    (src / "pair.json").write_text(json.dumps({"description": "which one?"}))
    (src / "pair.wav.json").write_text(json.dumps({"description": "pair wav"}))
    (src / "orphan.json").write_text("{}")
    (src / "notes.txt").write_text("not audio")
    (src / "gone.wav").symlink_to(src / "nowhere.wav")
    odd = "tab\there\nnew line.wav"
    (src / odd).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # unreadable, so it lands in the report
    os.chmod(src / "locked", 0)
    out = tmp_path / "out"
    # root reads any folder: without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, `locked` is unreadable to it too
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without util-linux setpriv: cannot make a folder unreadable")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    try:
        res = subprocess.run([*prefix, sys.executable, "-m", "lightning_musicgen", "prepare", "--input", str(src),
                              "--output", str(out), "--sample-rate", str(SR), "--min-duration", "0.5",
                              "--workers", "1", "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    finally:
        os.chmod(src / "locked", 0o755)
    assert res.returncode == 0, res.stderr
    report = {(Path(e["path"]).relative_to(src).as_posix(), e["action"], e["reason"]) for e in read_report(out)}
    assert report == {
        ("bad.wav", "skipped", "bad_sidecar"), ("listed.wav", "skipped", "bad_sidecar"),
        (odd, "skipped", "unreadable"),
        ("locked", "ignored", "unreadable_folder"), ("gone.wav", "ignored", "broken_symlink"),
        ("notes.txt", "ignored", "not_audio"), ("orphan.json", "ignored", "unused_sidecar"),
        ("pair.json", "ignored", "ambiguous_sidecar"),
    }
    lines = (out / "report.tsv").read_text().split("\n")
    assert len(lines) == len(report) + 2 and lines[-1] == ""  # header + one line each: names are escaped
    assert all(line.count("\t") == 3 for line in lines[:-1])
    assert "tab\\there\\nnew line.wav" in (out / "report.tsv").read_text()
    bad = next(e for e in read_report(out) if e["path"].endswith("bad.wav"))
    assert bad["detail"].startswith(f"{src / 'bad.json'}: invalid JSON sidecar")

    samples = all_samples(out)
    assert set(samples) == {"good.wav", "dup.wav", "sub1/dup.flac", "pair.wav", "pair.flac"}
    assert samples["good.wav"]["meta"]["description"] == "good"
    assert samples["dup.wav"]["meta"]["description"] == "the wav"
    assert "description" not in samples["sub1/dup.flac"]["meta"]   # dup.json is dup.wav's, not its
    assert samples["pair.wav"]["meta"]["description"] == "pair wav"
    assert "description" not in samples["pair.flac"]["meta"]       # pair.json is ambiguous: nobody's
    index = read_index(out)
    assert index["skipped_by_reason"] == {"bad_sidecar": 2, "unreadable": 1}
    assert index["ignored"] == 5


# ---- 11 -----------------------------------------------------------------------------------------------

def test_11_adding_removing_or_changing_one_file_rewrites_only_its_shard(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_tones(src, [f"m{i}.wav" for i in range(5)], seconds=0.6)
    kw = dict(sample_rate=SR, shard_size=2, min_duration=0.1, progress=False)

    def run():
        before = shard_bytes(out)
        index = prepare(src, out, **kw)
        after = shard_bytes(out)
        changed = {n for n in after if before.get(n) != after[n]} | (set(before) - set(after))
        return index, changed

    index, changed = run()
    assert [s["samples"] for s in index["shards"]] == [2, 2, 1]
    sf.write(src / "a_first.wav", signal_(0.6, 900), SR)       # sorts before every other file
    index, changed = run()
    assert changed == {"shard-000002.tar"} and index["samples"] == 6   # it fills the last shard's free slot
    sf.write(src / "a_second.wav", signal_(0.6, 950), SR)
    index, changed = run()
    assert changed == {"shard-000003.tar"} and index["samples"] == 7   # a new shard; no other is rewritten
    (src / "m1.wav").unlink()
    index, changed = run()
    assert changed == {"shard-000000.tar"} and [s["samples"] for s in index["shards"]] == [1, 2, 2, 1]
    sf.write(src / "m3.wav", signal_(0.9, 300), SR)             # changed content
    index, changed = run()
    assert changed == {"shard-000001.tar"} and index["duration"] == pytest.approx(0.6 * 5 + 0.9, abs=1e-3)
    index, changed = run()
    assert changed == set()
    assert sorted(all_samples(out)) == sorted(["a_first.wav", "a_second.wav", "m0.wav", "m2.wav", "m3.wav", "m4.wav"])
