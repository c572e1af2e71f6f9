"""Codec: equivalence with transformers' EncodecModel, RVQ behaviour, balancer, checkpoints, conversion CLI."""
import json
import math

import pytest
import torch
from transformers import EncodecConfig, EncodecModel

from conftest import ROOT, run_cli
from lightning_musicgen.codec import CodecConfig, CodecModule, CompressionModel
from lightning_musicgen.codec.discriminators import build_discriminator
from lightning_musicgen.codec.losses import Balancer, MelDistance, MultiScaleMelLoss, si_snr
from lightning_musicgen.codec.quantization import ResidualVectorQuantizer
from lightning_musicgen.convert.encodec import encodec_from_transformers
from lightning_musicgen.model_files.codec import codec_from_legacy, load_codec, save_codec
from lightning_musicgen.model_files.files import LEGACY_CODEC


pytestmark = pytest.mark.usefixtures("one_thread")

# facebook/encodec_32khz (MusicGen's tokenizer)
HF_32KHZ = dict(sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                hidden_size=128, codebook_size=2048, target_bandwidths=[2.2], num_lstm_layers=2,
                use_causal_conv=False, use_conv_shortcut=False, normalize=False, norm_type="weight_norm",
                pad_mode="reflect", compress=2, residual_kernel_size=3, dilation_growth_rate=2,
                kernel_size=7, last_kernel_size=7)



def legacy_codec_dict(model: CompressionModel) -> dict:
    """The single-file codec format of earlier versions, as they wrote it."""
    return {"format": LEGACY_CODEC, "version": 1, "config": model.config.to_dict(), "n_q": model.n_q,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}

def random_hf_encodec(seed: int = 0, **overrides) -> EncodecModel:
    """A randomly initialised EncodecModel. transformers zeroes the codebooks: we fill each one with
    jittered residual vectors of random audio, so codes are spread as in a trained model."""
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**{**HF_32KHZ, **overrides})).eval()
    cfg = model.config
    with torch.no_grad():
        calib = torch.randn(2, cfg.audio_channels, 40 * cfg.hop_length) * 0.3
        residual = model.encoder(calib).transpose(1, 2).reshape(-1, cfg.hidden_size)
        for layer in model.quantizer.layers:
            book = layer.codebook
            idx = torch.randint(0, residual.shape[0], (cfg.codebook_size,))
            book.embed.copy_(residual[idx] + 0.3 * residual.std() * torch.randn(cfg.codebook_size, cfg.hidden_size))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            residual = residual - book.decode(book.encode(residual))
    return model


