"""export --format audiocraft: audiocraft's own loaders (load_lm_model / load_compression_model, from its
source, dependencies stubbed) read the files, and its LMModel / EncodecModel compute our logits and codes;
convert --from-audiocraft brings them back bit for bit."""
import pytest
import torch

from audiocraft_ref import import_audiocraft
from lightning_musicgen.model_files.codec import load_codec, save_codec
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.model_files.write import save_musicgen
from test_model_files import (CARD, K, OFFLINE, offline_logits, reference_logits, tiny_codec, tiny_musicgen,  # noqa: F401
                              tokenizer_files)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def audiocraft_loaders():
    # audiocraft's attention unpacks q, k, v with xformers.ops.unbind, which is torch.unbind (xformers is
    # CUDA-only and not installed): the one substitute this test hands in
    loaders, conditioners, ac_lm = import_audiocraft("audiocraft.models.loaders", "audiocraft.modules.conditioners",
                                                     "audiocraft.models.lm",
                                                     substitutes={"xformers.ops.unbind": torch.unbind})
    return loaders, conditioners, ac_lm


def _patch_t5(monkeypatch, conditioners, encoder, tokenizer):
    """audiocraft's T5Conditioner loads T5 from the hub by name: hand it our (tiny, random) T5 instead."""
    class Tokenizer:
        def __call__(self, entries, **kw):
            return tokenizer(entries, return_token_type_ids=False, **kw)

    monkeypatch.setattr(conditioners, "T5Tokenizer", type("T5Tokenizer", (), {
        "from_pretrained": staticmethod(lambda name: Tokenizer())}))
    monkeypatch.setattr(conditioners, "T5EncoderModel", type("T5EncoderModel", (), {
        "from_pretrained": staticmethod(lambda name: encoder)}))


