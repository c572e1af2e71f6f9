"""A melody LM trained with this package follows the melody it is given (the MusicGen-melody path end to end).

Music: random tunes of pure tones (one pitch class per 4 chroma frames), rendered to flac and `prepare`d
into audio shards. Codec: `PitchCodec`, one codebook whose code per frame is the frame's argmax chroma
bin (decode: a sine of that pitch class), so the music is exactly codable and a sample's chroma says
what the LM chose. Then `tokenize --chroma` -> `TokenDataModule` -> a melody-only prepend LM trained
by Lightning -> `MusicGen.generate(melody=a held-out tune)` -> `ChromaCosine`. The trained model's sample
must be close to its own melody and far from another held-out tune; the same model untrained is not.
"""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch import Trainer
from torch import nn

from lightning_musicgen.audio.chroma import ChromaExtractor
from lightning_musicgen.data import TokenDataModule
from lightning_musicgen.data.prepare import prepare
from lightning_musicgen.data.tokenize import tokenize_shards
from lightning_musicgen.generation import MusicGen
from lightning_musicgen.lm.module import MusicGenModule
from lightning_musicgen.metrics import ChromaCosine

SR, HOP = 32000, 4096  # MusicGen's melody chroma: 7.8 frames per second
NOTE = 4 * HOP  # samples per note


def pitch_hz(pitch_class: int) -> float:
    return 261.63 * 2 ** (pitch_class / 12)


class PitchCodec(nn.Module):
    """The CompressionModel contract with one codebook: code = the frame's argmax chroma bin."""

    sample_rate, channels, n_q, card, frame_rate = SR, 1, 1, 12, SR / HOP

    def __init__(self):
        super().__init__()
        self.chroma = ChromaExtractor(SR, hop_length=HOP, argmax=True)

    def encode(self, wav):
        frames = math.ceil(wav.shape[-1] / HOP)
        return self.chroma(wav)[:, :frames].argmax(-1)[:, None]  # [B, 1, F]

    def decode(self, codes):
        t = torch.arange(HOP) / SR
        hz = 261.63 * 2 ** (codes[:, 0].float() / 12)  # [B, F]
        return (0.3 * torch.sin(2 * math.pi * hz[..., None] * t)).flatten(1)[:, None]  # [B, 1, F * HOP]


def tune(rng, notes: int) -> np.ndarray:
    t = np.arange(NOTE) / SR
    return np.concatenate([0.3 * np.sin(2 * math.pi * pitch_hz(int(p)) * t)
                           for p in rng.integers(0, 12, notes)]).astype(np.float32)


def cosine(a, b) -> float:
    metric = ChromaCosine()
    metric.update(a.reshape(1, 1, -1), b.reshape(1, 1, -1), sample_rate=SR)
    return float(metric.compute())


@pytest.fixture(scope="module")
def token_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("melody_learning")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("valid", 8)):
        (root / "audio" / split).mkdir(parents=True)
        for i in range(count):
            sf.write(root / "audio" / split / f"tune{i:03d}.flac", tune(rng, int(rng.integers(8, 13))), SR)
        prepare(root / "audio" / split, root / "shards" / split, sample_rate=SR, channels=1, shard_size=32,
                progress=False)
        tokenize_shards(PitchCodec(), root / "shards" / split, root / "tokens" / split, progress=False,
                        chroma=ChromaExtractor(SR, hop_length=HOP, argmax=True))
    return root, [tune(np.random.default_rng(100 + i), 6) for i in range(2)]  # held-out tunes of 3 s


def melody_module(fuse: str = "prepend") -> MusicGenModule:
    torch.manual_seed(0)
    frames = 3 * SR // HOP + 1  # the chroma frames of a 3 s crop
    return MusicGenModule(lm={"n_q": 1, "card": 12, "dim": 64, "num_heads": 4, "num_layers": 2,
                              "cross_attention": False, "positional": "sin"},
                          conditioner={"text": None, "fuse": "prepend", "cfg_dropout": 0.1,
                                       "melody": {"sample_rate": SR, "chroma_length": frames, "hop_length": HOP,
                                                  "fuse": fuse}},
                          lr=3e-3, warmup_steps=20, min_lr_ratio=0.1)


def sample_for(module, melody: np.ndarray) -> torch.Tensor:
    model = MusicGen(module.lm.eval(), module.conditioner.eval(), PitchCodec(), max_duration=3.0)
    wav = model.generate([None], 3.0, melody=torch.from_numpy(melody)[None], cfg_coef=1.0, top_k=1, seed=0)
    return wav[0, 0]


@pytest.mark.parametrize("fuse", ["prepend", "input_interpolate"])
def test_a_trained_melody_lm_follows_a_held_out_melody(token_shards, tmp_path, fuse):
    """prepend: MusicGen-melody's chroma in front of the sequence; input_interpolate: the time-aligned chroma."""
    root, (melody, other) = token_shards
    melody_t, other_t = torch.from_numpy(melody), torch.from_numpy(other)
    untrained = melody_module(fuse)
    before = cosine(sample_for(untrained, melody), melody_t)
    module = melody_module(fuse)
    data = TokenDataModule(root / "tokens" / "train", root / "tokens" / "valid", segment_duration=3.0,
                           min_segment_ratio=1.0, batch_size=16, num_workers=0, epoch_steps=500, drop_desc_p=0.0)
    Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=500, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            limit_val_batches=0, gradient_clip_val=1.0).fit(module, datamodule=data)
    sample = sample_for(module, melody)
    follows, unrelated = cosine(sample, melody_t), cosine(sample, other_t)
    ceiling, floor = cosine(PitchCodec().decode(PitchCodec().encode(melody_t[None, None]))[0, 0], melody_t), \
        cosine(other_t, melody_t)
    print(f"ChromaCosine to its melody: trained {follows:.3f}, untrained {before:.3f}; to another tune "
          f"{unrelated:.3f}; codec reconstruction {ceiling:.3f}; the other tune to the melody {floor:.3f}")
    assert ceiling > 0.8 and floor < 0.3  # the measure separates the melody from another tune
    assert before < 0.4  # an untrained LM does not follow
    assert follows > 0.75 and follows > unrelated + 0.5
    other_sample = sample_for(module, other)  # the same model, another melody: it follows that one
    assert cosine(other_sample, other_t) > 0.75 > cosine(other_sample, melody_t) + 0.3
