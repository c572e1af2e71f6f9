"""Foundation: package import, CLI verbs, every config parses, schedule values, config errors."""
import math
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli, run_cli_batch
from lightning_musicgen.__main__ import TOOL_VERBS, TRAIN_VERBS
from lightning_musicgen.optim import WarmupCosineLR, adamw_warmup_cosine, warmup_cosine_factor

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml"))


def test_package_imports():
    import lightning_musicgen
    import lightning_musicgen.audio
    assert lightning_musicgen.__version__


def test_help_lists_every_verb():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for verb in [*TRAIN_VERBS, *TOOL_VERBS]:
        assert f"  {verb} " in out.stdout, verb
    assert set(TOOL_VERBS) >= {"prepare", "demo-data", "tokenize", "generate", "convert", "submit"}


def test_unknown_verb_is_one_line_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == "error: unknown verb 'frobnicate'"


def _with_trainer(cfg: Path) -> list[str]:
    """Model/data configs are composed with the trainer defaults, as the README shows; the demo's
    `*_long.yaml` overlays over the config they extend, as the Makefile's `demo-long` does."""
    if cfg.parent.name in ("trainer", "cluster"):
        return ["--config", str(cfg)]
    base = ["--config", str(cfg.with_name(cfg.stem[:-len("_long")] + ".yaml"))] if cfg.stem.endswith("_long") else []
    return ["--config", str(ROOT / "configs/trainer/default.yaml"), *base, "--config", str(cfg)]


@pytest.fixture(scope="module")
def printed_configs() -> dict:
    """`fit --print_config` of every training config, parsed in one process (the import cost once)."""
    cfgs = [c for c in CONFIGS if c.parent.name != "cluster"]
    return dict(zip(cfgs, run_cli_batch([["fit", *_with_trainer(c), "--print_config"] for c in cfgs])))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_prints(cfg, printed_configs):
    if cfg.parent.name == "cluster":
        pytest.skip("cluster configs are read by `submit`, tested with it")
    out = printed_configs[cfg]
    assert out.returncode == 0, out.stderr[-2000:]
    printed = __import__("yaml").safe_load(out.stdout)
    assert {"trainer", "model", "data"} <= set(printed) or cfg.parent.name == "trainer", sorted(printed)
    assert "max_steps" in printed["trainer"]


def test_misspelt_key_is_named(tmp_path):
    text = (ROOT / "configs/trainer/default.yaml").read_text().replace("max_steps:", "max_stepz:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = run_cli("fit", "--config", bad)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "trainer.max_stepz" in lines[0] and str(bad) in lines[0]


def test_bad_value_is_named(tmp_path):
    text = (ROOT / "configs/trainer/default.yaml").read_text().replace("precision: auto ", "precision: bf17 ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = run_cli("fit", "--config", bad)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "trainer.precision" in line and "bf17" in line


def test_interpolation_is_resolved(tmp_path):
    cfg = tmp_path / "interp.yaml"
    cfg.write_text("trainer:\n  max_steps: 7\n  val_check_interval: ${trainer.max_steps}\n")
    out = run_cli("fit", "--config", ROOT / "configs/trainer/default.yaml", "--config", cfg,
                  "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "val_check_interval: 7" in out.stdout


def test_schedule_values():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.AdamW(p, lr=2e-3)
    sched = WarmupCosineLR(opt, warmup_steps=100, total_steps=1100, min_lr_ratio=0.1)
    lrs = []
    for _ in range(1300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0                                     # start of warmup
    assert lrs[50] == pytest.approx(1e-3)                    # half-way up the linear ramp
    assert lrs[100] == pytest.approx(2e-3)                   # end of warmup: peak
    assert lrs[600] == pytest.approx(2e-3 * 0.55)            # middle of the cosine: (1 + min) / 2
    assert lrs[1100] == pytest.approx(2e-4)                  # end: min_lr_ratio * lr
    assert lrs[1299] == pytest.approx(2e-4)                  # held after the end
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101]))
    assert all(a >= b - 1e-15 for a, b in zip(lrs[100:1100], lrs[101:1101]))


def test_schedule_matches_transformers():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    p = [torch.nn.Parameter(torch.zeros(1))]
    o1, o2 = torch.optim.SGD(p, lr=1.0), torch.optim.SGD(p, lr=1.0)
    s1 = WarmupCosineLR(o1, 10, 250, 0.05)
    s2 = get_cosine_with_min_lr_schedule_with_warmup(o2, 10, 250, min_lr_rate=0.05)
    for _ in range(251):
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], abs=1e-12)
        s1.step()
        s2.step()


def test_schedule_rejects_bad_arguments():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineLR(opt, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WarmupCosineLR(opt, warmup_steps=0, total_steps=10, min_lr_ratio=1.5)


def test_adamw_groups_skip_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    conf = adamw_warmup_cosine(model, lr=1e-3, weight_decay=0.1, warmup_steps=2, total_steps=10)
    groups = conf["optimizer"].param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert conf["lr_scheduler"]["interval"] == "step"
    assert warmup_cosine_factor(5, 0, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_expected_lightning_warnings_are_silenced_and_others_are_not():
    """The CLI hides three Lightning warnings that are expected with our modules (their texts as
    Lightning 2.6 prints them) and nothing else."""
    import warnings
    from lightning_musicgen.cli import silence_expected_warnings
    expected = [
        "Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading "
        "(when num_workers > 1), `__len__` could be inaccurate",
        "Using ModelCheckpoint with manual optimization and every_n_train_steps, but no pre-optimization "
        "state was saved. The checkpoint will contain the model state AFTER optimization.",
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
        "treespec.is_leaf()` instead.",
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_expected_warnings()
        for message in expected + ["The dataloader does not have many workers which may be a bottleneck."]:
            warnings.warn(message, UserWarning)
    assert [str(w.message) for w in seen] == ["The dataloader does not have many workers which may be a bottleneck."]
