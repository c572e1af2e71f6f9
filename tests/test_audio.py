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


@pytest.mark.parametrize("n_fft,sr", [(16384, 32000), (4096, 44100), (2048, 22050)])
def test_chroma_filter_bank_equals_transformers(n_fft, sr):
    from transformers.audio_utils import chroma_filter_bank as reference

    from lightning_musicgen.audio.chroma import chroma_filter_bank
    ref = reference(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sr, tuning=0.0)
    np.testing.assert_array_equal(chroma_filter_bank(n_fft, 12, sr), ref)