def harmonic_audio(sample_rate: int, seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Notes with a few harmonics and a decaying envelope (music-like test audio)."""
    g = torch.Generator().manual_seed(seed)
    n = int(sample_rate * seconds)
    t = torch.arange(n) / sample_rate
    out = torch.zeros(batch, 1, n)
    note_len = n // 4
    for b in range(batch):
        for i in range(4):
            f0 = 110 * 2 ** (int(torch.randint(0, 36, (1,), generator=g)) / 12)
            seg = t[: note_len]
            env = torch.exp(-3 * seg)
            tone = sum(torch.sin(2 * math.pi * f0 * k * seg) / k for k in range(1, 6))
            out[b, 0, i * note_len:(i + 1) * note_len] = 0.3 * env * tone
    return out


def soundfont_audio(seconds: float = 1.0) -> torch.Tensor:
    """Piano + violin arpeggio rendered like the demo dataset (tinysoundfont, General MIDI) -> [1, 1, T]."""
    from lightning_musicgen.data.demo_render import default_soundfont, synthesize
    events = []
    for i, midi in enumerate([60, 64, 67, 72, 76, 79]):
        on = i * seconds / 7
        events += [(on, True, 0, midi, 100), (on + 0.4 * seconds, False, 0, midi, 0),
                   (on, True, 1, midi - 12, 90), (on + 0.3 * seconds, False, 1, midi - 12, 0)]
    stereo = synthesize(sorted(events), [0, 40], default_soundfont(), 32000, max_seconds=seconds, tail=seconds)
    return torch.from_numpy(stereo.T.copy()).mean(0)[None, None]


def hf_codes(hf: EncodecModel, wav: torch.Tensor) -> torch.Tensor:
    return hf.encode(wav).audio_codes[0]  # [B, K, F]


@pytest.fixture(scope="module")
def hf_and_ours_32khz():
    hf = random_hf_encodec()
    return hf, encodec_from_transformers(hf)


@pytest.mark.parametrize("audio", ["random", "music", "soundfont"])
def test_32khz_equals_transformers(hf_and_ours_32khz, audio):
    hf, ours = hf_and_ours_32khz
    assert (ours.sample_rate, ours.channels, ours.frame_rate) == (32000, 1, 50.0)
    assert (ours.n_q, ours.card, ours.hop_length) == (4, 2048, 640)
    wav = {"random": lambda: torch.randn(2, 1, 16000 + 123) * 0.2, "music": lambda: harmonic_audio(32000, 1.0),
           "soundfont": soundfont_audio}[audio]()
    with torch.no_grad():
        codes_hf = hf_codes(hf, wav)
        codes = ours.encode(wav)
        assert codes.dtype == torch.long and codes.shape == (len(wav), 4, math.ceil(wav.shape[-1] / 640))
        assert torch.equal(codes, codes_hf)
        assert codes.unique().numel() > 20  # codes are informative, not all equal
        dec_hf = hf.decode(codes_hf[None], [None]).audio_values
        dec = ours.decode(codes)
    assert dec.shape == dec_hf.shape == (len(wav), 1, codes.shape[-1] * 640)
    assert (dec - dec_hf).abs().max() < 1e-4
    assert dec.abs().max() > 1e-3


def test_encodec_32khz_config_is_musicgens_tokenizer(hf_and_ours_32khz):
    import yaml
    init = yaml.safe_load((ROOT / "configs/codec/encodec_32khz.yaml").read_text())["model"]["init_args"]
    module = CodecModule(**init)
    _, converted = hf_and_ours_32khz
    ours = module.generator.state_dict()
    ref = converted.state_dict()
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    # same architecture as the released tokenizer; the recipe trains with audiocraft's SEANet padding
    # (pad_mode constant, config/model/encodec/default.yaml), the converted weights run with reflect
    assert module.generator.config == converted.config.__class__(**{**converted.config.to_dict(),
                                                                     "kmeans_iters": 50, "pad_mode": "constant"})
    assert {k: init["discriminator_kwargs"][k] for k in ("filters", "n_ffts")} == \
        {"filters": 32, "n_ffts": [1024, 2048, 512, 256, 128]}   # audiocraft's options: tests/test_recipe_codec.py
    assert init["loss_weights"] == {"adv": 4.0, "feat": 4.0, "l1": 0.1, "msspec": 2.0}
    assert (init["lr"], init["betas"]) == (3e-4, [0.5, 0.9])
    assert module.generator.bitrate == 2200.0


def test_small_causal_stereo_with_conv_shortcut_equals_transformers():
    hf = random_hf_encodec(1, sampling_rate=8000, audio_channels=2, num_filters=8, upsampling_ratios=[4, 2],
                           hidden_size=16, codebook_size=64, target_bandwidths=[6.0, 12.0, 24.0], use_causal_conv=True,
                           use_conv_shortcut=True, num_residual_layers=2, num_lstm_layers=1)
    ours = encodec_from_transformers(hf)
    assert ours.n_q == hf.quantizer.get_num_quantizers_for_bandwidth(6.0)
    wav = torch.randn(3, 2, 1001) * 0.3
    with torch.no_grad():
        for bw in (6.0, 12.0, 24.0):
            ours.n_q = hf.quantizer.get_num_quantizers_for_bandwidth(bw)
            codes_hf = hf.encode(wav, bandwidth=bw).audio_codes[0]
            codes = ours.encode(wav)
            assert torch.equal(codes, codes_hf)
            dec_hf = hf.decode(codes_hf[None], [None]).audio_values
            assert (ours.decode(codes) - dec_hf).abs().max() < 1e-4


def test_convert_cli_and_checkpoint_roundtrip(tmp_path):
    hf = random_hf_encodec(2, num_filters=8, hidden_size=32, codebook_size=256)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "codec"
    res = run_cli("convert", "--from-hf", tmp_path / "hf", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())  # a model folder: JSON + safetensors, no pickle
    assert config["kind"] == "codec" and config["codec"]["card"] == 256 and (out / "model.safetensors").is_file()
    model = load_codec(out).eval()
    wav = harmonic_audio(32000, 0.5, batch=1)
    with torch.no_grad():
        assert torch.equal(model.encode(wav), hf_codes(hf, wav))
        again = codec_from_legacy(legacy_codec_dict(model))
        assert torch.equal(again.decode(model.encode(wav)), model.decode(model.encode(wav)))


def test_convert_rejects_unsupported_models(tmp_path):
    from lightning_musicgen.convert.encodec import convert_encodec
    from lightning_musicgen.errors import InputError
    hf = EncodecModel(EncodecConfig(**{**HF_32KHZ, "num_filters": 4, "hidden_size": 8, "codebook_size": 16,
                                       "norm_type": "time_group_norm"}))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(InputError, match="time_group_norm"):
        convert_encodec(tmp_path / "hf", tmp_path / "x.pt")
    with pytest.raises(InputError, match="cannot load an EncodecModel"):
        convert_encodec(tmp_path, tmp_path / "x.pt")


def test_inplace_activations_keep_outputs_and_gradients():
    torch.manual_seed(0)
    cfg = CodecConfig(sample_rate=8000, n_filters=4, ratios=(4, 2), dimension=8, card=16, lstm_layers=1,
                      true_skip=False, n_residual_layers=2)
    model = CompressionModel(cfg)
    wav = torch.randn(2, 1, 400)

    def run():
        model.zero_grad()
        x = wav.clone().requires_grad_(True)
        y = model.decoder(model.encoder(x))
        y.pow(2).sum().backward()
        return y.detach(), x.grad, [p.grad.clone() for p in model.parameters()]

    fast = run()
    for m in model.modules():
        if isinstance(m, torch.nn.ELU):
            m.inplace = False
    ref = run()
    assert torch.equal(fast[0], ref[0])  # same forward, bit for bit
    # in-place ELU differentiates through its output (out + 1) instead of exp(x): rounding-level differences
    assert torch.allclose(fast[1], ref[1], rtol=1e-4, atol=1e-9)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(fast[2], ref[2]))


def test_bad_inputs_have_clear_errors(tmp_path):
    model = CompressionModel(CodecConfig(sample_rate=8000, n_filters=4, ratios=(2, 2), dimension=8, card=16,
                                         lstm_layers=0))
    with pytest.raises(ValueError, match=r"expected wav \[B, 1, T\]"):
        model.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 16\)"):
        model.decode(torch.full((1, 4, 3), 16))
    with pytest.raises(ValueError, match="n_q"):
        model.n_q = 5
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_codec(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_codec(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown key"):
        CodecConfig.from_dict({"sample_rate": 8000, "ratioz": [2]})


def test_variable_bandwidth_decodes_prefix():
    hf = random_hf_encodec(3, num_filters=8, hidden_size=32, codebook_size=256)
    model = encodec_from_transformers(hf)
    wav = harmonic_audio(32000, 0.5, batch=1)
    with torch.no_grad():
        full = model.encode(wav)
        model.n_q = 2
        two = model.encode(wav)
        assert model.bitrate == pytest.approx(2 * 8 * 50)
        assert torch.equal(two, full[:, :2])
        assert model.decode(two).shape == model.decode(full).shape


# -- RVQ ------------------------------------------------------------------------------------------

def test_rvq_each_quantizer_shrinks_the_residual():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=16, n_q=6, card=64, kmeans_iters=10).train()
    z = torch.randn(4, 16, 200)
    rvq(z)  # k-means initialisation + one EMA step
    rvq.eval()
    residual = z.transpose(1, 2).reshape(-1, 16)
    norms = [residual.norm().item()]
    for layer in rvq.layers:
        residual = residual - layer.decode(layer.encode(residual))
        norms.append(residual.norm().item())
    assert all(b < a for a, b in zip(norms, norms[1:])), norms
    assert norms[-1] < 0.75 * norms[0]
    # decode(encode(z)) is exactly the sum of the chosen codewords
    codes = rvq.encode(z)
    assert torch.allclose(rvq.decode(codes), z - residual.view(4, 200, 16).transpose(1, 2), atol=1e-5)


def test_rvq_encode_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=128, n_q=2, card=1024, kmeans_init=False).eval()
    for layer in rvq.layers:
        layer.embed.normal_()
    z = torch.randn(2, 128, 600)
    residual, ref = z.transpose(1, 2).reshape(-1, 128), []
    for layer in rvq.layers:  # fp32 reference, written out
        idx = (residual[:, None] - layer.embed[None]).pow(2).sum(-1).argmin(-1)
        ref.append(idx.view(2, 600))
        residual = residual - layer.embed[idx]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(rvq.encode(z), torch.stack(ref, 1))  # bf16 distances would flip some


def test_kmeans_initialisation_runs_once():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=8, n_q=2, card=16, kmeans_iters=5, threshold_ema_dead_code=0).train()
    layer = rvq.layers[0]
    assert layer.inited.item() == 0 and layer.embed.abs().sum() == 0
    calls = []
    original = layer.init_from
    layer.init_from = lambda x: (calls.append(1), original(x))
    z = torch.randn(2, 8, 100) + 5.0
    rvq(z)
    assert layer.inited.item() == 1 and len(calls) == 1
    # centroids come from the data (mean ~5), not from the zero init
    assert layer.embed.mean().item() == pytest.approx(5.0, abs=0.5)
    rvq(torch.randn(2, 8, 100) - 5.0)
    rvq(torch.randn(2, 8, 100))
    assert len(calls) == 1
    # the flag lives in the state dict: a reloaded quantizer does not re-initialise
    fresh = ResidualVectorQuantizer(dimension=8, n_q=2, card=16, threshold_ema_dead_code=0).train()
    fresh.load_state_dict(rvq.state_dict())
    before = fresh.layers[0].embed.clone()
    fresh.layers[0].decay = 1.0  # EMA frozen: only an init would change the codebook
    fresh(torch.randn(2, 8, 100) + 50)
    assert torch.equal(fresh.layers[0].embed, before)


def test_dead_codes_are_replaced():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=4, n_q=1, card=32, decay=0.5, kmeans_iters=3,
                                  threshold_ema_dead_code=2.0).train()
    layer = rvq.layers[0]
    rvq(torch.randn(1, 4, 512))  # spreads the codebook over N(0, 1)
    # from now on all data sit in a small far-away cloud: most codes get no assignments
    cloud = torch.randn(1, 4, 512) * 0.1 + 10.0
    out = rvq(cloud)
    replaced = sum(r.stats[0].dead_replaced for r in [out])
    for _ in range(3):
        replaced += rvq(cloud).stats[0].dead_replaced
    assert replaced > 0
    # replaced codes moved to the data: nearly every code is now near the cloud
    near = (layer.embed - 10.0).norm(dim=1) < 2.0
    assert near.float().mean() > 0.8
    assert (layer.cluster_size >= 0).all()


def test_quantizer_dropout_and_straight_through():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=8, n_q=4, card=16, q_dropout=True).train()
    seen = {rvq(torch.randn(2, 8, 50)).num_quantizers for _ in range(30)}
    assert seen == {1, 2, 3, 4}
    z = torch.randn(2, 8, 50, requires_grad=True)
    res = rvq(z)
    res.quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient through the quantizer
    rvq.eval()
    assert rvq(torch.randn(2, 8, 50)).num_quantizers == 4


# -- losses and balancer ----------------------------------------------------------------------

def test_balancer_gives_each_loss_its_share():
    torch.manual_seed(0)
    y = torch.randn(4, 1, 300, requires_grad=True)
    target = torch.randn(4, 1, 300)
    losses = {"big": 1000 * (y - target).pow(2).mean(), "small": 1e-3 * y.abs().mean(), "off": y.sum()}
    weights = {"big": 1.0, "small": 3.0}
    bal = Balancer(weights, total_norm=2.0, ema_decay=0.0)
    grad = bal.backward_gradient(losses, y)
    g_big = torch.autograd.grad(losses["big"], y, retain_graph=True)[0]
    g_small = torch.autograd.grad(losses["small"], y, retain_graph=True)[0]

    def item_norm(g):
        return g.flatten(1).norm(dim=1).mean()
    # the output is a combination of the two gradients with the requested norms 2 * 1/4 and 2 * 3/4
    a, b = bal.scales["big"], bal.scales["small"]
    assert torch.allclose(grad, a * g_big + b * g_small, atol=1e-6)
    assert item_norm(a * g_big).item() == pytest.approx(0.5, rel=1e-4)
    assert item_norm(b * g_small).item() == pytest.approx(1.5, rel=1e-4)
    # without balancing: the plain weighted sum
    plain = Balancer(weights, balance=False).backward_gradient(losses, y)
    assert torch.allclose(plain, g_big + 3 * g_small, atol=1e-6)


def test_balancer_ema_smooths_norms():
    y = torch.ones(2, 1, 10, requires_grad=True)
    bal = Balancer({"a": 1.0}, ema_decay=0.5)
    bal.backward_gradient({"a": (y * 1.0).sum()}, y)
    bal.backward_gradient({"a": (y * 3.0).sum()}, y)
    n1, n3 = math.sqrt(10), 3 * math.sqrt(10)
    assert bal.norms["a"] == pytest.approx((0.5 * n1 + n3) / 1.5, rel=1e-5)  # bias-corrected EMA


def test_losses_are_fp32_under_bf16_autocast():
    x = harmonic_audio(16000, 0.25)
    y = x + 0.01 * torch.randn_like(x)
    msspec, mel = MultiScaleMelLoss(16000), MelDistance(16000)
    yb, xb = y.bfloat16(), x.bfloat16()
    ref = (msspec(yb.float(), xb.float()), mel(yb.float(), xb.float()))  # fp32 maths on the same inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (msspec(yb, xb), mel(yb, xb))
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32
        assert g.item() == pytest.approx(r.item(), rel=1e-5)
    assert si_snr(x, x).item() > 60
    assert si_snr(3 * x, x).item() > 60  # scale invariant
    x1 = x[:1] - x[:1].mean()
    noisy = x1 + 0.002 * torch.randn_like(x1)  # small uncorrelated noise: SI-SNR ~ SNR
    assert si_snr(noisy, x1).item() == pytest.approx(
        10 * math.log10(x1.pow(2).sum() / (noisy - x1).pow(2).sum()), abs=0.2)


@pytest.mark.parametrize("kind", ["msstftd", "mpd"])
def test_discriminators_shapes(kind):
    disc = build_discriminator(kind, channels=2, **({"filters": 8, "n_ffts": [256, 128]} if kind == "msstftd"
                                                     else {"hidden": [8, 16]}))
    logits, feats = disc(torch.randn(2, 2, 4000))
    assert len(logits) == len(feats) == (2 if kind == "msstftd" else 5)
    assert all(lg.shape[0] == 2 and lg.shape[1] == 1 for lg in logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = disc(torch.randn(2, 2, 4000))
    assert all(torch.isfinite(lg.float()).all() for lg in logits)


def test_codec_module_rejects_bad_config():
    with pytest.raises(ValueError, match="loss_weights"):
        CodecModule(codec=CodecConfig(n_filters=4, dimension=8, card=16), loss_weights={"l2": 1.0})
    with pytest.raises(ValueError, match="discriminator"):
        CodecModule(codec=CodecConfig(n_filters=4, dimension=8, card=16), discriminator="nope")
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy
    module = CodecModule(codec=CodecConfig(n_filters=4, dimension=8, card=16))
    module.trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                               logger=False)
    with pytest.raises(ValueError, match="find_unused_parameters=true"):
        module.setup("fit")


def test_codec_files_written_before_the_rename_load_and_the_api_has_one_name(tmp_path):
    """The loader reads the keys of earlier files (`num_codebooks`, config `bins`) as n_q and card; the API
    itself takes and has only `card` / `n_q`."""
    model = CompressionModel(sample_rate=8000, n_filters=4, ratios=(2, 2), dimension=8, n_q=3, card=16,
                             lstm_layers=0)
    model.n_q = 2
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bins'\]"):
        CompressionModel(sample_rate=8000, n_filters=4, ratios=(2, 2), dimension=8, bins=16)

    # a codec folder and a single-file checkpoint as written before the rename
    save_codec(model, tmp_path / "folder")
    cfg = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert cfg["n_q"] == 2 and cfg["codec"]["card"] == 16
    cfg["num_codebooks"] = cfg.pop("n_q")
    cfg["codec"]["bins"] = cfg["codec"].pop("card")
    (tmp_path / "folder" / "config.json").write_text(json.dumps(cfg))
    old = legacy_codec_dict(model)
    old["num_codebooks"] = old.pop("n_q")
    old["config"]["bins"] = old["config"].pop("card")
    torch.save(old, tmp_path / "old.pt")
    for path in (tmp_path / "folder", tmp_path / "old.pt"):
        back = load_codec(path)
        assert (back.n_q, back.card) == (2, 16), path
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))

    old = legacy_codec_dict(model)
    old["n_q"], old["num_codebooks"] = 3, 2  # both names, disagreeing: one line names them
    torch.save(old, tmp_path / "both.pt")
    with pytest.raises(ValueError, match="both n_q=3 and its old name num_codebooks=2"):
        load_codec(tmp_path / "both.pt")
