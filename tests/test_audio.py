"""The shared audio helpers: I/O round trip, resampling, channels, chroma vs transformers."""
import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_musicgen.audio import (AudioReadError, ChromaExtractor, convert_channels, load_audio,
                                      write_audio)


def test_write_read_roundtrip_flac(tmp_path):
    wav = 0.5 * torch.sin(torch.linspace(0, 2000, 16000))[None].repeat(2, 1)
    write_audio(tmp_path / "x.flac", wav, 16000)
    back, sr = load_audio(tmp_path / "x.flac")
    assert sr == 16000 and back.shape == (2, 16000)
    assert torch.allclose(back, wav, atol=1e-4)  # FLAC is 16-bit lossless


def test_load_converts_rate_and_channels(tmp_path):
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).uniform(-.5, .5, (44100, 2)), 44100)
    wav, sr = load_audio(tmp_path / "a.wav", sample_rate=32000, channels=1)
    assert sr == 32000 and wav.shape == (1, 32000)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(AudioReadError, match="broken.wav"):
        load_audio(bad)


def test_channel_conversion():
    st = torch.stack([torch.ones(5), -torch.ones(5)])
    assert torch.equal(convert_channels(st, 1), torch.zeros(1, 5))
    assert convert_channels(torch.ones(1, 5), 2).shape == (2, 5)


def test_chroma_equals_transformers_melody_features():
    """Bitwise equal to transformers' MusicgenMelodyFeatureExtractor, recorded once from transformers
    5.24 with torchaudio 2.11.0 (tests/fixtures/record_torchaudio.py): the extractor needs torchaudio."""
    import sys
    from pathlib import Path
    fixtures = Path(__file__).parent / "fixtures"
    sys.path.insert(0, str(fixtures))
    from record_torchaudio import chroma_input
    ref = torch.from_numpy(np.load(fixtures / "torchaudio_2_11_0.npz")["chroma/melody_feature_extractor"])
    ours = ChromaExtractor(sample_rate=32000)(torch.from_numpy(chroma_input()))
    assert torch.equal(ours, ref)


def test_chroma_finds_the_pitch_class():
    sr = 32000
    t = torch.arange(sr * 2) / sr
    a440 = torch.sin(2 * torch.pi * 440.0 * t)[None]
    chroma = ChromaExtractor(sample_rate=sr)(a440)
    # librosa's chroma starts at C: A is index 9
    assert (chroma[0, 2:-2].argmax(-1) == 9).all()


@pytest.mark.parametrize("n_fft,sr,tuning", [(16384, 32000, 0.0), (4096, 44100, 0.0), (2048, 22050, 0.0),
                                             (8192, 16000, 0.37), (8192, 16000, -0.45)])
def test_chroma_filter_bank_equals_transformers(n_fft, sr, tuning):
    from transformers.audio_utils import chroma_filter_bank as reference

    from lightning_musicgen.audio.chroma import chroma_filter_bank
    ref = reference(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sr, tuning=tuning)
    if tuning == 0.0:
        np.testing.assert_array_equal(chroma_filter_bank(n_fft, 12, sr), ref)
    np.testing.assert_allclose(chroma_filter_bank(n_fft, 12, sr, tuning=tuning), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cents", [-45.0, -20.0, 0.0, 31.0])
def test_estimated_tuning_follows_a_detuned_chord(cents):
    """Harmonic tones of a detuned C major chord (+ a low G): the estimate is the detuning within 3 cents,
    and the chroma with the estimated tuning is the one built for the true tuning, C, E, G strongest."""
    from lightning_musicgen.audio.chroma import estimate_tuning
    sr, n_fft = 16000, 8192
    t = torch.arange(sr * 3, dtype=torch.float64) / sr
    wav = sum(torch.sin(2 * torch.pi * 440 * 2 ** ((m - 69 + cents / 100) / 12) * h * t) / h
              for m in (43, 60, 64, 67) for h in range(1, 7)).float()[None]
    power = torch.stft(wav[0], n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    assert abs(estimate_tuning(power, sr, n_fft) * 100 - cents) < 3.0
    tuned = ChromaExtractor(sr, n_fft=n_fft, hop_length=n_fft // 4, argmax=False, tuning="estimate")(wav)[0].mean(0)
    assert set(tuned.topk(3).indices.tolist()) == {0, 4, 7}
    fixed = ChromaExtractor(sr, n_fft=n_fft, hop_length=n_fft // 4, argmax=False, tuning=cents / 100)(wav)[0].mean(0)
    torch.testing.assert_close(tuned, fixed, atol=0.03, rtol=0)
