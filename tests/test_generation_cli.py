"""The `generate` verb: wav files + JSON, and one-line errors (exit code 2) on bad input."""
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from lightning_musicgen.__main__ import main as cli_main
from test_generation import _build


def main(args: list[str]) -> int:
    return cli_main(["generate", *args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _build(tmp_path_factory, "cli")[2]


def test_generate_writes_wavs_and_json(ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\nslow jazz with brushes\n\n  driving techno  \n")
    prompt_wav = tmp_path / "prompt.wav"
    sf.write(prompt_wav, np.random.default_rng(0).uniform(-0.3, 0.3, (8000, 2)), 16000)  # 0.5 s, stereo, 16 kHz
    out = tmp_path / "out"
    res = run_cli("generate", "--model", ckpt, "--text", "a calm piano", "--text-file", prompts,
                  "--prompt-audio", prompt_wav, "--duration", 0.8, "--out", out, "--seed", 3,
                  "--batch-size", 2, "--top-k", 5, "--dtype", "float32", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((out / "generate.json").read_text())
    assert record["texts"] == ["a calm piano", "slow jazz with brushes", "driving techno"]
    assert [f["seed"] for f in record["files"]] == [3, 3, 4]
    assert record["top_k"] == 5 and record["dtype"] == "float32" and record["duration"] == 0.8
    for f in record["files"]:
        data, sr = sf.read(out / f["file"])
        assert sr == 32000 and data.shape == (int(0.8 * 32000),)
    assert (out / "000_a_calm_piano.wav").is_file()


@pytest.mark.parametrize("extra,needle", [
    (["--text", ""], "--text #1 is empty"),
    (["--text", "ok", "--duration", "-3"], "--duration must be a positive number of seconds, got -3.0"),
    (["--text", "ok", "--melody", "MISSING.wav"], "--melody MISSING.wav: cannot read audio"),
    (["--text", "ok", "--melody", "BROKEN"], "--melody"),
    (["--text-file", "NOPE.txt"], "--text-file NOPE.txt: cannot read"),
    ([], "no description"),
    (["--text", "ok", "--top-p", "2"], "--top-p 2.0"),
])
def test_bad_inputs_are_one_line_errors(ckpt, tmp_path, capsys, extra, needle):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    extra = [str(broken) if a == "BROKEN" else str(tmp_path / a) if a.endswith((".wav", ".txt")) else a
             for a in extra]
    needle = needle.replace("MISSING.wav", str(tmp_path / "MISSING.wav")).replace("NOPE.txt", str(tmp_path / "NOPE.txt"))
    code = main(["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
    if str(broken) in extra:
        assert "broken.wav" in err


def test_melody_on_a_text_model_and_missing_checkpoint(ckpt, tmp_path, capsys):
    mel = tmp_path / "m.wav"
    sf.write(mel, np.zeros(3200), 32000)
    assert main(["--ckpt", str(ckpt), "--text", "x", "--melody", str(mel), "--duration", "0.1",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "no melody conditioning" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "none.pt"), "--text", "x", "--out", str(tmp_path)]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nomodel"), "--text", "x", "--out", str(tmp_path)]) == 2
    assert "--model" in (err := capsys.readouterr().err) and "nomodel: not a model folder" in err


def test_help_explains_the_verb():
    res = run_cli("generate", "--help")
    assert res.returncode == 0 and "--prompt-audio" in res.stdout and "classifier-free guidance" in res.stdout
