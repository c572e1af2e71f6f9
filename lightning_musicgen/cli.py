"""LightningCLI for fit / validate / test / predict (subclass mode, OmegaConf interpolation), and the
one-line form of its errors: jsonargparse's nested validation report -> `CONFIG: KEY=VALUE: reason`,
a YAML syntax error -> `FILE:LINE:COLUMN: invalid YAML (...)` (printed by `lightning_musicgen.__main__`)."""
from __future__ import annotations

import re
import warnings
from typing import Literal, Optional, Union, get_type_hints

import lightning.pytorch as pl
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_musicgen.precision import training_precision


# Lightning warnings that are expected with this package's modules and data, silenced so that real
# ones stand out: our IterableDatasets split shards per worker themselves (their __len__ is the
# per-rank epoch length); CodecModule checkpoints the post-step state on purpose (manual GAN
# optimisation); the LeafSpec deprecation comes from Lightning itself under torch 2.11.
EXPECTED_WARNINGS = (
    r"Your `IterableDataset` has `__len__` defined",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def silence_expected_warnings() -> None:
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


# Lightning's own accepted precision values, plus "auto".
PrecisionInput = Optional[Union[Literal["auto"], get_type_hints(pl.Trainer.__init__)["precision"]]]


class Trainer(pl.Trainer):
    """Lightning's Trainer whose `precision` defaults to "auto": bf16-mixed where bf16 is fast (CUDA
    with native bf16, a CPU with AVX512-BF16/AMX), 32-true elsewhere; one log line says which and
    why (`lightning_musicgen.precision.training_precision`). Any other value works as in Lightning."""

    def __init__(self, *args, precision: PrecisionInput = "auto", **kwargs):
        accelerator = str(kwargs.get("accelerator") or "auto")
        device_type = "cpu" if accelerator == "cpu" else ("cuda" if accelerator in ("cuda", "gpu") else None)
        precision, reason = training_precision(precision, device_type)
        rank_zero_info(reason)
        super().__init__(*args, precision=precision, **kwargs)


class MusicGenCLI(LightningCLI):
    """`python -m lightning_musicgen fit --config configs/...yaml` and friends.

    - model and data are given as class_path + init_args (any LightningModule/DataModule);
    - configs are parsed in OmegaConf mode, so `${data.init_args.segment_duration}` works;
    - every option also reads an environment variable (see `fit --help`);
    - the resolved config is saved next to every run's logs.
    """

    def __init__(self, args=None, run: bool = True, **kwargs):
        silence_expected_warnings()
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # modules own their optimizers
        super().__init__(
            LightningModule, LightningDataModule, trainer_class=Trainer,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": True, "exit_on_error": False},
            args=args, run=run, **kwargs)


# ---- one-line errors of the training verbs --------------------------------------------------------

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


def class_name_in(exc: BaseException) -> str | None:
    """The class (`class_path='pkg.Name'`) jsonargparse was instantiating when `exc` was raised."""
    while exc is not None:
        match = re.search(r"class_path='[\w.]*?(\w+)'", str(exc))
        if match:
            return match.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def training_error_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one line for a training verb's config error (invalid YAML, an option or value the CLI
    rejects), or None when `exc` is none of those."""
    from argparse import ArgumentError

    from lightning_musicgen.errors import one_line
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if type(chain).__module__.startswith("yaml"):
            return yaml_error_line(argv) or f"invalid YAML ({one_line(str(chain))})"
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, ArgumentError):
        return config_error_line(str(exc), argv)
    return None
