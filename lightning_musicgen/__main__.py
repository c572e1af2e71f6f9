"""`python -m lightning_musicgen VERB ...`: training verbs (LightningCLI) and tool verbs."""
from __future__ import annotations

import importlib
import re
import sys

TRAIN_VERBS = {
    "fit": "train a codec or an LM from a YAML config (LightningCLI)",
    "validate": "run the validation loop of a config/checkpoint",
    "test": "run the test loop of a config/checkpoint",
    "predict": "run the predict loop of a config/checkpoint",
}
TOOL_VERBS = {
    "prepare": ("lightning_musicgen.data.prepare", "audio folder or manifest -> WebDataset shards"),
    "demo-data": ("lightning_musicgen.data.demo", "render the offline demo music dataset into shards"),
    "tokenize": ("lightning_musicgen.data.tokenize", "audio shards -> codec token shards for LM training"),
    "generate": ("lightning_musicgen.generate_cli", "generate music from text/melody/prompt to wav files"),
    "convert": ("lightning_musicgen.convert.cli", "transformers / audiocraft weights -> our model folder"),
    "export": ("lightning_musicgen.convert.export", "checkpoint -> model folder, transformers or audiocraft files"),
    "lora": ("lightning_musicgen.lm.lora_cli", "LoRA adapters: extract them, or merge them into the base model"),
    "submit": ("lightning_musicgen.slurm.submit", "render and submit a SLURM (sbatch) training job"),
}


def usage() -> str:
    lines = ["usage: python -m lightning_musicgen VERB [options]   (VERB --help for its options)", "",
             "training (LightningCLI, --config configs/...yaml):"]
    lines += [f"  {v:<10} {d}" for v, d in TRAIN_VERBS.items()]
    lines += ["", "tools:"]
    lines += [f"  {v:<10} {d}" for v, (_, d) in TOOL_VERBS.items()]
    return "\n".join(lines)


BOILERPLATE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
               "- Expected a <class 'NoneType'>", "- Problem with given class_path", "Parser key")


def _nested_error(lines: list[str]) -> tuple[str, str | None, str] | None:
    """jsonargparse's nested report -> (dotted key, given value, reason) for its deepest error."""
    rows = [(len(ln) - len(ln.lstrip()), ln.strip()) for ln in lines if ln.strip()]
    reasons = [(i, ind, text) for i, (ind, text) in enumerate(rows) if not text.startswith(BOILERPLATE)]
    if not reasons:
        return None
    at, depth, reason = max(reasons, key=lambda r: r[1])
    chain, level = [], depth
    for ind, text in reversed(rows[:at]):  # the Parser keys enclosing the deepest reason
        m = re.match(r'Parser key "([^"]+)"', text)
        if m and ind < level:
            chain.insert(0, m.group(1))
            level = ind
    owner = None
    for ind, text in reversed(rows[:at]):
        m = re.match(r"- Problem with given class_path '([^']+)'", text)
        if m:
            owner = m.group(1).rsplit(".", 1)[-1]
            break
    value = None
    unknown = re.match(r"Option '([^']+)' is not accepted", reason)
    if unknown:
        chain.append(unknown.group(1))
        reason = f"unknown option (not a field of {owner})" if owner else "unknown option"
    typed = re.match(r"Expected a <class '([^']+)'>\. Got value: (.*)", reason)
    if typed:
        value, reason = typed.group(2), f"expected {typed.group(1)}"
    given = [re.search(r"NestedArg\(key='[^']*', val='(.*)'\)", text) for _, text in rows]
    given = [g for g in given if g]
    if value is None and given:
        value = given[-1].group(1)
    if value is None:
        plain = [text.split(":", 1)[1].strip() for _, text in rows if text.startswith("Given value:")]
        value = plain[-1] if plain else None
    if not chain:
        return None
    if chain[0] in ("model", "data") and len(chain) > 1:
        chain.insert(1, "init_args")
    return ".".join(chain), value, reason


