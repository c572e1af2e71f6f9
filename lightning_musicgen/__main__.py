"""`python -m lightning_musicgen VERB ...`: training verbs (LightningCLI) and tool verbs."""
from __future__ import annotations

import importlib
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
    "convert": ("lightning_musicgen.convert.cli", "official weights (transformers layout) -> our checkpoint"),
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


def config_error_line(message: str, argv: list[str]) -> str:
    """jsonargparse's multi-line validation report -> one line naming the config, key and value."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    head = lines[0].rstrip(":") if lines else "invalid configuration"
    given = next((ln for ln in lines if ln.startswith("Given value:")), None)
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
