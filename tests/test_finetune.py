"""Fine-tuning the official MusicGen: init_from a converted transformers model, LoRA (adapters only,
merge, adapters file, transformers round trip), full fine-tuning, global batch size."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_musicgen.model_files.read import load_musicgen
from lightning_musicgen.lm.conditioners import packaged_minilm_path

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

CARD, K, DIM, LAYERS = 32, 4, 32, 2
TEXTS = ["calm piano with strings", "loud rock drums"]
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["self_attn", "cross_attn", "ffn"]}


def hf_config():
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    t5 = T5Config(vocab_size=30522, d_model=24, d_kv=8, num_heads=3, d_ff=48, num_layers=1, num_decoder_layers=1)
    enc = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, num_residual_layers=1,
                        upsampling_ratios=[8, 5, 4, 4], codebook_size=CARD, hidden_size=8, num_lstm_layers=1,
                        target_bandwidths=[1.5], codebook_dim=8)
    dec = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=4,
                                ffn_dim=64, num_codebooks=K, pad_token_id=CARD, bos_token_id=CARD,
                                decoder_start_token_id=CARD)
    return MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random MusicGen saved in transformers' layout, converted, and token shards of its codec."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from lightning_musicgen.convert.musicgen import convert_musicgen
    from lightning_musicgen.data.prepare import prepare
    from lightning_musicgen.data.tokenize import tokenize_shards
    tmp = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    hf = MusicgenForConditionalGeneration(hf_config()).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp / "hf")
    AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True).save_pretrained(tmp / "hf")
    converted = convert_musicgen(tmp / "hf", tmp / "base")
    rng = np.random.default_rng(0)
    (tmp / "audio").mkdir()
    for i in range(4):
        sf.write(tmp / "audio" / f"clip{i}.flac", 0.3 * rng.standard_normal(32000 * 2), 32000)
        (tmp / "audio" / f"clip{i}.json").write_text(json.dumps({"description": TEXTS[i % 2]}))
    prepare(tmp / "audio", tmp / "shards", sample_rate=32000, shard_size=2, progress=False)
    _, _, codec, _ = load_musicgen(converted)
    tokenize_shards(codec, tmp / "shards", tmp / "tokens", progress=False)
    return {"dir": tmp, "hf": hf, "converted": converted, "tokens": tmp / "tokens"}


def datamodule(base, batch_size=2):
    from lightning_musicgen.data import TokenDataModule
    return TokenDataModule(train_shards=str(base["tokens"]), segment_duration=1.0, batch_size=batch_size,
                           num_workers=0, epoch_steps=100, drop_desc_p=0.0, merge_text_p=0.0)


def trainer(tmp, **kw):
    from lightning.pytorch import Trainer
    return Trainer(default_root_dir=tmp, accelerator="cpu", devices=1, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0,
                   **{"max_steps": 4, "enable_checkpointing": False, "logger": False, "limit_val_batches": 0, **kw})


def fixed_codes():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, CARD, (2, K, 12), generator=g)


def logits(lm, conditioner, codes=None):
    lm.eval(), conditioner.eval()
    with torch.no_grad():
        return lm.compute_logits(fixed_codes() if codes is None else codes, conditioner(TEXTS))[0]


@pytest.fixture(scope="module")
def lora_run(base):
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(init_from=str(base["converted"]), lora=LORA, lr=1e-2, warmup_steps=0, weight_decay=0.0)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer(base["dir"] / "lora", max_steps=4, enable_checkpointing=False).fit(
        module, datamodule=datamodule(base))
    ckpt = base["dir"] / "lora.ckpt"
    module.trainer.save_checkpoint(ckpt)
    adapters = base["dir"] / "adapters.safetensors"
    module.save_adapters(adapters)
    return {"module": module, "before": before, "ckpt": ckpt, "adapters": adapters}


def test_init_from_converted_equals_the_converted_model(base):
    from lightning_musicgen.lm.module import MusicGenModule
    module = MusicGenModule(init_from=str(base["converted"]), lm={"gradient_checkpointing": True},
                            conditioner={"cfg_dropout": 0.1, "text": {"word_dropout": 0.0}})
    lm, cond, _, _ = load_musicgen(base["converted"], load_codec_model=False)
    assert module.lm.transformer.gradient_checkpointing and module.conditioner.cfg_dropout == 0.1
    assert module.conditioner.text.word_dropout == 0.0 and module.conditioner_config.text.word_dropout == 0.0
    assert module.lm.config.gradient_checkpointing
    torch.testing.assert_close(logits(module.lm, module.conditioner), logits(lm, cond), atol=0, rtol=0)
    assert module.codec.n_q == K  # the codec embedded in the converted file
    with pytest.raises(ValueError, match="lm.dim=64 differs"):
        MusicGenModule(init_from=str(base["converted"]), lm={"dim": 64})
    # typed configs (as LightningCLI builds them): training-time fields apply, defaults are not "set"
    from lightning_musicgen.lm.conditioners import ConditionerConfig, TextConfig
    from lightning_musicgen.lm.model import LMConfig
    typed = MusicGenModule(init_from=str(base["converted"]), lm=LMConfig(n_q=None, card=None, dropout=0.1),
                           conditioner=ConditionerConfig(cfg_dropout=0.2, text=TextConfig(word_dropout=0.0)))
    assert typed.lm.config.dropout == 0.1 and typed.lm.config.dim == DIM and typed.conditioner.cfg_dropout == 0.2
    assert typed.conditioner.text.word_dropout == 0.0 and typed.hparams["conditioner"]["text"]["word_dropout"] == 0.0
    torch.testing.assert_close(logits(typed.lm, typed.conditioner), logits(lm, cond), atol=0, rtol=0)
    with pytest.raises(ValueError, match="lm.num_layers=5 differs"):
        MusicGenModule(init_from=str(base["converted"]), lm=LMConfig(num_layers=5))


def test_lora_trains_only_adapters(lora_run):
    module, before = lora_run["module"], lora_run["before"]
    after = module.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all("lora_B" in k or "lora_A" in k for k in changed), changed[:5]
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapters really moved
    frozen = [k for k in after if "lora_" not in k]
    assert all(torch.equal(after[k], before[k]) for k in frozen)  # base + text encoder bitwise equal
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_merge_adapters_file_and_checkpoint(base, lora_run):
    import copy

    from lightning_musicgen.lm.lora import merge_lora
    from lightning_musicgen.model_files.adapters import load_adapters
    module = lora_run["module"]
    tuned = logits(module.lm, module.conditioner)
    base_lm, base_cond, _, _ = load_musicgen(base["converted"], load_codec_model=False)
    assert (tuned - logits(base_lm, base_cond)).abs().max() > 1e-3  # fine-tuning changed the model
    merged = merge_lora(copy.deepcopy(module.lm))
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    torch.testing.assert_close(logits(merged, module.conditioner), tuned, atol=1e-5, rtol=0)
    # the adapters alone, onto a freshly loaded base
    assert lora_run["adapters"].stat().st_size < 0.2 * (base["converted"] / "model.safetensors").stat().st_size
    load_adapters(lora_run["adapters"], base_lm, base_cond)
    torch.testing.assert_close(logits(base_lm, base_cond), tuned, atol=1e-6, rtol=0)
    # the Lightning checkpoint loads with the adapters merged (what generation and export read)
    lm, cond, _, _ = load_musicgen(lora_run["ckpt"], load_codec_model=False)
    torch.testing.assert_close(logits(lm, cond), tuned, atol=1e-5, rtol=0)


def test_merged_lora_loads_in_transformers(base, lora_run, tmp_path):
    """`export --format transformers` of the LoRA checkpoint merges the adapters: transformers'
    MusicgenForConditionalGeneration gives our fine-tuned logits."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from lightning_musicgen.__main__ import main
    lm, cond, _, _ = load_musicgen(lora_run["ckpt"], load_codec_model=False)
    assert main(["export", "--ckpt", str(lora_run["ckpt"]), "--out", str(tmp_path / "merged_hf"),
                 "--format", "transformers"]) == 0
    hf = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "merged_hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True)
    seq = lm.pattern.build(fixed_codes(), CARD)
    seq_in = lm.shift_right(seq)
    with torch.no_grad():
        ref = hf(**tokenizer(TEXTS, padding=True, return_tensors="pt"),
                 decoder_input_ids=seq_in.flatten(0, 1)).logits.view(len(TEXTS), K, -1, CARD)
        ours = lm.eval()(seq_in, cond.eval()(TEXTS))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    tuned = lora_run["module"]
    torch.testing.assert_close(logits(lm, cond), logits(tuned.lm, tuned.conditioner), atol=1e-5, rtol=0)
    base_lm, base_cond, _, _ = load_musicgen(base["converted"], load_codec_model=False)
    with torch.no_grad():
        assert (base_lm(seq_in, base_cond(TEXTS)) - ref).abs().max() > 1e-3  # not the base model's logits


