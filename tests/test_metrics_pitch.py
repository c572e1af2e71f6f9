"""`metrics.pitch.pitch_content`: clarity and pitch-class change rate on signals whose answer is known."""
import math

import numpy as np
import pytest
import torch

from lightning_musicgen.metrics.pitch import pitch_content

SR = 32000


def notes(freqs, seconds):
    t = np.arange(int(seconds * SR)) / SR
    return torch.from_numpy(np.concatenate([0.3 * np.sin(2 * math.pi * f * t) for f in freqs])).float()


def test_a_melody_is_clear_and_changes_at_its_note_rate():
    scale = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25] * 2  # C major up, twice
    out = pitch_content(notes(scale, 0.5), SR)  # 16 notes of 0.5 s: 14 pitch-class changes in 8 s (C to C: none)
    assert out["clarity"] > 0.85
    # each note change is one argmax change; the window (0.5 s) may add one frame of flicker at a seam
    assert 14 / 8 <= out["changes_per_second"] <= 2 * 14 / 8


def test_a_drone_does_not_change_and_noise_is_unclear_and_restless():
    drone = pitch_content(notes([220.0], 8.0), SR)
    assert drone["clarity"] > 0.85 and drone["changes_per_second"] == 0
    noise = pitch_content(torch.from_numpy(np.random.default_rng(0).standard_normal(8 * SR) * 0.1).float(), SR)
    assert noise["clarity"] < 0.35 and noise["changes_per_second"] > 4


def test_silence_is_left_out_and_stereo_is_mixed():
    tone = notes([440.0], 4.0)
    padded = torch.cat([tone, torch.zeros(4 * SR)])
    out, alone = pitch_content(padded, SR), pitch_content(tone, SR)
    assert out["frames"] < alone["frames"] + 6  # the silent half is not counted
    assert out["clarity"] == pytest.approx(alone["clarity"], abs=0.02)
    stereo = pitch_content(torch.stack([tone, tone]), SR)
    assert stereo["clarity"] == pytest.approx(alone["clarity"], abs=1e-5)