def test_export_to_audiocraft_matches_and_round_trips(tmp_path, tokenizer_files, audiocraft_loaders, monkeypatch):
    loaders, conditioners, ac_lm = audiocraft_loaders
    # a T5 of t5-small's width under t5-small's name: audiocraft sizes its projection by the name
    lm, cond, cond_cfg, codec = tiny_musicgen(tokenizer_files, t5_dim=512, name="t5-small")
    ours_dir = save_musicgen(tmp_path / "ours", lm, cond, cond_cfg, codec, text_encoder_weights="copy")
    from conftest import run_cli
    res = run_cli("export", "--ckpt", ours_dir, "--out", tmp_path / "ac", "--format", "audiocraft")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ac").iterdir()) == ["compression_state_dict.bin", "state_dict.bin"]
    pkg = torch.load(tmp_path / "ac" / "state_dict.bin", weights_only=True)  # audiocraft's layout, no pickled code
    assert isinstance(pkg["xp.cfg"], str) and "transformer_lm:" in pkg["xp.cfg"] and pkg["exported"]

    _patch_t5(monkeypatch, conditioners, cond.text.encoder, cond.text.tokenizer)
    ac_codec = loaders.load_compression_model(tmp_path / "ac" / "compression_state_dict.bin")
    ac_model = loaders.load_lm_model(tmp_path / "ac" / "state_dict.bin")
    wav = torch.randn(2, 1, 32000 // 5) * 0.3
    with torch.no_grad():
        ref_codes, scale = ac_codec.encode(wav)
        codes = codec.encode(wav)
        assert scale is None and torch.equal(codes, ref_codes)
        torch.testing.assert_close(codec.decode(codes), ac_codec.decode(ref_codes), atol=1e-4, rtol=0)
        for text in ("80s pop track with bassy drums and synth", "a calm piano"):  # one text: no padding
            g = torch.Generator().manual_seed(len(text))
            tokens = torch.randint(0, CARD, (1, K, 12), generator=g)
            out = ac_model.compute_predictions(tokens, [conditioners.ConditioningAttributes(
                text={"description": text})])
            ours, valid = lm.compute_logits(tokens, cond([text]))
            mask = out.mask & valid
            assert mask.float().mean() > 0.7
            torch.testing.assert_close(ours[mask], out.logits[mask], atol=1e-4, rtol=0)
            assert ours[mask].abs().max() > 1.0

    text_dir = tmp_path / "t5"  # the T5 the LM names, as a local folder
    cond.text.encoder.save_pretrained(text_dir)
    cond.text.tokenizer.save_pretrained(text_dir)
    res = run_cli("convert", "--from-audiocraft", tmp_path / "ac", "--out", tmp_path / "back",
                  "--text-encoder", text_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    lm2, cond2, codec2, info = load_musicgen(tmp_path / "back", text_encoder=str(text_dir))
    for a, b in ((lm, lm2), (cond, cond2), (codec, codec2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert info["conditioner"].text.name == "t5-small"


def test_audiocraft_solver_checkpoint_of_the_codec(tmp_path):
    """A compression solver's checkpoint.th (best_state.model + a pickled DictConfig) converts too."""
    from omegaconf import OmegaConf
    from lightning_musicgen.convert.audiocraft import codec_package
    codec = tiny_codec(5)
    pkg = codec_package(codec)
    solver = {"best_state": {"model": pkg["best_state"]}, "xp.cfg": OmegaConf.create(pkg["xp.cfg"]),
              "fsdp_best_state": None, "epoch": 3}
    torch.save(solver, tmp_path / "checkpoint.th")
    from lightning_musicgen.convert.audiocraft import convert_audiocraft
    back = load_codec(convert_audiocraft(tmp_path / "checkpoint.th", tmp_path / "codec"))
    sa, sb = codec.state_dict(), back.state_dict()
    assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_audiocraft_refuses_melody_models(tmp_path, tokenizer_files):
    from lightning_musicgen.convert.audiocraft import lm_package
    from lightning_musicgen.convert.to_transformers import NotExpressible
    lm, cond, _, _ = tiny_musicgen(tokenizer_files, melody=True)
    with pytest.raises(NotExpressible, match="text-to-music"):
        lm_package(lm, cond)


def test_audiocraft_lm_solver_checkpoint_and_official_repo_layout(tmp_path, tokenizer_files):
    """An LM solver's checkpoint.th (with --codec), and an official repo folder whose
    compression_state_dict.bin only names a pretrained codec: refused in one line without --codec,
    converted bit for bit with it."""
    from omegaconf import OmegaConf
    from conftest import run_cli
    from lightning_musicgen.convert.audiocraft import lm_package
    lm, cond, cond_cfg, codec = tiny_musicgen(tokenizer_files, t5_dim=512, name="t5-small", seed=2)
    pkg = lm_package(lm, cond, 8.0, codec.sample_rate, codec.channels)
    solver = {"best_state": {"model": pkg["best_state"]}, "xp.cfg": OmegaConf.create(pkg["xp.cfg"]),
              "fsdp_best_state": None, "epoch": 7}
    torch.save(solver, tmp_path / "checkpoint.th")
    repo = tmp_path / "repo"  # the official layout: the LM, and a codec by name only
    repo.mkdir()
    torch.save(pkg, repo / "state_dict.bin")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               repo / "compression_state_dict.bin")
    save_codec(codec, tmp_path / "codec")
    text_dir = tmp_path / "t5"
    cond.text.encoder.save_pretrained(text_dir)
    cond.text.tokenizer.save_pretrained(text_dir)

    res = run_cli("convert", "--from-audiocraft", repo, "--out", tmp_path / "refused", "--text-encoder", text_dir)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().count("\n") == 0 and "facebook/encodec_32khz" in res.stderr and "--codec" in res.stderr

    for source, out in ((tmp_path / "checkpoint.th", tmp_path / "from_solver"), (repo, tmp_path / "from_repo")):
        res = run_cli("convert", "--from-audiocraft", source, "--out", out, "--codec", tmp_path / "codec",
                      "--text-encoder", text_dir)
        assert res.returncode == 0, res.stderr[-2000:]
        lm2, cond2, codec2, info = load_musicgen(out, text_encoder=str(text_dir))
        for a, b in ((lm, lm2), (cond, cond2), (codec, codec2)):
            sa, sb = a.state_dict(), b.state_dict()
            assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), source
        assert info["max_duration"] == 8.0 and info["conditioner"].text.name == "t5-small"


def test_converted_audiocraft_model_exports_to_a_folder_that_loads_offline_anywhere(tmp_path, own_tmp, tokenizer_files,
                                                                                    caplog):
    """audiocraft's files name their T5 ("t5-small") without holding it: convert reads it from --text-encoder and
    copies it in, so convert -> export -> another folder (the rest deleted) loads with the hub offline and gives
    the converted model's logits. Exported with --text-encoder-weights refer, the folder says in one line that it
    needs 't5-small', and loads offline given a local copy (text_encoder=DIR), not without it."""
    import shutil
    from conftest import run_cli
    from lightning_musicgen.convert.audiocraft import CODEC_FILE, LM_FILE, codec_package, lm_package
    from lightning_musicgen.errors import UserError
    from lightning_musicgen.generation import MusicGen
    lm, cond, _, codec = tiny_musicgen(tokenizer_files, name="t5-small", seed=3)
    repo, text_dir = tmp_path / "repo", tmp_path / "t5"
    repo.mkdir()
    torch.save(lm_package(lm, cond, 30.0, codec.sample_rate, codec.channels), repo / LM_FILE)
    torch.save(codec_package(codec), repo / CODEC_FILE)
    cond.text.encoder.save_pretrained(text_dir)
    cond.text.tokenizer.save_pretrained(text_dir)
    converted = tmp_path / "converted"
    for args in (("convert", "--from-audiocraft", repo, "--out", converted, "--text-encoder", text_dir),
                 ("export", "--ckpt", converted, "--out", tmp_path / "model"),
                 ("export", "--ckpt", converted, "--out", tmp_path / "refer", "--text-encoder-weights", "refer")):
        res = run_cli(*args, env=OFFLINE)
        assert res.returncode == 0, res.stderr[-2000:]
    notice = f"model folder {tmp_path / 'refer'} refers outside itself to: text encoder 't5-small' (hub name)"
    assert res.stdout.strip().splitlines()[-1] == notice and "refers outside" not in res.stderr
    ref = reference_logits(converted)
    assert not (tmp_path / "refer" / "text_encoder" / "model.safetensors").exists()

    elsewhere = own_tmp / "elsewhere"
    for name in ("model", "refer"):
        shutil.move(tmp_path / name, elsewhere / name)
    shutil.rmtree(converted), shutil.rmtree(repo)
    got, res = offline_logits(elsewhere / "model", own_tmp / "model.pt")
    assert "refers outside itself" not in res.stderr
    assert got.shape == (2, K, 12, CARD) and got.abs().max() > 0.1 and torch.equal(got, ref)
    caplog.clear()  # this process is offline too (conftest): the named T5 loads from the local copy only
    assert torch.equal(reference_logits(elsewhere / "refer", text_encoder=str(text_dir)), ref)
    assert [r.getMessage() for r in caplog.records if "refers outside itself" in r.getMessage()] == [
        f"model folder {elsewhere / 'refer'} refers outside itself to: text encoder 't5-small' (hub name)"]
    with pytest.raises(UserError, match="t5-small") as err:
        MusicGen.from_pretrained(elsewhere / "refer", device="cpu")
    assert "\n" not in str(err.value) and str(elsewhere / "refer") in str(err.value)