def test_full_finetuning_loss_falls_and_text_encoder_is_frozen(base):
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(init_from=str(base["converted"]), lm={"gradient_checkpointing": True},
                            conditioner={"cfg_dropout": 0.0, "text": {"word_dropout": 0.0}},
                            lr=3e-3, warmup_steps=0, weight_decay=0.0)
    encoder_before = {k: v.clone() for k, v in module.conditioner.text.encoder.state_dict().items()}
    lm_before = [p.detach().clone() for p in module.lm.parameters()]
    batch = {"codes": fixed_codes(), "mask": torch.ones(2, 12, dtype=torch.bool), "text": TEXTS}
    losses = []

    class FixedBatch(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield batch

    class Record(__import__("lightning").pytorch.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            losses.append(float(outputs["loss"]))

    loader = torch.utils.data.DataLoader(FixedBatch(), batch_size=None)
    trainer(base["dir"], max_steps=8, callbacks=[Record()]).fit(module, loader)
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(torch.equal(v, module.conditioner.text.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert all(not torch.equal(a, b) for a, b in zip(lm_before, module.lm.parameters()) if b.requires_grad)
    assert not any(p.requires_grad for p in module.conditioner.text.encoder.parameters())


def test_global_batch_size_sets_accumulation(base):
    from lightning_musicgen.lm.finetune import accumulation
    from lightning_musicgen.lm.module import MusicGenModule
    module = MusicGenModule(init_from=str(base["converted"]), lora=LORA, global_batch_size=6, lr=1e-3,
                            warmup_steps=0)
    t = trainer(base["dir"], max_steps=2)
    t.fit(module, datamodule=datamodule(base, batch_size=2))
    assert t.accumulate_grad_batches == 3
    assert t.global_step == 2 and t.fit_loop.epoch_loop.batch_progress.total.completed == 6
    with pytest.raises(ValueError, match="global_batch_size=10 is not a multiple"):
        accumulation(10, 4, 1)
    assert accumulation(64, 4, 2) == 8


def test_lora_cli_extract_and_merge(base, lora_run, tmp_path, capsys):
    from lightning_musicgen import MusicGen
    from lightning_musicgen.__main__ import main
    from lightning_musicgen.model_files.adapters import read_adapters
    module = lora_run["module"]
    tuned = logits(module.lm, module.conditioner)
    assert main(["lora", "extract", "--ckpt", str(lora_run["ckpt"]), "--out", str(tmp_path / "a.safetensors")]) == 0
    _, extracted, _ = read_adapters(tmp_path / "a.safetensors")
    _, saved, _ = read_adapters(lora_run["adapters"])
    assert extracted.keys() == saved.keys() and all(torch.equal(extracted[k], saved[k]) for k in saved)
    assert main(["lora", "merge", "--base", str(base["converted"]), "--adapters", str(tmp_path / "a.safetensors"),
                 "--out", str(tmp_path / "merged")]) == 0
    model = MusicGen.from_pretrained(tmp_path / "merged", device="cpu", dtype="float32")
    torch.testing.assert_close(logits(model.lm, model.conditioner), tuned, atol=1e-5, rtol=0)
    assert model.codec.n_q == K  # the base's codec came along
    capsys.readouterr()
    assert main(["lora", "extract", "--ckpt", str(base["converted"]), "--out", str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a LoRA fine-tuning checkpoint" in err[0]


def test_evaluation_scores_the_base_model_once_at_the_start(base, tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from lightning_musicgen.training import EvaluateGeneration
    from lightning_musicgen.data import TokenDataModule
    from lightning_musicgen.lm.module import MusicGenModule
    callback = EvaluateGeneration(every_n_steps=2, metrics=["chroma_cosine"], num_prompts=2, batch_size=2,
                                  duration=0.3, top_k=5, use_ema=False, num_audio_samples=0, score_base=True)
    calls = []
    original = callback.evaluate

    def spy(trainer, pl_module, prefix="eval"):
        lm_state = {k: v.clone() for k, v in pl_module.lm.state_dict().items()}
        calls.append((prefix, trainer.global_step, lm_state))
        return original(trainer, pl_module, prefix)

    callback.evaluate = spy
    torch.manual_seed(0)
    module = MusicGenModule(init_from=str(base["converted"]), lora=LORA, lr=1e-2, warmup_steps=0)
    initial = {k: v.clone() for k, v in module.lm.state_dict().items()}
    data = TokenDataModule(train_shards=str(base["tokens"]), val_shards=str(base["tokens"]), segment_duration=1.0,
                           batch_size=2, num_workers=0, epoch_steps=100)
    trainer(tmp_path, max_steps=2, logger=CSVLogger(tmp_path, name="csv"), callbacks=[callback]).fit(module, datamodule=data)
    assert [(p, s) for p, s, _ in calls] == [("eval_base", 0), ("eval", 2)]
    assert all(torch.equal(calls[0][2][k], v) for k, v in initial.items())  # scored before any update
    assert any(not torch.equal(calls[1][2][k], v) for k, v in initial.items())
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/*/metrics.csv")))))
    base_rows = [r for r in rows if r.get("eval_base/chroma_cosine")]
    tuned_rows = [r for r in rows if r.get("eval/chroma_cosine")]
    assert [r["step"] for r in base_rows] == ["0"] and [r["step"] for r in tuned_rows] == ["2"]


@pytest.mark.parametrize("config", ["small_lora", "small_full"])
def test_finetune_configs_train(base, tmp_path, config, root):
    """The shipped configs run as they are, on the tiny converted model and its token shards."""
    from lightning_musicgen.cli import MusicGenCLI
    cli = MusicGenCLI(args=[
        "fit", "--config", str(root / "configs/trainer/default.yaml"), "--config", str(root / f"configs/finetune/{config}.yaml"),
        "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false", "--trainer.default_root_dir", str(tmp_path),
        "--model.init_args.init_from", str(base["converted"]), "--model.init_args.global_batch_size=4",
        "--data.class_path=lightning_musicgen.data.TokenDataModule",
        "--data.init_args.train_shards", str(base["tokens"]), "--data.init_args.val_shards=null",
        "--data.init_args.segment_duration=1.0", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0"])
    assert cli.trainer.global_step == 2 and cli.trainer.accumulate_grad_batches == 2
    assert (cli.model.lora is not None) == (config == "small_lora")
    assert cli.model.lm.transformer.gradient_checkpointing


def test_memory_budget_picks_the_micro_batch(base):
    from lightning_musicgen.lm.module import MusicGenModule
    from lightning_musicgen.memory import GiB, estimate_for_module
    module = MusicGenModule(init_from=str(base["converted"]), lora=LORA, global_batch_size=4, lr=1e-3, warmup_steps=0)
    peaks = {b: estimate_for_module(module, b, 1.0, "32-true", audio=False).peak for b in (1, 2, 4)}
    assert peaks[1] < peaks[2] < peaks[4]
    module.memory_budget_gb = (peaks[2] + peaks[4]) / 2 / GiB  # 2 fits, 4 does not
    data = datamodule(base, batch_size=4)
    sizes = []

    class Sizes(__import__("lightning").pytorch.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sizes.append(batch["codes"].shape[0])

    t = trainer(base["dir"], max_steps=1, callbacks=[Sizes()])
    t.fit(module, datamodule=data)
    assert data.batch_size == 2 and t.accumulate_grad_batches == 2 and sizes == [2, 2]
    assert t.fit_loop.epoch_loop.batch_progress.total.completed == 2
