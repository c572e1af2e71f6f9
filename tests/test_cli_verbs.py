"""One command line for every verb: `--help` lists them all, `VERB --help` documents every option of the
verb's function, the public dashed flag spellings parse, and a bad argument is one stderr line naming it
(exit 2) for every verb, run as commands in a fresh process."""
from __future__ import annotations

import inspect

import pytest

from conftest import run_cli, run_cli_batch
from lightning_musicgen.__main__ import TOOL_VERBS, TRAIN_VERBS, main, verb_function


def bad_calls(tmp) -> dict[str, tuple[list[str], str]]:
    """verb -> (arguments with one bad thing, the text the error line must contain)."""
    missing = str(tmp / "MISSING")
    return {
        "fit": (["--no-such-option", "1"], "--no-such-option"),
        "validate": (["--no-such-option", "1"], "--no-such-option"),
        "test": (["--no-such-option", "1"], "--no-such-option"),
        "predict": (["--no-such-option", "1"], "--no-such-option"),
        "prepare": (["--input", missing, "--output", str(tmp / "out")], missing),
        "demo-data": (["--output", str(tmp / "demo"), "--minutes", "1", "--soundfont", missing + ".sf2"],
                      missing + ".sf2"),
        "tokenize": (["--codec", missing + ".ckpt", "--input", str(tmp), "--output", str(tmp / "tok")],
                     missing + ".ckpt"),
        "generate": (["--ckpt", missing + ".ckpt", "--text", "x", "--out", str(tmp / "gen")], missing + ".ckpt"),
        "convert": (["--from-audiocraft", missing, "--out", str(tmp / "conv")], missing),
        "export": (["--ckpt", missing, "--out", str(tmp / "exp")], missing),
        "lora": (["extract", "--ckpt", missing, "--out", str(tmp / "a.safetensors")], missing),
        "submit": (["--config", missing + ".yaml", "--dry-run"], missing + ".yaml"),
        "memory": (["--model", "musicgen-huge"], "musicgen-huge"),
        "reference": ([missing, "--out", str(tmp / "x.npz")], missing),
    }


def test_every_verb_reports_a_bad_argument_in_one_line(tmp_path):
    calls = bad_calls(tmp_path)
    assert set(calls) == set(TRAIN_VERBS) | set(TOOL_VERBS)
    results = dict(zip(calls, run_cli_batch([[verb, *calls[verb][0]] for verb in calls])))
    for verb, res in results.items():
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2, (verb, res.returncode, res.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (verb, res.stderr[-2000:])
        assert calls[verb][1] in lines[0], (verb, lines[0])
    assert not list(tmp_path.iterdir()), "a verb that failed on its input wrote output"


@pytest.mark.parametrize("verb", sorted(TOOL_VERBS))
def test_unknown_option_and_malformed_value_name_the_option(verb, capsys):
    assert main([verb, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--no-such-option" in err, err
    options = [p for p in inspect.signature(verb_function(verb)).parameters.values()
               if p.kind is p.KEYWORD_ONLY and p.annotation in ("int", "Optional[int]")]
    if options:  # an int option given a word: named with its dashed spelling and the bad value
        flag = "--" + options[0].name.replace("_", "-")
        assert main([verb, flag, "many"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and "'many'" in err, err


def test_missing_required_option_is_named_with_its_dashed_spelling(capsys):
    assert main(["tokenize", "--input", "x", "--output", "y"]) == 2
    assert capsys.readouterr().err == "error: tokenize: missing required --codec\n"
    assert main(["reference", "--out", "x.npz"]) == 2
    assert capsys.readouterr().err == "error: reference: missing required INPUTS\n"


def test_help_lists_every_verb_with_its_summary(capsys):
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for verb, summary in {**TRAIN_VERBS, **{v: s for v, (_, s) in TOOL_VERBS.items()}}.items():
        assert f" {verb} {summary}" in out, verb


@pytest.mark.parametrize("verb", sorted(TOOL_VERBS))
def test_verb_help_documents_every_option(verb, capsys):
    import docstring_parser
    fn = verb_function(verb)
    assert main([verb, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    doc = docstring_parser.parse(inspect.getdoc(fn))
    assert " ".join(doc.short_description.split()) in out
    documented = {p.arg_name: " ".join(p.description.split()) for p in doc.params}
    for param in inspect.signature(fn).parameters.values():
        assert documented.get(param.name), f"{verb}: parameter {param.name} has no description"
        if param.kind is param.VAR_POSITIONAL:
            continue  # what follows `--`, described in the verb's text
        spelled = param.name.upper() if param.kind is param.POSITIONAL_ONLY else "--" + param.name.replace("_", "-")
        assert f"{spelled} " in out, (verb, spelled)
        assert documented[param.name][:40] in out, (verb, param.name)


def test_training_verb_help_exits_0():
    res = run_cli("fit", "--help")
    assert res.returncode == 0 and "--config" in res.stdout and "--trainer.max_steps" in res.stdout, res.stderr[-2000:]


def test_public_flag_spellings_parse(tmp_path, capsys):
    """The dashed spellings the docs, Makefile and notebooks use reach the verb's function."""
    from lightning_musicgen.__main__ import build_parser
    parser, spelled = build_parser("prepare")
    config = parser.parse_args(["prepare", "--input", "a", "--output", "b", "--auto-caption", "--sample-rate", "16000",
                                "--channels", "2", "--no-progress", "--skip-truncated"])
    assert (config.prepare.auto_caption, config.prepare.sample_rate, config.prepare.channels) == (True, 16000, 2)
    assert spelled["auto_caption"] == "--auto-caption"
    parser, _ = build_parser("generate")
    config = parser.parse_args(["generate", "--ckpt", "c", "--text", "a", "--text", "b", "--cfg-coef", "nan",
                                "--out", "o", "--two-pass-cfg"])
    assert config.generate.text == ["a", "b"] and config.generate.two_pass_cfg is True
    assert config.generate.cfg_coef != config.generate.cfg_coef  # nan reaches the verb, which names it
    assert main(["demo-data", "--channels", "3"]) == 2
    assert "--channels" in capsys.readouterr().err
