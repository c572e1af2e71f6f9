"""audio/dsp.py against references: values recorded once from torchaudio 2.11.0
(tests/fixtures/record_torchaudio.py), scipy's polyphase resampler and pyloudnorm.

Tolerances: mel spectrograms 1e-5 of the spectrogram's peak; resampling 2e-5 absolute (our kernels
are computed in float64, torchaudio's in float32); loudness 0.01 LU against torchaudio, 0.1 LU
against pyloudnorm."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal

from lightning_musicgen.audio import dsp
from lightning_musicgen.audio.loudness import integrated_loudness, normalize_loudness

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(FIXTURES))
from record_torchaudio import MEL_SETTINGS, RESAMPLE_PAIRS, signals  # noqa: E402

REF = np.load(FIXTURES / "torchaudio_2_11_0.npz")
SIGNALS = signals()


@pytest.mark.parametrize("setting,kwargs", MEL_SETTINGS, ids=[s for s, _ in MEL_SETTINGS])
def test_mel_spectrogram_equals_torchaudio(setting, kwargs):
    for name, (wav, sr) in SIGNALS.items():
        if sr != 32000:
            continue
        ref = torch.from_numpy(REF[f"mel/{setting}/{name}"])
        ours = dsp.MelSpectrogram(sr, **kwargs)(wav)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max(), (setting, name)


def test_mel_spectrogram_keeps_batch_dims_and_runs_in_double():
    wav = torch.randn(2, 3, 4000, dtype=torch.float64)
    mel = dsp.MelSpectrogram(16000, n_fft=512, hop_length=128, n_mels=40)(wav)
    assert mel.shape == (2, 3, 40, 4000 // 128 + 1) and mel.dtype == torch.float64
    single = dsp.MelSpectrogram(16000, n_fft=512, hop_length=128, n_mels=40)(wav[1, 2])
    torch.testing.assert_close(mel[1, 2], single)


@pytest.mark.parametrize("n_freqs,n_mels,f_min,f_max,sr", [
    (257, 96, 0.0, 8000.0, 16000),      # musicnn
    (513, 64, 50.0, 14000.0, 32000),    # PANNs
    (513, 40, 30.0, 8000.0, 16000),     # the auto-captioner's tempo bands
    (1025, 128, 0.0, 22050.0, 44100),
])
def test_slaney_mel_filterbank_equals_transformers(n_freqs, n_mels, f_min, f_max, sr):
    from transformers.audio_utils import mel_filter_bank  # reference; the package does not import it
    ref = mel_filter_bank(n_freqs, n_mels, f_min, f_max, sr, norm="slaney", mel_scale="slaney")
    ours = dsp.slaney_mel_filterbank(n_freqs, n_mels, f_min, f_max, sr)
    assert ours.shape == ref.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("orig,new", RESAMPLE_PAIRS)
def test_resample_equals_torchaudio(orig, new):
    for name, (wav, sr) in SIGNALS.items():
        if sr != orig:
            continue
        ref = torch.from_numpy(REF[f"resample/{new}/{name}"])
        ours = dsp.resample(wav, orig, new)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 2e-5, (name, orig, new)


@pytest.mark.parametrize("orig,new", [(44100, 32000), (48000, 32000), (16000, 32000), (32000, 24000)])
def test_resample_matches_scipy_in_band(orig, new):
    """Tones and noise inside the pass band agree with scipy's polyphase resampler (Kaiser window),
    away from the signal edges."""
    g = math.gcd(orig, new)
    t = np.arange(orig) / orig
    g_noise = np.random.default_rng(0).standard_normal(orig)
    # noise band-limited to 0.6 of the lower Nyquist (both filters are flat there to 0.5 %)
    sos = signal.butter(12, 0.6 * min(orig, new) / 2, fs=orig, output="sos")
    for x in (0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 0.7 * min(orig, new) / 2 * t),
              0.1 * signal.sosfilt(sos, g_noise)):
        ours = dsp.resample(torch.from_numpy(x), orig, new).numpy()
        ref = signal.resample_poly(x, new // g, orig // g)
        n = min(len(ours), len(ref))
        assert len(ours) == math.ceil(len(x) * new / orig)
        core = slice(n // 10, n - n // 10)
        err = np.sqrt(np.mean((ours[:n][core] - ref[:n][core]) ** 2)) / np.sqrt(np.mean(ref[:n][core] ** 2))
        assert err < 1e-2, (orig, new, err)


@pytest.mark.parametrize("orig,new", [(48000, 32000), (44100, 32000), (32000, 16000)])
def test_resample_suppresses_aliasing(orig, new):
    """Energy above the new Nyquist must not fold back: tones between 1.05x the new Nyquist and the
    old Nyquist come out at least 60 dB below their input level."""
    t = torch.arange(orig, dtype=torch.float64) / orig
    for f in np.linspace(1.02 * new / 2, 0.98 * orig / 2, 7):
        x = torch.sin(2 * math.pi * f * t)
        y = dsp.resample(x, orig, new)[new // 10: -new // 10]
        level = 10 * np.log10(float(y.pow(2).mean()) / float(x.pow(2).mean()))
        assert level < -60, (f, level)


def test_resample_identity_and_errors():
    x = torch.randn(2, 100)
    assert dsp.resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="positive"):
        dsp.resample(x, 0, 16000)


def test_loudness_equals_torchaudio():
    for name, (wav, sr) in SIGNALS.items():
        ref = float(REF[f"loudness/{name}"])
        assert dsp.integrated_loudness_lufs(wav, sr) == pytest.approx(ref, abs=0.01), name


def _pyloudnorm(wav: torch.Tensor, sr: int) -> float:
    import pyloudnorm
    return pyloudnorm.Meter(sr).integrated_loudness(wav.double().numpy().T)


@pytest.mark.parametrize("sr", [32000, 44100, 48000])
def test_loudness_equals_pyloudnorm_on_tones_and_noise(sr):
    g = torch.Generator().manual_seed(sr)
    t = torch.arange(3 * sr, dtype=torch.float64) / sr
    cases = {
        "tone 1 kHz": 0.3 * torch.sin(2 * math.pi * 1000 * t)[None],
        "tone 60 Hz": 0.5 * torch.sin(2 * math.pi * 60 * t)[None],
        "stereo noise": 0.1 * torch.randn(2, 3 * sr, generator=g, dtype=torch.float64),
        # loud then near-silent: the relative gate must drop the quiet half
        "gated": torch.cat([0.5 * torch.sin(2 * math.pi * 440 * t[:sr]), 1e-3 * torch.sin(2 * math.pi * 440 * t[sr:])])[None],
        "5 channels": 0.1 * torch.randn(5, 3 * sr, generator=g, dtype=torch.float64),
    }
    for name, wav in cases.items():
        assert dsp.integrated_loudness_lufs(wav, sr) == pytest.approx(_pyloudnorm(wav, sr), abs=0.1), name


def test_loudness_equals_pyloudnorm_on_rendered_music(tmp_path):
    from lightning_musicgen.data import demo_render
    spec = {"id": "chorale", "collection": "bach", "path": "bach/bwv66.6.mxl", "number": None, "seed": 3,
            "out_dir": str(tmp_path), "channels": 2, "soundfont": demo_render.default_soundfont(),
            "sample_rate": 32000, "max_seconds": 20.0}
    meta = demo_render.render_piece(spec)
    assert "error" not in meta, meta
    from lightning_musicgen.audio import read_audio
    wav, sr = read_audio(tmp_path / "chorale.flac")
    assert dsp.integrated_loudness_lufs(wav, sr) == pytest.approx(_pyloudnorm(wav, sr), abs=0.1)


def test_loudness_silence_and_short_clips():
    assert dsp.integrated_loudness_lufs(torch.zeros(1, 32000), 32000) == float("-inf")
    assert math.isnan(dsp.integrated_loudness_lufs(torch.ones(1, 100), 32000))
    assert integrated_loudness(torch.zeros(1, 32000), 32000) == -120.0
    assert integrated_loudness(torch.ones(1, 100), 32000) == -120.0


def test_normalize_loudness_reaches_target():
    t = torch.arange(2 * 32000) / 32000
    wav = 0.01 * torch.sin(2 * math.pi * 440 * t)[None]
    out = normalize_loudness(wav, 32000, target_lufs=-20.0)
    assert integrated_loudness(out, 32000) == pytest.approx(-20.0, abs=0.05)


def test_no_module_needs_torchaudio(tmp_path):
    """Every module of the package imports in a process where `import torchaudio` raises ImportError
    (a torchaudio whose binary does not match torch, as happens when the two drift apart)."""
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text(
        "raise ImportError('libtorchaudio.so: undefined symbol (planted by the test)')\n")
    code = (
        "import importlib, pkgutil\n"
        "try:\n"
        "    import torchaudio\n"
        "    raise SystemExit('torchaudio imported')\n"
        "except ImportError:\n"
        "    pass\n"
        "import lightning_musicgen\n"
        "names = [m.name for m in pkgutil.walk_packages(lightning_musicgen.__path__, 'lightning_musicgen.')]\n"
        "for name in names:\n"
        "    if not name.endswith('__main__'):\n"
        "        importlib.import_module(name)\n"
        "print(len(names))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) > 40
