"""`python -m lightning_musicgen VERB ...`: one command line for every verb.

Training verbs (fit, validate, test, predict) go to the LightningCLI (`lightning_musicgen.cli`). Every
tool verb is one typed function (`TOOL_VERBS`: "module:function"); its signature and Google-style
docstring make the verb's options and `VERB --help`:
  - a positional-only parameter is a positional argument (a `list[str]` one takes one or more values);
  - `*args` takes what follows `--`, untouched;
  - every other parameter is an option spelled with dashes (`auto_caption` -> `--auto-caption`):
    `bool` = a flag, `list[str]` = repeatable, `Literal[...]` = choices; no default = required.
Values are converted as plain argparse does (`float("nan")` is a float; the verb checks ranges).

Errors: a `UserError` (lightning_musicgen.errors) and a usage error print one line `error: ...` and
exit 2; a `RunError` prints one line and exits 1; anything else is a bug and keeps its traceback.
`sys.exit` is called here only.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from typing import Literal, Union, get_args, get_origin, get_type_hints

TRAIN_VERBS = {
    "fit": "train a codec or an LM from a YAML config (LightningCLI)",
    "validate": "run the validation loop of a config/checkpoint",
    "test": "run the test loop of a config/checkpoint",
    "predict": "run the predict loop of a config/checkpoint",
}
TOOL_VERBS = {
    "prepare": ("lightning_musicgen.data.prepare:prepare_command", "audio folder or manifest -> WebDataset shards"),
    "demo-data": ("lightning_musicgen.data.demo:demo_data_command",
                  "render the offline demo music dataset into shards"),
    "tokenize": ("lightning_musicgen.data.tokenize:tokenize_command",
                 "audio shards -> codec token shards for LM training"),
    "generate": ("lightning_musicgen.generate:generate_command",
                 "generate music from text/melody/prompt to wav files"),
    "convert": ("lightning_musicgen.convert:convert_command",
                "transformers / audiocraft weights -> our model folder"),
    "export": ("lightning_musicgen.convert.export:export_command",
               "checkpoint -> model folder, transformers or audiocraft files"),
    "lora": ("lightning_musicgen.model_files.adapters:lora_command",
             "LoRA adapters: extract them, or merge them into the base model"),
    "submit": ("lightning_musicgen.slurm.submit:submit_command",
               "render and submit a SLURM (sbatch) training job"),
    "memory": ("lightning_musicgen.memory:memory_command",
               "estimate the memory of fine-tuning an official model (what fits in 16-80 GB)"),
    "reference": ("lightning_musicgen.metrics.reference:reference_command",
                  "embed audio files and save FAD reference statistics (mu, sigma)"),
}
PROG = "python -m lightning_musicgen"


def verb_function(verb: str):
    """The typed function of a tool verb (imports its module)."""
    module_name, name = TOOL_VERBS[verb][0].split(":")
    return getattr(importlib.import_module(module_name), name)


class PlainType:
    """argparse's own conversion by `kind` (str, int, float): jsonargparse's typed parsing would read
    'nan' as a string, and the verb checks ranges itself. Shown as the type's name in help and errors."""

    def __init__(self, kind: type):
        self.kind = kind

    def __call__(self, text: str):
        return self.kind(text)

    def __repr__(self) -> str:
        return self.kind.__name__

    __str__ = __repr__


def _scalar(hint):
    """Optional[X] (or X | None) -> X."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def add_function_options(parser, fn) -> dict[str, str]:
    """Describe `fn` in `parser`: its docstring's text, and one argument per parameter (see the module
    docstring) helped by the parameter's doc. Returns {parameter: how the user spells it}."""
    import docstring_parser
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    parser.description = "\n\n".join(filter(None, (doc.short_description, doc.long_description)))
    helps = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
    hints = get_type_hints(fn)
    spelled = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            continue  # the arguments after `--` (see run_tool)
        name, hint, default = param.name, _scalar(hints.get(param.name, str)), param.default
        kwargs: dict = {"help": helps.get(name)}
        if get_origin(hint) is Literal:
            choices = list(get_args(hint))
            kwargs |= {"type": PlainType(type(choices[0])), "choices": choices}
        elif get_origin(hint) is list:
            kwargs["type"] = PlainType(get_args(hint)[0])
        elif hint is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = PlainType(hint)
        if param.kind is param.POSITIONAL_ONLY:
            kwargs |= {"metavar": name.upper()} | ({"nargs": "+"} if get_origin(hint) is list else {})
            parser.add_argument(name, **kwargs)
            spelled[name] = name.upper()
            continue
        flag = "--" + name.replace("_", "-")
        if get_origin(hint) is list:
            kwargs["action"] = "append"
        if default is param.empty:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        parser.add_argument(flag, dest=name, **kwargs)
        spelled[name] = flag
    return spelled


