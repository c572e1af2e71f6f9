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
    from transformers import MusicgenMelodyFeatureExtractor
    x = torch.randn(2, 32000 * 3, generator=torch.Generator().manual_seed(0))
    ref = MusicgenMelodyFeatureExtractor()(x.numpy(), sampling_rate=32000, return_tensors="pt")
    ours = ChromaExtractor(sample_rate=32000)(x)
    assert torch.equal(ours, ref["input_features"])


def test_chroma_finds_the_pitch_class():
    sr = 32000
    t = torch.arange(sr * 2) / sr
    a440 = torch.sin(2 * torch.pi * 440.0 * t)[None]
    chroma = ChromaExtractor(sample_rate=sr)(a440)
    # librosa's chroma starts at C: A is index 9
    assert (chroma[0, 2:-2].argmax(-1) == 9).all()
