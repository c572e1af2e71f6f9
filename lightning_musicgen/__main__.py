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
    "submit": ("lightning_musicgen.cluster.submit", "render and submit a SLURM (sbatch) training job"),
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
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return f"{', '.join(configs)}: {head}" if configs else head


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    verb = argv[0]
    if verb in TRAIN_VERBS:
        from argparse import ArgumentError

        from lightning_musicgen.cli import MusicGenCLI
        try:
            MusicGenCLI(args=argv if explicit else None)
        except ArgumentError as exc:
            print(f"error: {config_error_line(str(exc), argv)}", file=sys.stderr)
            return 2
        return 0
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
        return int(module.main(argv[1:]) or 0)
    print(f"error: unknown verb '{verb}'\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