def build_parser(verb: str | None = None):
    """The parser of every verb, and {parameter: spelling} of `verb`: only that verb's options are
    built (it imports the verb's module); the others show their one-line summary."""
    from jsonargparse import ArgumentParser
    parser = ArgumentParser(prog=PROG, exit_on_error=False,
                            description="Train, run and ship MusicGen models. `VERB --help` explains a verb.")
    subcommands = parser.add_subcommands(required=True, dest="verb")
    for name, summary in TRAIN_VERBS.items():  # parsed by the LightningCLI (see main); listed here
        subcommands.add_subcommand(name, ArgumentParser(description=summary, exit_on_error=False), help=summary)
    spelled = {}
    for name, (_, summary) in TOOL_VERBS.items():
        sub = ArgumentParser(prog=f"{PROG} {name}", exit_on_error=False, description=summary)
        if name == verb:
            spelled = add_function_options(sub, verb_function(name))
        subcommands.add_subcommand(name, sub, help=summary)
    return parser, spelled


def usage_error_line(message: str, verb: str, spelled: dict[str, str]) -> str:
    """argparse/jsonargparse's usage error -> one line naming the option as the user spells it."""
    message = " ".join(message.split())
    missing = re.match(r"the following arguments are required: (.*)", message)
    if missing:
        names = [spelled.get(key.strip().split(".", 1)[-1], key.strip()) for key in missing.group(1).split(",")]
        return f"{verb}: missing required {', '.join(names)}"
    unknown = re.match(r"unrecognized arguments: (\S+)", message)
    if unknown:
        return f"{verb}: unknown option {unknown.group(1)} (see `{PROG} {verb} --help`)"
    return f"{verb}: {message}"


def run_tool(verb: str, args: list[str]) -> int:
    """Parse `VERB ARGS` and call the verb's function; errors are raised (see `main`)."""
    from argparse import ArgumentError
    fn = verb_function(verb)
    passthrough: list[str] = []
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values()) and "--" in args:
        cut = args.index("--")
        args, passthrough = args[:cut], args[cut + 1:]
    parser, spelled = build_parser(verb)
    try:
        config = parser.parse_args([verb, *args])
    except ArgumentError as exc:
        raise UsageError(usage_error_line(str(exc), verb, spelled)) from None
    values = dict(vars(config[verb]))
    params = inspect.signature(fn).parameters.values()
    positional = [values.pop(p.name) for p in params if p.kind is p.POSITIONAL_ONLY]
    return int(fn(*positional, *passthrough, **values) or 0)


def error_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug (keep the traceback).

    User errors: any `lightning_musicgen.errors.UserError` in the exception chain (raised by a verb, or
    by a class's __init__ while the training CLI builds it: then the class is named), and for the
    training verbs a config file that is not valid YAML or an option/value the LightningCLI rejects."""
    from lightning_musicgen.errors import one_line, user_error_in
    training = bool(argv) and argv[0] in TRAIN_VERBS
    if training:
        from lightning_musicgen.cli import class_name_in, training_error_line
    user = user_error_in(exc)
    if user is not None:
        message = one_line(str(user))
        owner = class_name_in(exc) if training else None
        return f"{owner}: {message}" if owner and not message.startswith(owner) else message
    return training_error_line(exc, argv) if training else None


class UsageError(Exception):
    """A command line that does not parse (unknown option, missing or malformed value): exit 2."""


def run_verb(fn, argv: list[str]) -> int:
    """Run one verb; a user error ends as one line `error: ...` on stderr and exit status 2, a
    `RunError` as one line and exit status 1. Set LIGHTNING_MUSICGEN_TRACEBACK=1 to see the traceback
    of user errors too."""
    import os

    from lightning_musicgen.errors import RunError, one_line
    try:
        return int(fn() or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        if os.environ.get("LIGHTNING_MUSICGEN_TRACEBACK"):
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = error_line(exc, argv)
        if line is None or os.environ.get("LIGHTNING_MUSICGEN_TRACEBACK"):
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv else None
    if verb in TRAIN_VERBS:
        def train() -> int:
            from lightning_musicgen.cli import MusicGenCLI
            MusicGenCLI(args=argv if explicit else None)
            return 0
        return run_verb(train, argv)
    if verb in TOOL_VERBS:
        try:
            return run_verb(lambda: run_tool(verb, argv[1:]), argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
    if verb is not None and not verb.startswith("-") and verb != "help":
        print(f"error: unknown verb '{verb}'", file=sys.stderr)  # `--help` lists them
        return 2
    if verb in (None, "-h", "--help", "help"):
        build_parser()[0].print_help()
        return 0 if argv else 2
    print(f"error: unknown option '{verb}' (`{PROG} --help` lists the verbs)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
