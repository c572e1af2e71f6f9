"""Errors name the bad thing in one line (issue 13, cases 13-14).

13 values checked in __init__ (batch_size 0, segment_duration 0, an LM card that does not fit the codec's
   codes, a missing or wrong-kind codec_checkpoint) and YAML syntax errors: `error: ...`, exit 2, no
   traceback, no jsonargparse "Union subtypes" report
14 generate: `--cfg-coef nan`, `--device cuda` without a GPU: one line; a long request shows progress
   and an estimate of the time left
"""
import importlib.util
import io
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_cli, run_cli_batch
from lightning_musicgen.errors import (AudioReadError, CheckpointError, CheckpointNotFoundError, ConfigError,
                                       InputError, UserError)
from lightning_musicgen.model_files.codec import save_codec


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory):
    """A tiny MusicGenModule + TokenDataModule config around a real (random) 2 x 16 codec checkpoint."""
    from lightning_musicgen.codec import CodecConfig, CompressionModel
    folder = tmp_path_factory.mktemp("cfg")
    codec = CompressionModel(CodecConfig(sample_rate=8000, dimension=8, n_filters=4, ratios=(4, 4), lstm_layers=0,
                                         n_q=2, card=16, kmeans_init=False))
    save_codec(codec, folder / "codec.pt")
    torch.save({"weights": torch.zeros(3)}, folder / "not_a_codec.pt")

    def write(name, card="null"):
        path = folder / name
        path.write_text(f"""\
seed_everything: 0
trainer: {{accelerator: cpu, max_steps: 1, logger: false, enable_checkpointing: false, enable_progress_bar: false}}
model:
  class_path: lightning_musicgen.lm.MusicGenModule
  init_args:
    lm: {{n_q: null, card: {card}, dim: 16, num_heads: 2, num_layers: 1}}
    conditioner: {{text: {{name: minilm}}, fuse: cross}}
    codec_checkpoint: {folder / 'codec.pt'}
data:
  class_path: lightning_musicgen.data.TokenDataModule
  init_args: {{train_shards: {folder / 'none'}, batch_size: 2, segment_duration: 1.0, num_workers: 0}}
""")
        return path

    bad = folder / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 1\n  devices: [1, 2\nmodel: {}\n")
    return {"ok": write("ok.yaml"), "card": write("card.yaml", card=8), "bad": bad, "folder": folder}


def one_error_line(stderr: str) -> str:
    """The single `error:` line of a run that failed cleanly (no traceback, no multi-line report)."""
    assert "Traceback" not in stderr and "Union subtypes" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def test_error_hierarchy_keeps_old_catch_sites_working():
    assert issubclass(ConfigError, ValueError) and issubclass(InputError, UserError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointNotFoundError, UserError)
    assert issubclass(AudioReadError, RuntimeError) and issubclass(AudioReadError, UserError)
    assert str(CheckpointNotFoundError("x.ckpt: missing")) == "x.ckpt: missing"


def test_13_init_checks_and_yaml_errors_are_one_line(fit_config, capsys):
    ok, folder = fit_config["ok"], fit_config["folder"]
    # through a real process once: exit code, stderr, nothing else
    res = run_cli("fit", "--config", ok, "--data.init_args.batch_size", "0", timeout=600)
    assert res.returncode == 2
    assert one_error_line(res.stderr) == "error: TokenDataModule: batch_size=0: must be >= 1"

    from lightning_musicgen.__main__ import main
    cases = [
        (["--data.init_args.segment_duration", "0"], "error: TokenDataModule: segment_duration=0.0: must be > 0"),
        (["--model.init_args.codec_checkpoint", str(folder / "missing.pt")],
         f"error: MusicGenModule: {folder / 'missing.pt'}: codec checkpoint not found"),
        (["--model.init_args.codec_checkpoint", str(folder / "not_a_codec.pt")],
         f"error: MusicGenModule: {folder / 'not_a_codec.pt'}: neither a "),
        (["--model.init_args.codec_checkpoint", str(ok)],
         f"error: MusicGenModule: {ok}: not a readable checkpoint (UnpicklingError"),
    ]
    for extra, expected in cases:
        assert main(["fit", "--config", str(ok), *extra]) == 2, extra
        assert one_error_line(capsys.readouterr().err).startswith(expected), extra
    assert main(["fit", "--config", str(fit_config["card"])]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: MusicGenModule: lm.n_q=2, lm.card=8 do not match the codec {folder / 'codec.pt'} (2 codebooks x 16 "
        "codes); set them to null to use the codec's")
    assert main(["fit", "--config", str(ok), "--config", str(fit_config["bad"])]) == 2
    line = one_error_line(capsys.readouterr().err)  # the flow list opened on line 3 is still open on line 4
    assert line.startswith(f"error: {fit_config['bad']}:4:") and "invalid YAML (expected ',' or ']'" in line


def test_13_token_ids_above_the_lm_card_stop_in_one_line():
    """Without a codec to compare with, the token shards' card is checked on the first batch."""
    from lightning_musicgen.lm.module import MusicGenModule
    module = MusicGenModule(lm={"n_q": 2, "card": 8, "dim": 16, "num_heads": 2, "num_layers": 1},
                            conditioner={"text": {"name": "minilm"}, "fuse": "cross"})
    batch = {"codes": torch.randint(0, 8, (2, 2, 5)), "meta": [{"card": 16}] * 2}
    with pytest.raises(ConfigError, match="codes of a 16-code codec, above lm.card=8; set lm.card to 16"):
        module.tokens(batch)
    batch["meta"] = [{"card": 8}] * 2
    assert module.tokens(batch)[0].shape == (2, 2, 5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from test_generation import _build
    return _build(tmp_path_factory, "cli_errors")[2]


def test_14_generate_nan_cfg_and_missing_gpu_are_one_line_and_long_requests_show_an_estimate(ckpt, tmp_path, capsys):
    res = run_cli("generate", "--ckpt", ckpt, "--text", "x", "--cfg-coef", "nan", "--out", tmp_path / "o", timeout=600)
    assert res.returncode == 2 and res.stderr == "error: --cfg-coef must be a finite number, got nan\n"
    assert not (tmp_path / "o").exists()

    from lightning_musicgen.__main__ import main
    from lightning_musicgen.generate import RequestProgress
    if not torch.cuda.is_available():
        assert main(["generate", "--ckpt", str(ckpt), "--text", "x", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err == \
            "error: --device cuda: no CUDA GPU is available on this machine (use --device cpu)\n"
    assert main(["generate", "--ckpt", str(ckpt), "--text", "x", "--device", "cuda:banana", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda:banana: not a device name")

    # the estimate: exact arithmetic on a fake clock (2 batches x 100 steps, 10 steps/s)
    stream, clock = io.StringIO(), iter([0.0, 1.0, 3.0, 7.0, 7.5])
    progress = RequestProgress(2, stream=stream, terminal=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lightning_musicgen.generate.time.perf_counter", lambda: next(clock))
        for done in (1, 11, 31, 71, 76):  # at t = 0, 1, 3, 7, 7.5 s
            progress.update(done, 100)
    assert stream.getvalue().splitlines() == [
        "generate: 2 batch(es) x 100 decoding steps = 200 steps",
        "generate: 11/200 steps (6%), 11.0 steps/s, elapsed 1s, about 17s left",
        "generate: 31/200 steps (16%), 10.3 steps/s, elapsed 3s, about 16s left",
        "generate: 71/200 steps (36%), 10.1 steps/s, elapsed 7s, about 13s left",
    ]

    # a real 1000 s request: the plan and a progress line with an estimate arrive within seconds of decoding
    proc = subprocess.Popen([sys.executable, "-m", "lightning_musicgen", "generate", "--ckpt", str(ckpt), "--text",
                             "a long piece", "--duration", "1000", "--out", str(tmp_path / "long"), "--top-k", "5",
                             "--dtype", "float32", "--threads", "1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "left" in line:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    head = next(line for line in lines if line.startswith("generate: 1 batch(es)"))
    steps = int(re.search(r"= (\d+) steps", head).group(1))
    assert steps >= 1000 * 50  # the codec runs at 50 Hz; sliding windows add their overlaps
    assert re.fullmatch(rf"generate: \d+/{steps} steps \(\d+%\), [\d.]+ steps/s, elapsed \d+s, about \w+ left",
                        lines[-1]), lines


# ---------------------------------------------------------------------------------------------
# Trainer / LightningCLI misconfigurations: each either works (a flag that turns a feature off drops the
# config's callbacks of that feature) or ends with one line naming the option, exit 2
@pytest.fixture(scope="module")
def trainer_config(tmp_path_factory):
    """configs/trainer/default.yaml + configs/demo/musicgen.yaml (their callbacks: ModelCheckpoint,
    LearningRateMonitor, RichProgressBar) around a tiny LM on synthetic token shards, a CSV logger."""
    from test_reliability_training import CARD, DEMO_LM, TRAIN_DEFAULT, write_tokens
    folder = tmp_path_factory.mktemp("trainer_cfg")
    write_tokens(folder / "train")
    tiny = folder / "tiny.yaml"
    tiny.write_text(f"""
trainer:
  accelerator: cpu
  precision: 32-true
  max_steps: 2
  limit_val_batches: 0
  default_root_dir: {folder}
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {folder}}}}}
model:
  init_args:
    lm: {{n_q: 4, card: {CARD}, dim: 32, num_heads: 2, num_layers: 1}}
    codec_checkpoint: null
data:
  init_args: {{train_shards: {folder / 'train'}, val_shards: null, segment_duration: 0.4, batch_size: 2, num_workers: 0}}
""")
    return folder, ["fit", "--config", str(TRAIN_DEFAULT), "--config", str(DEMO_LM), "--config", str(tiny)]


MISCONFIGURATIONS = [  # (extra arguments, the start of the one error line)
    (["--trainer.precision=17"], "trainer.precision='17': expected one of auto, 64, 32, 16, "),
    (["--trainer.accelerator=gpu"], "error: trainer.accelerator='gpu': no CUDA GPU is available on this machine"),
    (["--trainer.accelerator=tpu"], "error: trainer (accelerator='tpu', strategy='auto'): Requirement 'torch_xla"),
    (["--trainer.strategy=foo"], "error: trainer.strategy: You selected an invalid strategy name: `strategy='foo'`"),
    (["--trainer.devices=0"], "error: trainer.devices: `Trainer(devices='0')` value is not a valid input"),
    (["--trainer.max_steps=-5"], "error: trainer.max_steps: `max_steps` must be a non-negative integer or -1"),
    (["--trainer.accumulate_grad_batches=0"], "error: trainer.accumulate_grad_batches=0: must be >= 1"),
    (["--trainer.gradient_clip_algorithm=foo"], "error: trainer.gradient_clip_algorithm: `gradient_clip_algorithm` foo"),
    (["--trainer.num_nodes=0"], "error: trainer.num_nodes: `num_nodes` must be a positive integer, but got 0"),
    (["--trainer.limit_train_batches=-1"], "error: trainer.limit_train_batches: You have passed invalid value -1"),
    (["--trainer.fast_dev_run=-1"], "error: trainer.fast_dev_run: fast_dev_run=-1 is not a valid configuration"),
    (["--trainer.max_time=banana"], "error: trainer.max_time: `Timer(duration='banana')` is not a valid duration"),
    (["--trainer.profiler=foo"], "error: trainer.profiler: When passing string value for the `profiler` parameter"),
    (["--trainer.max_stepz=3"], "unrecognized arguments: --trainer.max_stepz=3"),
    (["--seed_everything=abc"], "seed_everything='abc': invalid value"),
    (["--config", "/nonexistent/x.yaml"], "error: --config /nonexistent/x.yaml: file not found"),
    (["--model.class_path=lightning_musicgen.lm.Nope"],
     "model='lightning_musicgen.lm.Nope': module 'lightning_musicgen.lm' has no attribute 'Nope'"),
    (["--trainer.logger.class_path=lightning.pytorch.loggers.Nope"], "trainer.logger='lightning.pytorch.loggers.Nope'"),
    (["--trainer.callbacks+=lightning.pytorch.callbacks.Nope"], "trainer.callbacks='lightning.pytorch.callbacks.Nope'"),
    (["--ckpt_path=/nonexistent/last.ckpt"], "error: --ckpt_path /nonexistent/last.ckpt: checkpoint not found"),
]
DROPPED = [["--trainer.enable_progress_bar=false"], ["--trainer.enable_checkpointing=false"], ["--trainer.logger=false"]]


@pytest.fixture(scope="module")
def misconfigured_runs(trainer_config):
    """Every case of MISCONFIGURATIONS and DROPPED (with fast_dev_run) in one process."""
    folder, base = trainer_config
    argvs = [base + extra for extra, _ in MISCONFIGURATIONS] + [base + extra + ["--trainer.fast_dev_run=1"]
                                                               for extra in DROPPED]
    results = run_cli_batch(argvs, cwd=folder)
    return {tuple(argv[len(base):]): res for argv, res in zip(argvs, results)}


@pytest.mark.parametrize("extra,expected", MISCONFIGURATIONS, ids=[" ".join(e) for e, _ in MISCONFIGURATIONS])
def test_a_trainer_misconfiguration_is_one_line_naming_the_option(misconfigured_runs, extra, expected):
    if "gpu" in expected and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if "torch_xla" in expected and importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed")
    res = misconfigured_runs[tuple(extra)]
    assert res.returncode == 2, res.stderr[-3000:]
    line = one_error_line(res.stderr)
    assert line.startswith(expected) or (not expected.startswith("error:") and expected in line), line
    assert res.stderr.rstrip().splitlines()[-1] == line


def test_a_misconfiguration_lightning_finds_during_fit_is_one_line():
    """Raised by a callback's hook once fit runs (no Trainer argument to check beforehand)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning_musicgen.__main__ import error_line
    try:
        try:
            raise MisconfigurationException("Cannot use `LearningRateMonitor` callback with `Trainer` that has no "
                                            "logger.\nSecond line")
        except MisconfigurationException as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        assert error_line(exc, ["fit"]) == ("trainer.logger: Cannot use `LearningRateMonitor` callback with "
                                            "`Trainer` that has no logger.")
        assert error_line(exc, ["generate"]) is None   # not a training verb: a bug, keeps its traceback


@pytest.mark.parametrize("extra", DROPPED, ids=[" ".join(e) for e in DROPPED])
def test_a_flag_that_turns_a_feature_off_drops_its_callbacks(misconfigured_runs, extra):
    res = misconfigured_runs[tuple(extra + ["--trainer.fast_dev_run=1"])]
    assert res.returncode == 0 and "Traceback" not in res.stderr and "error:" not in res.stderr, res.stderr[-3000:]


def test_enable_progress_bar_false_with_a_rich_progress_bar_in_the_config_trains_without_it(trainer_config):
    """The issue's case through a real process: no MisconfigurationException, one log line, no bar."""
    folder, base = trainer_config
    res = run_cli(*base, "--trainer.enable_progress_bar=false", "--trainer.max_steps=1", cwd=folder, timeout=600)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("trainer.enable_progress_bar=false: not using the RichProgressBar callback(s) of "
                            "the config") == 1, res.stderr[-3000:]
    assert "Epoch 0" not in res.stdout + res.stderr   # the rich bar would draw its "Epoch 0/..." line