def config_error_line(message: str, argv: list[str]) -> str:
    """jsonargparse's multi-line validation report -> one line naming the config, key, value and
    what was expected (the deepest error of a nested option such as model.init_args.lm.dim)."""
    lines = message.strip().splitlines()
    stripped = [ln.strip() for ln in lines if ln.strip()]
    head = stripped[0].rstrip(":") if stripped else "invalid configuration"
    in_class = any(ln.startswith("- Problem with given class_path") for ln in stripped)
    nested = _nested_error(lines) if in_class else None
    if nested is not None:
        key, value, reason = nested
        head = f"{key}" + (f"={value!r}" if value is not None else "") + f": {reason}"
    else:
        given = next((ln for ln in stripped if ln.startswith("Given value:")), None)
        if given:
            head += f": invalid value {given.split(':', 1)[1].strip()!r}"
    configs = config_files(argv)
    return f"{', '.join(configs)}: {head}" if configs else head


def config_files(argv: list[str]) -> list[str]:
    """The files given with `--config PATH` or `--config=PATH`."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def yaml_error_line(argv: list[str]) -> str | None:
    """`FILE:LINE:COLUMN: invalid YAML (problem)` for the first --config file that does not parse."""
    import yaml
    for path in config_files(argv):
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            return f"{where}: invalid YAML ({exc.problem or exc.context})"
        except (OSError, yaml.YAMLError):
            continue
    return None


def _class_name_in(exc: BaseException) -> str | None:
    """The class (`class_path='pkg.Name'`) jsonargparse was instantiating when `exc` was raised."""
    while exc is not None:
        match = re.search(r"class_path='[\w.]*?(\w+)'", str(exc))
        if match:
            return match.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def error_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug (keep the traceback).

    User errors: any `lightning_musicgen.errors.UserError` in the exception chain (raised by a
    command, or by a class's __init__ while the training CLI builds it: then the class is named),
    a config file that is not valid YAML (file:line:column), and the training CLI's argument errors."""
    from argparse import ArgumentError

    from lightning_musicgen.errors import one_line, user_error_in
    user = user_error_in(exc)
    if user is not None:
        message = one_line(str(user))
        owner = _class_name_in(exc) if argv and argv[0] in TRAIN_VERBS else None
        return f"{owner}: {message}" if owner and not message.startswith(owner) else message
    if argv and argv[0] in TRAIN_VERBS:
        chain, seen = exc, set()
        while chain is not None and id(chain) not in seen:
            seen.add(id(chain))
            if type(chain).__module__.startswith("yaml"):
                return yaml_error_line(argv) or f"invalid YAML ({one_line(str(chain))})"
            chain = chain.__cause__ or chain.__context__
        if isinstance(exc, ArgumentError):
            return config_error_line(str(exc), argv)
    return None


def run_verb(fn, argv: list[str]) -> int:
    """Run one verb; a user error ends as one line `error: ...` on stderr and exit status 2.
    Set LIGHTNING_MUSICGEN_TRACEBACK=1 to see the traceback of user errors too."""
    import os
    try:
        return int(fn() or 0)
    except Exception as exc:
        line = error_line(exc, argv)
        if line is None or os.environ.get("LIGHTNING_MUSICGEN_TRACEBACK"):
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    verb = argv[0]
    if verb in TRAIN_VERBS:
        def train() -> int:
            from lightning_musicgen.cli import MusicGenCLI
            MusicGenCLI(args=argv if explicit else None)
            return 0
        return run_verb(train, argv)
    if verb in TOOL_VERBS:
        module_name = TOOL_VERBS[verb][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                print(f"error: verb '{verb}' is not available in this version ({module_name} missing)",
                      file=sys.stderr)
                return 2
            raise
        return run_verb(lambda: module.main(argv[1:]), argv)
    print(f"error: unknown verb '{verb}'\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
